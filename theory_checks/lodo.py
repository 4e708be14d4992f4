"""LODO (Liao 2023) theory checks on its preconditioner G(θ): LODO-1 (G = α₀I at init, symmetric PSD),
LODO-2 (cost), LODO-8 (saddle-point repulsion, §4.2 and Lemma B.1) and LODO-9 (expressiveness, §4.3 and
the constructive parts of Theorem 4.2).

LODO's preconditioner is G(θ) = α₀ EᵀAᵀAE with A = B_N Π_N ⋯ B_1 Π_1 (Liao 2023, Eq. 2):
in precondalg ``scale(gram(A), α₀)`` for a `PermutationNetwork` A, and in the `LODO` preset
``lr·gram(A)`` (``opt.preconditioners()`` returns gram(A); the group's lr is α₀).  Mutants replace A's
forward or transpose kernel (`_mv` / `_rmv`) on one instance (`with_kernels`), or the family's form
inside an optimizer configured as the preset, so every other piece stays the real one.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

import precondalg as pa
from precondalg.families import Family, dense, diagonal, permutation_network_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim import LODO, Preconditioned
from precondalg.placement import Concatenated
from theory_checks._numerics import (
    E_RTOL,
    E_TOL,
    dense_of,
    generator,
    log_uniform,
    min_eig_rel,
    rel_err,
    sym_err,
)
from theory_checks.psgd_criteria import spd, sym_indefinite
from theory_checks.registry import Measures, Outcome, check

Kernel = Callable[[pa.PermutationNetwork, torch.Tensor], torch.Tensor]
REAL_MV: Kernel = pa.PermutationNetwork._mv
REAL_RMV: Kernel = pa.PermutationNetwork._rmv
"""The library's kernels (A x and Aᵀ x): the defaults of LODO-1 and LODO-2."""
ALPHA0 = 0.5
"""α₀ used by LODO-1 (any positive value; the code's default is 1.0)."""
EDGE_CONFIGS = ((1, 1, 2), (1, 16, 4), (40, 16, 4), (40, 1, 2), (2, 16, 2), (20, 8, 4))
"""(n, N, k) corners of the ranges checked: n ∈ [1, 40], N ∈ [1, 16], k ∈ {2, 4}."""
CODE_DEFAULT_CONFIG = (100, 16, 4)
"""(n, N, k) of LODO-2's fixed instance: the code's default depth and block at n = 100 (ñ = 204)."""
COST_DRAWS = 4
"""How many (n, N, k) LODO-2 draws per run, from the ranges of LODO-1."""


def with_kernels(A: pa.PermutationNetwork, mv: Kernel, rmv: Kernel) -> pa.PermutationNetwork:
    """A copy of A whose matvec kernels are `mv` (A x) and `rmv` (Aᵀ x), set on that instance only.

    With ``mv = PermutationNetwork._mv`` and ``rmv = PermutationNetwork._rmv`` (the defaults of the
    checks) the copy behaves exactly like A; `gram`, `scale` and ``@`` call the instance's kernels.
    """
    B = pa.PermutationNetwork(A.blocks, A.perms, A.n)
    object.__setattr__(B, "_mv", types.MethodType(mv, B))
    object.__setattr__(B, "_rmv", types.MethodType(rmv, B))
    return B


