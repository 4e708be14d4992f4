"""The fixed list of realistic bugs that `scripts/mutation_score.py` applies to the library, one at a time.

Each mutant replaces one exact source snippet (`find`, which must occur exactly once in `file`, so that
the list cannot silently rot when the library changes) by a wrong one (`replace`): a sign, a transpose, a
missing term, a swapped factor, an off-by-one.  They are spread over the library's parts — structures,
placements, families, objectives, fitters, base rules, the engine — and over every preset (FOP, HD, PSGD,
LODO, Shampoo, K-FAC, APO); among them the bugs of issue #11's audit (a `tril` triangular Lie
projection, the Fisher criterion ignoring λ, Newton using g where Hv belongs, the Lie step's normaliser
replaced by 1, b = Q⁻¹v instead of Q⁻ᵀv in the relative gradient, FOP's P applied after the momentum
rule).  An `explanation` marks an equivalent mutant (one no test can tell from the library) and says why.
"""

from __future__ import annotations

import dataclasses

__all__ = ["AREAS", "MUTANTS", "Mutant"]

AREAS = (
    "structures", "placement", "families", "objectives", "fitters", "base rules", "engine",
    "FOP", "HD", "PSGD", "LODO", "Shampoo", "K-FAC", "APO",
)
"""The areas a mutant belongs to: the library's parts, then its presets."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One realistic bug.

    Attributes:
        id: a short unique name.
        area: one of `AREAS`.
        file: the mutated file, relative to the repository root.
        find: the exact source snippet, which must occur exactly once in `file`.
        replace: what replaces it.
        description: the bug, in words.
        explanation: why the mutant is equivalent (no observable difference), or None.
    """

    id: str
    area: str
    file: str
    find: str
    replace: str
    description: str
    explanation: str | None = None