def _transpose_kernel(*, inverse_perms: bool, transpose_blocks: bool) -> Kernel:
    """A transpose-half kernel with the permutation and block conventions chosen (for mutants)."""

    def rmv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
        k, Y = self.blocks.shape[-1], X
        for B, perm in zip(reversed(self.blocks), reversed(self.perms)):
            W = B.mT if transpose_blocks else B
            Y = (W @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
            index = torch.tensor(perm)
            Y = Y[torch.argsort(index) if inverse_perms else index]
        return Y[: self.n]

    return rmv


def _dense_layer_mv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Mutant forward kernel: each block-diagonal layer materialised as a dense ñ×ñ matrix."""
    Y = F.pad(X, (0, 0, 0, self.width - self.n))
    for B, perm in zip(self.blocks, self.perms):
        Y = torch.block_diag(*B) @ Y[torch.tensor(perm)]
    return Y


def _dense_layer_rmv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Mutant transpose kernel: dense ñ×ñ layers, inverse permutations."""
    Y = X
    for B, perm in zip(reversed(self.blocks), reversed(self.perms)):
        Y = (torch.block_diag(*B).mT @ Y)[torch.argsort(torch.tensor(perm))]
    return Y[: self.n]


def explicit_G(A: pa.PermutationNetwork, alpha0: float) -> torch.Tensor:
    """α₀ EᵀKᵀKE built from explicit matrices: permutation matrices (Π x)_j = x_{π(j)}, dense
    block-diagonal B_i, and the zero-padding E = [Iₙ; 0] (Liao 2023, Eq. 2), independent of the kernels."""
    width = A.width
    eye = torch.eye(width)
    K = eye
    for B, perm in zip(A.blocks, A.perms):
        K = torch.block_diag(*B) @ eye[list(perm)] @ K
    KE = K[:, : A.n]
    return alpha0 * KE.mT @ KE


def draw_configs(gen: torch.Generator, draws: int) -> list[tuple[int, int, int]]:
    """`draws` random (n, N, k) with n ∈ [1, 40], N ∈ [1, 16], k ∈ {2, 4} (LODO-1/2's ranges)."""
    n = torch.randint(1, 41, (draws,), generator=gen).tolist()
    N = torch.randint(1, 17, (draws,), generator=gen).tolist()
    k = (2 * torch.randint(1, 3, (draws,), generator=gen)).tolist()
    return list(zip(n, N, k))


def _paper_width_network(n: int, depth: int, k: int, *, generator: torch.Generator) -> pa.PermutationNetwork:
    """Mutant: the paper's ñ = 2n, rounded up to a multiple of k (differs where k divides 2n)."""
    return pa.permutation_network(n, depth, k, width=-(-2 * n // k) * k, generator=generator)


def _extra_block_network(n: int, depth: int, k: int, *, generator: torch.Generator) -> pa.PermutationNetwork:
    """Mutant: one k-block wider than the code's rule."""
    return pa.permutation_network(n, depth, k, width=pa.lodo_width(n, k) + k, generator=generator)


@check(
    id="LODO-1",
    paper="LODO Eq. 2 + code (Liao 2023)",
    statement=(
        "Identities and PSD for G = α₀·gram(A), A a PermutationNetwork, over 18 (n, N, k): G = α₀I at the "
        "orthogonal init; with random blocks G is symmetric PSD and equals α₀EᵀKᵀKE built from explicit "
        "permutation and block-diagonal matrices; permutation_network's width is the code's "
        "ñ = 2n + k − (2n mod k)."
    ),
    tolerance=f"{E_TOL}; λ_min >= -1e-10‖G‖; exact: width",
    provenance="PAPER+CODE",
    mutants={
        "transpose half with forward permutations": {
            "rmv": _transpose_kernel(inverse_perms=False, transpose_blocks=True)
        },
        "x @ W on both halves": {"rmv": _transpose_kernel(inverse_perms=True, transpose_blocks=False)},
        "width: the paper's 2n rounded up to a multiple of k": {"network": _paper_width_network},
        "width: one block more than the code's rule": {"network": _extra_block_network},
    },
)
def lodo_1(
    mv: Kernel = REAL_MV,
    rmv: Kernel = REAL_RMV,
    network: Callable[..., pa.PermutationNetwork] = pa.permutation_network,
    seed: int = 1,
) -> Outcome:
    """LODO-1 (Liao 2023, Eq. 2 and the official code): init identity, symmetry, PSD and the algebraic
    form, over 18 (n, N, k); and the width ñ = 2n + k − (2n mod k) of the official code (the smallest
    multiple of k above 2n: n = 40, k = 4 gives 84, not the paper's 2n = 80).

    The dense G is α₀·gram(A) applied to the basis vectors (both kernels); at init also
    ``gram(A).to_dense()`` (forward kernel only).  Random blocks are N(0, 1/k), keeping the perms.
    """
    gen, out = generator(seed), Measures()
    init_err, asym, lam, form_err, width_err = 0.0, 0.0, float("inf"), 0.0, 0
    configs = [*EDGE_CONFIGS, *draw_configs(gen, draws=12)]
    for n, N, k in configs:
        A0 = with_kernels(network(n, N, k, generator=gen), mv, rmv)
        width_err = max(width_err, abs(A0.width - (2 * n + k - (2 * n) % k)))
        G0 = pa.scale(pa.gram(A0), ALPHA0)
        alpha_I = ALPHA0 * torch.eye(n)
        init_err = max(init_err, rel_err(dense_of(G0), alpha_I), rel_err(G0.to_dense(), alpha_I))
        blocks = torch.randn(A0.blocks.shape, generator=gen) / k**0.5
        A = with_kernels(pa.PermutationNetwork(blocks, A0.perms, n), mv, rmv)
        G = dense_of(pa.scale(pa.gram(A), ALPHA0))
        asym, lam = max(asym, sym_err(G)), min(lam, min_eig_rel(G))
        form_err = max(form_err, rel_err(G, explicit_G(A, ALPHA0)))
    out.at_most("max rel. error, α₀·gram(A) at orthogonal init vs α₀I", init_err, E_RTOL)
    out.at_most("max asymmetry of G, random blocks", asym, E_RTOL)
    out.at_least("min λ_min(G)/‖G‖, random blocks", lam, -1e-10)
    out.at_most("max rel. error, operator G vs explicit EᵀKᵀKE", form_err, E_RTOL)
    out.equal("max |ñ − (2n + k − (2n mod k))|, the code's width", width_err, 0)
    out.details["configs (n, N, k)"] = [list(c) for c in configs]
    return out.outcome()


def _count_multiply_adds(G: pa.Structure, x: torch.Tensor) -> int:
    """Multiply-adds of ``G @ x`` counted by torch's FlopCounterMode (2 flops per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        G @ x
    return counter.get_total_flops() // 2


@check(
    id="LODO-2",
    paper="LODO §3 cost claim (Liao 2023)",
    statement=(
        "Cost count: one G x with G = gram(A) costs 2·N·ñ·k multiply-adds (O(ñkN)), counted by "
        "FlopCounterMode for 4 drawn (n ≤ 40, N ≤ 16, k ∈ {2, 4}) and the code's default (100, 16, 4), as "
        "gram(A).cost() declares; G x = x at the orthogonal init."
    ),
    tolerance="exact: multiply-add count (FlopCounterMode); E: rel. error <= 1e-10",
    provenance="PAPER",
    mutants={
        "dense ñ×ñ layers (2Nñ² multiply-adds)": {"mv": _dense_layer_mv, "rmv": _dense_layer_rmv},
        "x @ W on both halves (same count, wrong product)": {
            "rmv": _transpose_kernel(inverse_perms=True, transpose_blocks=False)
        },
    },
)
def lodo_2(mv: Kernel = REAL_MV, rmv: Kernel = REAL_RMV, seed: int = 2) -> Outcome:
    """LODO-2 (Liao 2023, §3 cost claim): counted multiply-adds of one G x equal 2Nñk and
    ``gram(A).cost().matvec``, for `COST_DRAWS` (n, N, k) drawn from the seed and the code's default
    depth and block at n = 100; the product itself is x at the orthogonal init (G = I)."""
    gen, out = generator(seed), Measures()
    rows, count_err, cost_err, value_err = [], 0, 0, 0.0
    for n, N, k in [*draw_configs(gen, COST_DRAWS), CODE_DEFAULT_CONFIG]:
        A = with_kernels(pa.permutation_network(n, N, k, generator=gen), mv, rmv)
        G, x = pa.gram(A), torch.randn(n, generator=gen)
        counted, formula, declared = _count_multiply_adds(G, x), 2 * N * A.width * k, G.cost().matvec
        count_err, cost_err = max(count_err, abs(counted - formula)), max(cost_err, abs(declared - counted))
        value_err = max(value_err, rel_err(G @ x, x))
        rows.append({"n": n, "N": N, "k": k, "width": A.width, "counted": counted, "2Nñk": formula})
    out.equal("max |counted multiply-adds − 2Nñk|", count_err, 0)
    out.equal("max |gram(A).cost().matvec − counted|", cost_err, 0)
    out.at_most("max rel. error, G x vs x at the orthogonal init", value_err, E_RTOL)
    out.details["counts"] = rows
    return out.outcome()


# ----- LODO-8: saddle-point repulsion (§4.2) and Lemma B.1 -----

OptimizerOf = Callable[[torch.Tensor, int, int], Preconditioned]
MatrixOf = Callable[[int, torch.Generator], torch.Tensor]
LODO8_DRAWS = 100
"""(G, H) pairs of the spectral parts: G SPD, eigenvalues log-uniform in [0.1, 10]; H symmetric
indefinite, |λ| log-uniform in [0.1, 10]; n ∈ [2, 8]."""
LODO8_ITERATED = 2
LODO8_OPERATOR_DRAWS = 2
"""How many dense (G, H) pairs, and how many (LODO operator at random θ, H) pairs, are iterated."""
LODO8_STEPS = 200
LODO8_BURN_IN = 50
LODO8_EIG_SCALE = 1.5
"""G is scaled so that max|λ(GH)| = 1.5: positive-curvature modes then contract (|1 − λ| < 1) and
ρ = max|1 − λ| = 1 − λ_min > 1 comes from a negative eigenvalue, at most 2.5 (no overflow in 200 steps)."""
LODO8_REDRAWS = 50
"""At most this many draws per iterated pair (the last is used even if not well separated)."""
LODO8_OPERATOR = (6, 4, 2)
"""(n, N, k) of the LODO operators; random blocks N(0, 1/k)."""


def lodo_preset(x: torch.Tensor, depth: int, block_size: int) -> Preconditioned:
    """The `LODO` preset with a negligible (zero) meta-learning rate and no momentum (§4.2's setting)."""
    return LODO([x], lr=1.0, meta_lr=0.0, variant="no_momentum", depth=depth, block_size=block_size)


def _untransposed_gram(A: pa.PermutationNetwork) -> pa.Structure:
    return pa.gram(with_kernels(A, REAL_MV, _transpose_kernel(inverse_perms=True, transpose_blocks=False)))


def _lodo_untransposed(x: torch.Tensor, depth: int, block_size: int) -> Preconditioned:
    """Mutant: an optimizer configured as the preset whose operator's transpose half applies the blocks
    untransposed (x @ W on both halves): G is neither symmetric nor PSD."""
    family = dataclasses.replace(permutation_network_gram(depth, block_size), form=_untransposed_gram)
    return Preconditioned(
        [x], 1.0, structure=family, placement=Concatenated(), objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.Adam, lr=0.0, eps=1e-7), base="ema", momentum=0.0,
        position="direction",
    )


def _fixed_dense(x: torch.Tensor, G: torch.Tensor) -> Preconditioned:
    """Simplified LODO (dense G, SGD on G) with meta-learning rate 0: x ← x − G g."""
    opt = Preconditioned(
        [x], 1.0, structure=dense(1.0), placement=Concatenated(), objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.SGD, lr=0.0), base="sgd", position="direction",
    )
    opt.state[x]["preconditioner"]["phi"][0].copy_(G)
    return opt


def iterate_saddle(opt: Preconditioned, x: torch.Tensor, H: torch.Tensor, steps: int) -> tuple[list, list]:
    """`steps` optimizer steps on the saddle ℓ(x) = ½xᵀHx (x.grad = Hx): ‖x_t‖ and ℓ(x_t), t = 0 … steps."""
    norms, losses = [], []
    for t in range(steps + 1):
        xt = x.detach().clone()
        norms.append(float(xt.norm()))
        losses.append(float(0.5 * xt @ H @ xt))
        if t < steps:
            x.grad = H @ xt
            opt.step()
    return norms, losses


def growth_rate(values: list[float], burn_in: int) -> float:
    """exp of the least-squares slope of log(values[t]) over t ≥ burn_in."""
    y = np.log(np.asarray(values[burn_in:]))
    t = np.arange(y.size)
    return float(math.exp(np.polyfit(t, y, 1)[0]))


def spectral_violations(G: torch.Tensor, H: torch.Tensor) -> dict[str, float]:
    """Lemma B.1 and the inertia strengthening for one pair: |#{Re λ(GH) < 0} − #{λ(H) < 0}|, the largest
    |Im λ(GH)|/max|λ|, and the number of eigenvectors u of GH with a negative eigenvalue and uᵀHu ≥ 0."""
    lam, V = torch.linalg.eig(G @ H)
    negative = lam.real < 0
    inertia = abs(int(negative.sum()) - int((torch.linalg.eigvalsh(H) < 0).sum()))
    imag = float(lam.imag.abs().max() / lam.abs().max())
    U = V.real[:, negative]
    curvature = ((U * (H @ U)).sum(0) >= 0).sum() if U.numel() else 0
    return {"inertia": inertia, "imag": imag, "curvature": int(curvature)}


def _indefinite(n: int, gen: torch.Generator) -> torch.Tensor:
    """Mutant G: symmetric indefinite (not PSD), as `sym_indefinite` draws H."""
    return sym_indefinite(n, gen)


def _random_blocks(opt: Preconditioned, x: torch.Tensor, gen: torch.Generator) -> None:
    leaf = opt.state[x]["preconditioner"]["phi"][0]
    leaf.copy_(torch.randn(leaf.shape, generator=gen) / leaf.shape[-1] ** 0.5)


def eig_scale(G: torch.Tensor, H: torch.Tensor) -> float:
    """The factor c making max|λ(cGH)| = 1.5."""
    return LODO8_EIG_SCALE / float(torch.linalg.eigvals(G @ H).abs().max())


def well_separated(G: torch.Tensor, H: torch.Tensor) -> bool:
    """Whether the growth rate is measurable in 150 steps: ρ = max|1 − λ(GH)| ≥ 1.1 and the second largest
    |1 − λ| at most 0.95ρ (draws failing it are redrawn for the dynamics; the spectral parts keep them)."""
    rates = (1 - torch.linalg.eigvals(G @ H)).abs().sort(descending=True).values
    return bool(rates[0] >= 1.1 and rates[1] <= 0.95 * rates[0])


@check(
    id="LODO-8",
    paper="LODO §4.2, Lemma B.1 (Liao 2023)",
    statement=(
        "Spectra and dynamics: for 100 (G SPD, H indefinite) pairs, and for G = the LODO operator at random "
        "θ, GH has real eigenvalues, as many negative ones as H (Sylvester inertia), with uᵀHu < 0 on their "
        "eigenvectors; 200 steps of the optimizer (simplified LODO, and the LODO preset, meta-rate 0) on "
        "½xᵀHx escape at the rate max|1 − λ(GH)| while the loss decreases monotonically."
    ),
    tolerance="exact: counts; |Im λ| <= 1e-8·max|λ|; D: fitted growth rate within 1% of max|1 − λ(GH)|",
    provenance=("PAPER", "DERIVED"),
    mutants={
        "G indefinite (symmetric, not PSD)": {"spd_of": _indefinite},
        "LODO operator's transpose half applies the blocks untransposed": {"lodo": _lodo_untransposed},
    },
)
def lodo_8(spd_of: MatrixOf = spd, lodo: OptimizerOf = lodo_preset, seed: int = 8) -> Outcome:
    """LODO-8 (Liao 2023, §4.2 and Lemma B.1): with G symmetric PD and H symmetric with a negative
    eigenvalue, GH has a negative eigenvalue λ whose eigenvector u has uᵀHu = λuᵀG⁻¹u < 0, so I − GH has
    the eigenvalue 1 − λ > 1 along a direction of negative curvature: x ← x − GHx escapes the saddle and
    the loss decreases.  Strengthening [DERIVED, Sylvester]: GH is similar to G^{1/2}HG^{1/2}, so its
    eigenvalues are real and it has exactly as many negative ones as H.

    Spectral parts: 100 draws (n ∈ [2, 8]) plus the iterated ones.  Dynamics: x₀ = 1e-6·N(0, I), 200
    steps of `Preconditioned` with x.grad = Hx; G is scaled so that max|λ(GH)| = 1.5.  The dense pairs
    run simplified LODO (dense G, SGD on G with rate 0); the LODO operator runs the `LODO` preset
    (meta_lr = 0, no momentum, its lr scaling gram(A)) with N(0, 1/k) blocks, n = 6, N = 4, k = 2, and
    its G is read from ``opt.preconditioners()``.  The growth rates of ‖x_t‖ and (−ℓ_t)^{1/2}, fitted
    over t ≥ 50, are compared with ρ = max|1 − λ(GH)|.
    """
    gen, out = generator(seed), Measures()
    worst = {"inertia": 0, "imag": 0.0, "curvature": 0}

    def record(G: torch.Tensor, H: torch.Tensor) -> None:
        for key, value in spectral_violations(G, H).items():
            worst[key] = max(worst[key], value)

    for _ in range(LODO8_DRAWS):
        n = int(torch.randint(2, 9, (1,), generator=gen))
        record(spd_of(n, gen), sym_indefinite(n, gen))
    rate_err, increases, rows = 0.0, 0, []

    def iterate(opt: Preconditioned, x: torch.Tensor, G: torch.Tensor, H: torch.Tensor, kind: str) -> None:
        nonlocal rate_err, increases
        rho = float((1 - torch.linalg.eigvals(G @ H)).abs().max())
        norms, losses = iterate_saddle(opt, x, H, LODO8_STEPS)
        late = losses[LODO8_BURN_IN:]
        increases += sum(b >= a for a, b in zip(late, late[1:])) + sum(v >= 0 for v in late)
        neg = [-v if v < 0 else math.nan for v in late]
        rates = (growth_rate(norms, LODO8_BURN_IN), growth_rate(neg, 0) ** 0.5 if late[-1] < 0 else math.nan)
        rate_err = max(rate_err, *(abs(r / rho - 1) if not math.isnan(r) else math.inf for r in rates))
        rows.append({"kind": kind, "n": G.shape[0], "ρ": rho, "growth of ‖x‖": rates[0], "ℓ_T": losses[-1]})

    for _ in range(LODO8_ITERATED):
        for _ in range(LODO8_REDRAWS):
            n = int(torch.randint(3, 7, (1,), generator=gen))
            G, H = spd_of(n, gen), sym_indefinite(n, gen)
            G = G * eig_scale(G, H)
            record(G, H)
            if well_separated(G, H):
                break
        x = (1e-6 * torch.randn(n, generator=gen)).requires_grad_()
        iterate(_fixed_dense(x, G), x, G, H, "dense G")
    n, depth, k = LODO8_OPERATOR
    for _ in range(LODO8_OPERATOR_DRAWS):
        x = (1e-6 * torch.randn(n, generator=gen)).requires_grad_()
        opt = lodo(x, depth, k)
        for _ in range(LODO8_REDRAWS):
            _random_blocks(opt, x, gen)
            H = sym_indefinite(n, gen)
            P = dense_of(opt.preconditioners()[0][1])
            lr = eig_scale(P, H)
            record(lr * P, H)
            if well_separated(lr * P, H):
                break
        opt.param_groups[0]["lr"] = lr
        iterate(opt, x, lr * P, H, "LODO operator")
    out.equal("inertia violations |#neg λ(GH) − #neg λ(H)|", worst["inertia"], 0)
    out.at_most("max |Im λ(GH)|/max|λ(GH)|", worst["imag"], 1e-8)
    out.equal("eigenvectors u of negative λ(GH) with uᵀHu >= 0", worst["curvature"], 0)
    out.at_most("max rel. error of the growth rates of ‖x_t‖, (−ℓ_t)^{1/2} vs max|1 − λ(GH)|", rate_err, 0.01)
    out.equal("steps t >= 50 with ℓ_{t+1} >= ℓ_t or ℓ_t >= 0", increases, 0)
    out.details["iterated"] = rows
    return out.outcome()


# ----- LODO-9: expressiveness (§4.3) and the constructive parts of Theorem 4.2 -----

NetworkOf = Callable[..., pa.PermutationNetwork]
Construction = Callable[[pa.PermutationNetwork, torch.Tensor], torch.Tensor]
LODO9_CONFIGS = ((5, 3, 2), (16, 16, 4), (7, 8, 4))
"""(n, N, k) of the diagonal construction (a), run in the `LODO` preset."""
LODO9_SWITCH_SIZES = (6, 8)
LODO9_SWITCH_DEPTH = 12
LODO9_SWITCH_NETWORKS = 2
LODO9_SWITCH_SETTINGS = 4
"""(b): n = ñ, the largest depth, random networks per n, and random switch settings per network and depth
compared with the operator."""
LODO9_FIT = (16, 16, 4)
"""(c): n, N, k of the fits."""
LODO9_FAMILY = permutation_network_gram(*LODO9_FIT[1:])
"""precondalg's LODO family for (c): P = gram(A), A of depth 16 and 4×4 blocks."""


def diagonal_blocks(A: pa.PermutationNetwork, d: torch.Tensor) -> torch.Tensor:
    """Blocks making EᵀAᵀAE = diag(d) [DERIVED]: B₁ = diag(√d) arranged by Π₁ — the entry at position j of
    layer 1 is √d_{π₁(j)}, which multiplies x_{π₁(j)} (1 on padded positions) — and every other block I.
    Then A = (Π_N ⋯ Π₂) B₁ Π₁ E and AᵀA = EᵀΠ₁ᵀB₁²Π₁E = diag(d)."""
    N, nb, k, _ = A.blocks.shape
    source = torch.tensor(A.perms[0])
    scale = torch.ones(A.width)
    inside = source < A.n
    scale[inside] = d[source[inside]].sqrt()
    blocks = torch.eye(k).expand(N, nb, k, k).clone()
    blocks[0] = torch.diag_embed(scale.reshape(nb, k))
    return blocks


def _by_index_blocks(A: pa.PermutationNetwork, d: torch.Tensor) -> torch.Tensor:
    """Mutant construction: B₁ = diag(√d) placed by index (position j gets √d_j), ignoring Π₁."""
    N, nb, k, _ = A.blocks.shape
    scale = torch.ones(A.width)
    scale[: A.n] = d.sqrt()
    blocks = torch.eye(k).expand(N, nb, k, k).clone()
    blocks[0] = torch.diag_embed(scale.reshape(nb, k))
    return blocks


def _identity_network(n: int, depth: int, block_size: int, *, width: int | None = None,
                      generator: torch.Generator | None = None) -> pa.PermutationNetwork:
    """Mutant network: the library's draw with every permutation replaced by the identity."""
    A = pa.permutation_network(n, depth, block_size, width=width, generator=generator)
    return pa.PermutationNetwork(A.blocks, [tuple(range(A.width))] * depth, n)


def _identity_init(dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> pa.Structure:
    n, k, depth = math.prod(dims), LODO9_FIT[2], LODO9_FIT[1]
    return _identity_network(n, depth, k, generator=gen)


def _scatter_mv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Mutant forward kernel: each layer gathers by π⁻¹ (scatters by π) instead of gathering by π."""
    k, Y = self.blocks.shape[-1], F.pad(X, (0, 0, 0, self.width - self.n))
    for B, perm in zip(self.blocks, self.perms):
        Y = Y[torch.argsort(torch.tensor(perm))]
        Y = (B @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
    return Y


def _scatter_network(*args, **kwargs) -> pa.PermutationNetwork:
    return with_kernels(pa.permutation_network(*args, **kwargs), _scatter_mv, REAL_RMV)


def _lodo9_diagonal(construction: Construction, gen: torch.Generator) -> dict[str, float]:
    """(a): in the `LODO` preset (lr = α₀ = 1, meta_lr = 0, no momentum) set the blocks by `construction`
    for a diagonal target (d log-uniform in [0.1, 10]) and a scalar one; the preconditioner read from the
    optimizer and one step's displacement must be D and −Dg."""
    worst = {"G": 0.0, "step": 0.0}
    for n, depth, k in LODO9_CONFIGS:
        for d in (log_uniform((n,), -1, 1, gen), torch.full((n,), 0.37)):
            x = torch.zeros(n, requires_grad=True)
            opt = LODO([x], lr=1.0, meta_lr=0.0, variant="no_momentum", depth=depth, block_size=k,
                       seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
            A = opt.preconditioners()[0][1].Q
            opt.state[x]["preconditioner"]["phi"][0].copy_(construction(A, d))
            G = dense_of(opt.preconditioners()[0][1])
            worst["G"] = max(worst["G"], rel_err(G, torch.diag(d)))
            g = torch.randn(n, generator=gen)
            x.grad = g.clone()
            opt.step()
            worst["step"] = max(worst["step"], rel_err(x.detach(), -d * g))
    return worst


def swap_patterns(width: int) -> np.ndarray:
    """All 2^{ñ/2} settings of the 2×2 switches as gather indices: pair (2m, 2m + 1) swapped when bit m is
    set (block [[0, 1], [1, 0]]: y_{2m} = z_{2m+1})."""
    rows = []
    for mask in range(2 ** (width // 2)):
        idx = np.arange(width)
        for m in range(width // 2):
            if mask >> m & 1:
                idx[2 * m], idx[2 * m + 1] = 2 * m + 1, 2 * m
        rows.append(idx)
    return np.stack(rows)


def reachable_counts(perms: tuple[tuple[int, ...], ...], width: int) -> list[int]:
    """The number of distinct permutations σ (output j = input σ(j)) a switch network realises with its
    first N layers, N = 1 … len(perms): layer sets propagated as σ ↦ σ∘π_i, then each switch setting.
    Once all ñ! are reachable, deeper prefixes reach all too (the no-swap setting of a layer maps the set
    one-to-one into itself), so propagation stops there."""
    patterns, full, base = swap_patterns(width), math.factorial(width), width ** np.arange(width)
    S, counts = np.arange(width)[None, :], []
    for perm in perms:
        if len(counts) and counts[-1] == full:
            counts.append(full)
            continue
        S = S[:, list(perm)]
        S = S[:, patterns].reshape(-1, width)
        _, first = np.unique(S @ base, return_index=True)
        S = S[first]
        counts.append(len(S))
    return counts


def switch_operator_error(A: pa.PermutationNetwork, depth: int, gen: torch.Generator) -> float:
    """Set A's first `depth` layers' blocks to a random switch setting (I or [[0, 1], [1, 0]]), the rest
    to I, and return max |A's matrix − the permutation matrix of σ| (σ by the propagation convention)."""
    width = A.width
    bits = torch.randint(0, 2, (A.blocks.shape[0], width // 2), generator=gen)
    bits[depth:] = 0
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    A.blocks.copy_(torch.where(bits[..., None, None].bool(), swap, torch.eye(2)))
    sigma = np.arange(width)
    for perm, row in zip(A.perms, bits.tolist()):
        sigma = sigma[list(perm)]
        for m, on in enumerate(row):
            if on:
                sigma[[2 * m, 2 * m + 1]] = sigma[[2 * m + 1, 2 * m]]
    expected = torch.zeros(width, width)
    expected[torch.arange(width), torch.from_numpy(sigma)] = 1.0
    return float((dense_of(A) - expected[:, : A.n]).abs().max())


def _lodo9_switches(network: NetworkOf, gen: torch.Generator) -> tuple[dict[str, float], dict]:
    """(b): reachable fractions of k = 2 switch networks drawn by `network` with ñ = n, and the operator
    checked against the propagation's convention."""
    decreases, smallest, model_err, rows = 0, 1.0, 0.0, {}
    for n in LODO9_SWITCH_SIZES:
        for i in range(LODO9_SWITCH_NETWORKS):
            A = network(n, LODO9_SWITCH_DEPTH, 2, width=n, generator=gen)
            counts = reachable_counts(A.perms, n)
            fractions = [c / math.factorial(n) for c in counts]
            decreases += sum(b < a for a, b in zip(counts, counts[1:]))
            smallest = min(smallest, fractions[-1])
            for depth in range(1, LODO9_SWITCH_DEPTH + 1):
                for _ in range(LODO9_SWITCH_SETTINGS if depth in (1, 2, LODO9_SWITCH_DEPTH) else 0):
                    model_err = max(model_err, switch_operator_error(A, depth, gen))
            first = next((N + 1 for N, f in enumerate(fractions) if f == 1.0), None)
            rows[f"n = {n}, network {i}"] = {"fractions by depth": fractions, "first depth reaching 1": first,
                                              "2 log2 n": 2 * math.log2(n)}
    return {"decreases": decreases, "smallest": smallest, "model": model_err}, rows


def fit_structure(family: Family, target: torch.Tensor, gen: torch.Generator, iterations: int = 120) -> float:
    """min over φ of ‖P_φ − T‖_F/‖T‖_F from the family's φ₀, by L-BFGS on ½‖P_φ − T‖²_F/‖T‖²_F with the
    family's closed-form VJP (⟨C, dP_φ⟩ is the VJP of φ ↦ P_φ I with cotangent C).  Returns the residual."""
    n = target.shape[0]
    leaves, spec = pytree.tree_flatten(family.init((n,), torch.empty(()), gen))
    leaves = [leaf.detach().clone() for leaf in leaves]
    eye, scale = torch.eye(n), float(torch.linalg.matrix_norm(target)) ** 2
    opt = torch.optim.LBFGS(leaves, lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-16)

    def closure() -> torch.Tensor:
        phi = pytree.tree_unflatten(leaves, spec)
        R = family.form(phi) @ eye - target
        for leaf, g in zip(leaves, pytree.tree_leaves(family.hyper_vjp(phi, eye, R / scale))):
            leaf.grad = g
        return 0.5 * (R * R).sum() / scale

    opt.step(closure)
    P = family.form(pytree.tree_unflatten(leaves, spec)) @ eye
    return float(torch.linalg.matrix_norm(P - target)) / scale**0.5


def fit_targets(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The targets of (c): diagonal, identity + rank 2, banded (tridiagonal), and WᵀW with W a sparse
    network of fan-in and fan-out 2 (a sum of two weighted random permutation matrices)."""
    U = torch.randn(n, 2, generator=gen) / n**0.5
    W = sum(torch.diag(torch.randn(n, generator=gen)) @ torch.eye(n)[torch.randperm(n, generator=gen)]
            for _ in range(2))
    band = 2 * torch.eye(n) + 0.5 * (torch.diag(torch.ones(n - 1), 1) + torch.diag(torch.ones(n - 1), -1))
    return {
        "diagonal": torch.diag(log_uniform((n,), -0.5, 0.5, gen)),
        "identity + rank 2": torch.eye(n) + 3 * U @ U.mT,
        "banded": band,
        "sparse WᵀW": W.mT @ W,
    }


@check(
    id="LODO-9",
    paper="LODO §4.3, Thm 4.2, App. C (Liao 2023)",
    statement=(
        "Expressiveness: (a) in the LODO preset, B₁ = diag(√d) arranged by Π₁ and other blocks I give G = D "
        "exactly (diagonal and scalar targets); (b) k = 2 switch networks with n = ñ ∈ {6, 8} reach all n! "
        "permutations by depth 12, the reachable set growing with depth; (c) L-BFGS fits of G(θ) (n = 16, "
        "N = 16, k = 4) to diagonal and identity + rank-2 targets have residual < 1e-3, LODO-Diagonal's "
        "fit to identity + rank 1 > 0.1."
    ),
    tolerance=(
        f"{E_TOL}; exact: counts and 0/1 operators; S: fit residual < 1e-3, diagonal fit at its optimum "
        "within rel. 1e-6"
    ),
    provenance=("PAPER", "DERIVED"),
    mutants={
        "B₁ = diag(√d) placed by index, ignoring Π₁": {"construction": _by_index_blocks},
        "permutations never drawn (identity in every layer)": {
            "network": _identity_network,
            "family": dataclasses.replace(permutation_network_gram(*LODO9_FIT[1:]), init=_identity_init),
        },
        "forward kernel scatters by π (gathers by π⁻¹)": {"network": _scatter_network},
    },
)
def lodo_9(
    construction: Construction = diagonal_blocks,
    network: NetworkOf = pa.permutation_network,
    family: Family = LODO9_FAMILY,
    seed: int = 9,
) -> Outcome:
    """LODO-9 (Liao 2023, §4.3 and Theorem 4.2, whose probability bound — Eqs. 15–16 and the function f
    of Def. 4.1 — is stripped from the paper text): the constructive parts.

    (a) [DERIVED construction] "LODO can replicate the scalar/diagonal preconditioners": `diagonal_blocks`
    for (n, N, k) = (5, 3, 2), (16, 16, 4), (7, 8, 4), read back from the `LODO` preset and through one
    step (variant "no_momentum", so the step is −α₀Gg with α₀ = lr = 1).
    (b) App. C, part 1: with k = 2 each block is a switch (swap or not), so a depth-N network realises a
    set of permutations; it is propagated layer by layer for networks drawn by `network` (ñ = n ∈ {6, 8},
    2 each), checking the convention against the operator (random settings at depths 1, 2 and 12), and
    must reach all n! by N = 12 (the paper's hypothesis is depth ~ n log n/(ñ/2) = 2 log₂ n; only the
    trend is asserted).
    (c) A fit-based proxy of the representation claim: L-BFGS (in place of Adam: the same minimum in
    ~60 evaluations instead of ~10³ steps) from the family's φ₀ on ‖G(θ) − T‖_F/‖T‖_F for n = 16, N = 16,
    k = 4; diagonal and identity + rank-2 targets must fit below 1e-3 (banded and sparse-network targets
    are reported); the negative control fits LODO-Diagonal (precondalg's `diagonal` family) to
    I + vvᵀ, whose best diagonal residual ‖offdiag(T)‖_F/‖T‖_F (closed form) exceeds 0.1.  (c) runs only
    when (a) and (b) pass (a mutant that breaks them fails early).
    """
    gen, out = generator(seed), Measures()
    diag_errs = _lodo9_diagonal(construction, gen)
    out.at_most("(a) max rel. error, G read from the LODO preset vs D", diag_errs["G"], E_RTOL)
    out.at_most("(a) max rel. error, the preset's step vs −Dg", diag_errs["step"], E_RTOL)
    switches, rows = _lodo9_switches(network, gen)
    out.equal("(b) max |switch network's operator − predicted permutation matrix|", switches["model"], 0)
    out.equal("(b) decreases of the reachable count with depth", switches["decreases"], 0)
    out.equal("(b) min over networks of the reachable fraction at depth 12", switches["smallest"], 1.0)
    out.details["(b) switch networks"] = rows
    if not out.outcome().passed:
        out.details["(c)"] = "not run: (a) or (b) already failed"
        return out.outcome()
    n = LODO9_FIT[0]
    residuals = {name: fit_structure(family, T, gen) for name, T in fit_targets(n, gen).items()}
    out.at_most("(c) max fit residual, diagonal and identity + rank-2 targets",
                max(residuals["diagonal"], residuals["identity + rank 2"]), 1e-3)
    v = torch.randn(n, generator=gen) / n**0.5 * 2
    T = torch.eye(n) + torch.outer(v, v)
    optimum = float(torch.linalg.matrix_norm(T - torch.diag(T.diagonal())) / torch.linalg.matrix_norm(T))
    diagonal_fit = fit_structure(diagonal(1.0), T, gen)
    out.at_least("(c) LODO-Diagonal's fit residual to I + vvᵀ (negative control)", diagonal_fit, 0.1)
    out.at_most("(c) rel. error of that residual vs its closed-form optimum",
                abs(diagonal_fit / optimum - 1), 1e-6)
    out.details["(c) fit residuals"] = residuals
    return out.outcome()