MUTANTS: tuple[Mutant, ...] = (
    # structures
    Mutant(
        "lie-project-tril", "structures", "precondalg/structures/lie.py",
        "    return Triangular(E)\n",
        "    return upper_triangular(torch.tril(E))\n",
        "the triangular Lie projection keeps the lower triangle (tril) instead of the upper (triu)",
    ),
    Mutant(
        "lie-step-right-multiplied", "structures", "precondalg/structures/lie.py",
        "return Dense(Q.A - mu * (E.A @ Q.A))",
        "return Dense(Q.A - mu * (Q.A @ E.A))",
        "the dense Lie step multiplies on the right, Q(I − μE), instead of (I − μE)Q (swapped factor)",
    ),
    Mutant(
        "kron-project-trace-offbyone", "structures", "precondalg/structures/lie.py",
        "        if i > 0:\n            X = X - t * torch.eye",
        "        if i > 1:\n            X = X - t * torch.eye",
        "the Kronecker Lie projection removes the shared trace from factors i > 1 only (off-by-one): "
        "with two factors the trace is counted twice",
    ),
    Mutant(
        "relative-gradient-transposed", "structures", "precondalg/structures/lie.py",
        "lie_project(Q, G.to_dense() @ Q.to_dense().mT)",
        "lie_project(Q, Q.to_dense().mT @ G.to_dense())",
        "the relative gradient of a dense/triangular/normalization Q is QᵀG instead of GQᵀ (transpose)",
    ),
    Mutant(
        "triangular-rmv-untransposed", "structures", "precondalg/structures/triangular.py",
        "return self.upper_part().mT @ X",
        "return self.upper_part() @ X",
        "Triangular's transposed product Rᵀx computes Rx (a missing transpose)",
    ),
    Mutant(
        "scalar-relative-gradient-n", "structures", "precondalg/structures/lie.py",
        "return Scalar(G.alpha * Q.alpha / Q.n, Q.n)",
        "return Scalar(G.alpha * Q.alpha, Q.n)",
        "the relative gradient of a scalar group αI drops its 1/n (the projection onto the identity)",
    ),
    # families
    Mutant(
        "gram-QQt", "families", "precondalg/structures/lazy.py",
        "    def _mv(self, X: torch.Tensor) -> torch.Tensor:\n        return self.Q._rmv(self.Q._mv(X))",
        "    def _mv(self, X: torch.Tensor) -> torch.Tensor:\n        return self.Q._mv(self.Q._rmv(X))",
        "the gram form applies P = QQᵀ instead of QᵀQ (FOP's MᵀM, PSGD's QᵀQ, LODO's AᵀA)",
    ),
    Mutant(
        "gram-vjp-missing-term", "families", "precondalg/families.py",
        "Dense(Mu @ c.mT + Mc @ u.mT)",
        "Dense(Mu @ c.mT)",
        "the hypergradient of P = MᵀM drops one of its two terms (M u cᵀ + M c uᵀ)",
    ),
    Mutant(
        "normalized-gram-sqrt", "families", "precondalg/families.py",
        "gram(phi) * (M.shape[0] ** 0.5 / torch.linalg.matrix_norm(M @ M.mT))",
        "gram(phi) * (M.shape[0] / torch.linalg.matrix_norm(M @ M.mT))",
        "FOP-norm's normaliser is n·MᵀM/‖MᵀM‖_F instead of √n·MᵀM/‖MᵀM‖_F",
    ),
    Mutant(
        "diagonal-vjp-sign", "families", "precondalg/families.py",
        "return Diagonal((c * u).sum(-1))",
        "return Diagonal(-(c * u).sum(-1))",
        "the per-entry (diagonal) hypergradient has the wrong sign (PP-HD, LODO's diagonal variant)",
    ),
    # placement
    Mutant(
        "inputside-unview-untransposed", "placement", "precondalg/placement.py",
        "return [X.mT.reshape(shapes[0])]",
        "return [X.reshape(shapes[0])]",
        "InputSide's unview reshapes the (in, out) block back without transposing it",
    ),
    Mutant(
        "spatial-taps-swapped", "placement", "precondalg/placement.py",
        '"(h w) (o i) -> o i h w"',
        '"(w h) (o i) -> o i h w"',
        "Spatial's unview reads the taps in (w h) order where view wrote (h w)",
    ),
    Mutant(
        "layer-bias-first", "placement", "precondalg/placement.py",
        "key=lambda g: -g.ndim",
        "key=lambda g: g.ndim",
        "Layer's view puts the bias column first while unview takes it last",
    ),
    # objectives
    Mutant(
        "criterion-sign", "objectives", "precondalg/objectives/criteria.py",
        "return (h * (P @ h)).sum() + (v * P.solve(v)).sum()",
        "return (h * (P @ h)).sum() - (v * P.solve(v)).sum()",
        "the PSGD criterion hᵀPh + vᵀP⁻¹v with the second term's sign flipped",
    ),
    Mutant(
        "newton-uses-gradient", "objectives", "precondalg/objectives/criteria.py",
        "return Evaluation(loss.detach(), _per_param(params, v=vs, h=hs), ",
        "return Evaluation(loss.detach(), _per_param(params, v=vs, h=[torch.zeros_like(p) if g is None "
        "else g.detach() for p, g in zip(params, grads)]), ",
        "Newton's criterion uses the gradient g where h = Hv belongs",
    ),
    Mutant(
        "fisher-ignores-damping", "objectives", "precondalg/objectives/criteria.py",
        "hs = [g + self.damping * shard_like(v, g) for g, v in zip(gs, vs)] if self.damping else gs",
        "hs = gs",
        "the Fisher criterion ignores λ: h = g instead of g + λv",
    ),
    Mutant(
        "relative-gradient-b-solve", "objectives", "precondalg/objectives/criteria.py",
        "a, b = Q @ h, Q.solve_transpose(v)",
        "a, b = Q @ h, Q.solve(v)",
        "the closed-form relative gradient takes b = Q⁻¹v instead of Q⁻ᵀv",
    ),
    Mutant(
        "newton-weight-decay-theta", "objectives", "precondalg/objectives/criteria.py",
        '"h": extras["h"] + weight_decay * extras["v"]',
        '"h": extras["h"] + weight_decay * theta',
        "Newton's weight decay adds wd·θ to h = Hv (the Fisher rule) instead of wd·v",
    ),
    Mutant(
        "hypergradient-sign", "objectives", "precondalg/objectives/hypergradient.py",
        'return form_vjp(ctx, ctx.cache["u"], -ctx.cache["lr"] * ctx.grad)',
        'return form_vjp(ctx, ctx.cache["u"], ctx.cache["lr"] * ctx.grad)',
        "the online hypergradient has the wrong sign (ascent on the loss after the step)",
    ),
    Mutant(
        "kronecker-trace-scale-root", "objectives", "precondalg/objectives/statistics.py",
        "mean ** ((K - 1) / (2 * K))",
        "mean ** ((K - 1) / K)",
        "the closed-form whitening of a Kronecker Q balances its factors' traces with the wrong root",
    ),
    # fitters
    Mutant(
        "lie-normaliser-one", "fitters", "precondalg/fitters.py",
        "mus = (self.recipe.lr / norms).unbind()",
        "mus = (self.recipe.lr / torch.ones_like(norms)).unbind()",
        "the Lie step's normaliser ‖R‖ is replaced by 1: Q ← (I − μR)Q instead of (I − μR/‖R‖)Q",
    ),
    Mutant(
        "closed-form-no-bias-correction", "fitters", "precondalg/fitters.py",
        "averages = self.statistics if beta == 1 else [S / self.weight for S in self.statistics]",
        "averages = self.statistics",
        "ClosedForm reads the averaged statistics without the bias correction S/(1 − βᵗ)",
    ),
    Mutant(
        "closed-form-update-every-offbyone", "fitters", "precondalg/fitters.py",
        "self._refit = every == 1 or int(self.fits) % every == 0",
        "self._refit = every == 1 or (int(self.fits) + 1) % every == 0",
        "ClosedForm recomputes the roots at fits k, 2k, … instead of 1, k + 1, … (off-by-one)",
    ),
    Mutant(
        "uvd-d-sign", "fitters", "precondalg/fitters.py",
        "new_d = d - (lr / norm_d) * nabla_d * d",
        "new_d = d + (lr / norm_d) * nabla_d * d",
        "the UVd fit (PSGD's 'lra') moves d up its gradient",
    ),
    Mutant(
        "lipschitz-weights-swapped", "fitters", "precondalg/fitters.py",
        "torch.maximum(beta * self.lipschitz + (1 - beta) * ell, ell)",
        "torch.maximum((1 - beta) * self.lipschitz + beta * ell, ell)",
        "the 'lipschitz' normaliser's running estimate swaps its weights β and 1 − β",
    ),
    # base rules
    Mutant(
        "adam-no-bias-correction", "base rules", "precondalg/optim/base_rules.py",
        "(m / bias1) / denom",
        "m / denom",
        "the Adam base rule drops the first moment's bias correction 1/(1 − β₁ᵗ)",
    ),
    Mutant(
        "ema-weights-swapped", "base rules", "precondalg/optim/base_rules.py",
        'm = state["exp_avg"].mul(beta).add(d, alpha=1 - beta)',
        'm = state["exp_avg"].mul(1 - beta).add(d, alpha=beta)',
        "the EMA rule swaps its weights: (1 − β)m + βg instead of βm + (1 − β)g",
    ),
    Mutant(
        "rmsprop-alpha-swapped", "base rules", "precondalg/optim/base_rules.py",
        'v = state["square_avg"].mul(alpha).addcmul(d, d, value=1 - alpha)',
        'v = state["square_avg"].mul(1 - alpha).addcmul(d, d, value=alpha)',
        "the RMSprop rule swaps its weights: (1 − α)v + αg² instead of αv + (1 − α)g²",
    ),
    Mutant(
        "rmsprop-eps-inside-root", "base rules", "precondalg/optim/base_rules.py",
        'return {"square_avg": v}, d / v.sqrt().add(group["eps"])',
        'return {"square_avg": v}, d / (v + group["eps"]).sqrt()',
        "the RMSprop rule puts ε inside the root, √(v + ε), where torch.optim's adds it outside, √v + ε",
    ),
    # engine
    Mutant(
        "weight-decay-sign", "engine", "precondalg/optim/preconditioned.py",
        "g.add(_cast(p, g.dtype), alpha=wd)",
        "g.add(_cast(p, g.dtype), alpha=-wd)",
        "the L2 penalty is subtracted from the gradient: g − wd·θ",
    ),
    Mutant(
        "clip-not-clamped", "engine", "precondalg/optim/preconditioned.py",
        "return torch.clamp(self._clip / norm, max=1.0)",
        "return self._clip / norm",
        "clipping scales every step to norm Ω (a missing min(1, ·)): short steps are lengthened",
    ),
    # presets
    Mutant(
        "fop-p-after-momentum", "FOP", "precondalg/optim/fop.py",
        'position="gradient",',
        'position="direction",',
        "FOP applies P after the momentum rule (W ← W − αP b) instead of before it (b ← μb + G·MᵀM)",
    ),
    Mutant(
        "hd-scalar-vjp-sign", "HD", "precondalg/families.py",
        "return Scalar((c * u).sum(), phi.n)",
        "return Scalar(-(c * u).sum(), phi.n)",
        "HD's scalar hypergradient ⟨g_t, d_{t−1}⟩ has the wrong sign (α grows when it should shrink)",
    ),
    Mutant(
        "hd-global-per-tensor", "HD", "precondalg/optim/hd.py",
        'placement=Concatenated() if granularity == "global" else Flatten(),',
        "placement=Flatten(),",
        "HD's 'global' granularity learns one α per tensor instead of one per param group",
    ),
    Mutant(
        "psgd-diag-whole-normaliser", "PSGD", "precondalg/optim/psgd.py",
        'diagonal = "per_entry" if preconditioner == "diag" else "whole"',
        'diagonal = "whole"',
        "PSGD 'diag' normalises its step by the largest entry of R instead of each entry on its own",
    ),
    Mutant(
        "psgd-kron-size-skew-swapped", "PSGD", "precondalg/optim/psgd.py",
        'kronecker_gram("triangular", scale, max_size, max_skew)',
        'kronecker_gram("triangular", scale, max_skew, max_size)',
        "PSGD 'kron' passes max_skew as max_size and max_size as max_skew (swapped arguments)",
    ),
    Mutant(
        "lodo-rmv-permutation", "LODO", "precondalg/structures/permutation.py",
        "index = _inverse_index(self.perms[i], Y.device)",
        "index = _index(self.perms[i], Y.device)",
        "LODO's Aᵀ applies the permutation Π_i where Π_iᵀ = Π_i⁻¹ belongs",
    ),
    Mutant(
        "lodo-width-offbyone", "LODO", "precondalg/structures/permutation.py",
        "return 2 * n + block_size - (2 * n) % block_size",
        "return 2 * n - (2 * n) % block_size",
        "LODO's width rule ñ = 2n − (2n mod k) (one block short) instead of 2n + k − (2n mod k)",
    ),
    Mutant(
        "lodo-no-momentum-keeps-beta", "LODO", "precondalg/optim/lodo.py",
        'return "full", 0.0, 16',
        'return "full", None, 16',
        "LODO's 'no_momentum' variant keeps β = 0.9 instead of forcing β = 0",
    ),
    Mutant(
        "lodo-adam-eps", "LODO", "precondalg/optim/lodo.py",
        "_KERAS_ADAM_EPS = 1e-7",
        "_KERAS_ADAM_EPS = 1e-8",
        "LODO's meta-optimizer uses torch's Adam ε = 1e-8 instead of tf.keras' 1e-7 (the authors' code)",
    ),
    Mutant(
        "shampoo-root-k", "Shampoo", "precondalg/objectives/statistics.py",
        "-1.0 / (root if root is not None else 2 * K)",
        "-1.0 / (root if root is not None else K)",
        "Shampoo's roots are L^(−1/k) instead of L^(−1/2k) (a matrix: −1/2 instead of −1/4)",
    ),
    Mutant(
        "shampoo-epsilon-ignored", "Shampoo", "precondalg/fitters.py",
        "self._part(part, averages[start : start + count], e, power, delta + eps)",
        "self._part(part, averages[start : start + count], e, power, delta)",
        "ClosedForm drops Shampoo's ε: (L + εI)^(−1/2k) becomes L^(−1/2k)",
    ),
    Mutant(
        "kfac-damping-swapped", "K-FAC", "precondalg/objectives/statistics.py",
        "return [root / pi, root * pi]",
        "return [root * pi, root / pi]",
        "K-FAC's factored Tikhonov damping swaps γ_G = √λ/π and γ_A = π√λ",
    ),
    Mutant(
        "kfac-passes-not-averaged", "K-FAC", "precondalg/objectives/statistics.py",
        "G = layer.gg / layer.passes",
        "G = layer.gg",
        "K-FAC's Ḡ sums the output-gradient statistics of several backward passes instead of averaging",
    ),
    Mutant(
        "apo-wsd-half", "APO", "precondalg/objectives/proximal.py",
        "return loss + 0.5 * self.lam_wsd * wsd",
        "return loss + self.lam_wsd * wsd",
        "APO's weight-space term is λ_WSD‖θ′ − θ‖² instead of (λ_WSD/2)‖θ′ − θ‖²",
    ),
    Mutant(
        "apo-fsd-ignores-lambda", "APO", "precondalg/objectives/proximal.py",
        "loss = loss + self.lam_fsd * rho(",
        "loss = loss + rho(",
        "APO's function-space term ignores λ_FSD",
    ),
    Mutant(
        "apo-scale-dropped", "APO", "precondalg/optim/apo.py",
        "structure=eigenbasis(float(scale)),",
        "structure=eigenbasis(),",
        "APO-Precond's applied step drops its factor `scale` (the paper's 0.9)",
    ),
    Mutant(
        "apo-every-offbyone", "APO", "precondalg/optim/choices.py",
        "return 1.0 if steps % self.k == 0 else 0.0",
        "return 1.0 if (steps + 1) % self.k == 0 else 0.0",
        "every(k) fits at steps k − 1, 2k − 1, … instead of 0, k, 2k, … (off-by-one; APO's meta_every)",
    ),
    Mutant(
        "apo-warmup-offbyone", "APO", "precondalg/optim/preconditioned.py",
        "applying = self._steps >= self._warmup",
        "applying = self._steps > self._warmup",
        "the warm-up applies the base rule alone for warmup + 1 steps (off-by-one; APO-Precond's warmup)",
    ),
)
