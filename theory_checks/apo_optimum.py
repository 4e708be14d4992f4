"""APO (Bae 2022) theory checks on the optimum of the meta-objective: APO-3 (Theorem 1, the optimal
unconstrained preconditioner), APO-4 (Theorem 1 needs a non-singular second moment) and APO-5 (with an
exact quadratic loss the optimum is damped Newton, the optimal learning rate has a closed form, and
with λ = 0 APO-LR is steepest descent with exact line search).

How the library is exercised.  Every meta-objective here is precondalg's `Proximal` objective (Eq. 8),
evaluated at the lookahead u = θ − P g by `Preconditioned`, on a `torch.nn.Linear(d, nb)` model whose
weight W (nb × d) holds one copy of θ per batch: with the placement `InputSide` one d×d preconditioner
P acts on every row, row b moves to w_b − P g_b, so the one Q that `Proximal` builds is the sum over the
nb batches of the per-batch meta-objectives (nb times their mean, the same minimiser):

- APO-3/4: the loss ⟨f, y⟩ with inputs I is *linear* in W, J_b(u) = J_b(θ) + g_bᵀ(u − θ) exactly, and
  the squared-error FSD on inputs X′ is exactly quadratic with G = X′ᵀX′/|B′|: `Proximal`'s Q is then
  exactly Theorem 1's Q̂ (linearised loss, second-order FSD), no approximation involved;
- APO-5: the loss ½‖f − y‖² with inputs L (LᵀL = H) and targets L c_b is J_b(θ) = ½(θ − c_b)ᵀH(θ − c_b).

Q is then quadratic in φ, and `ExactMetaStep` minimises it exactly in one meta-step of the engine: a
Newton step J⁺∇Q, with ∇Q `Proximal`'s meta-gradient (as the engine asks for it) and J its Jacobian,
read column by column from the meta-gradient at φ + eᵢ (exact, ∇Q being affine in φ), taken by the
fitter SGD(lr = 1).  The minimiser is then read from the optimizer (`preconditioners()`) and compared with the
closed forms, computed here from G, H, λ_F and λ_W by `torch.linalg`: they are the statements.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.families import Family, dense, positive_scalar
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import BlockContext, Evaluation, Objective, Proximal
from precondalg.optim import Preconditioned
from precondalg.placement import Concatenated, InputSide, Placement
from theory_checks._apo import (
    LossFn,
    ObjectiveOf,
    fsd_on_training_batch,
    loss_at_theta,
    proximal,
    squared_without_half,
)
from theory_checks._numerics import E_RTOL, E_TOL, dense_of, generator, log_uniform, rel_err
from theory_checks.psgd_criteria import haar, spd
from theory_checks.registry import Measures, Outcome, check

FamilyOf = Callable[[torch.Tensor], Family]
"""φ₀ (d×d) ↦ the learned dense family started there."""
Route = Callable[[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
"""The gradient's batch ↦ the batch handed to ``step(batch=...)`` for the loss term of Q."""
Draw = tuple[int, int, str]
"""(d, nb, gradient kind) of one instance."""

S_TOL3 = 1e-5
"""APO-3: ‖P − P*‖_F/‖P*‖_F of the minimiser."""
S_TOL = 1e-6
"""Class S (solved by an optimizer): APO-5's minimisers."""
APO4_STATIONARY = 1e-8
APO4_APART = 1e-2
"""APO-4: ‖KPS − S‖/‖S‖ ≤ 1e-8 (a minimiser) while ‖P − P*‖/‖P*‖ > 1e-2 (not P*)."""


# ----- instances -----


def _exponential(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).exponential_(generator=gen)


def _rademacher(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen) * 2.0 - 1.0


def _student3(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    chi2 = torch.randn(*shape, 3, generator=gen).square().sum(-1)
    return torch.randn(shape, generator=gen) / (chi2 / 3).sqrt()


def _gaussian(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


NOISE: dict[str, Callable[[tuple[int, int], torch.Generator], torch.Tensor]] = {
    "skewed": _exponential,
    "discrete": _rademacher,
    "heavy": _student3,
    "shifted": _gaussian,
}
"""The gradient kinds: z of Exp(1) (skewed), ±1 (discrete), Student-t₃ (heavy tails) or N(0, 1)
entries, mixed and shifted as μ + A z (so every kind has a non-zero mean)."""


def draw_gradients(kind: str, nb: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """nb gradients (rows, (nb, d)) g_b = μ + A z_b: z_b of the kind's entries, A (d×d) and μ Gaussian."""
    mixing = torch.randn(d, d, generator=gen) / d**0.5
    mean = torch.randn(d, generator=gen)
    return mean + NOISE[kind]((nb, d), gen) @ mixing.mT


def fsd_inputs_for(G: torch.Tensor) -> torch.Tensor:
    """Inputs X′ (d×d) with X′ᵀX′/d = G: the squared-error FSD of a linear model on them has Hessian G."""
    lam, U = torch.linalg.eigh(G)
    return G.shape[0] ** 0.5 * (U * lam.clamp_min(0).sqrt()).mT


def draw_lambdas(gen: torch.Generator) -> tuple[float, float]:
    """λ_F ∈ [0.1, 3] uniform and λ_W ∈ [1e-3, 3] log-uniform."""
    lam_fsd = 0.1 + 2.9 * float(torch.rand((), generator=gen))
    return lam_fsd, float(log_uniform((), -3, math.log10(3), gen))


def linear_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """⟨f, y⟩: with inputs I and targets Γᵀ, Σ_b g_bᵀw_b, linear in W with row gradients g_b."""
    return (outputs * targets).sum()


def quadratic_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½‖f − y‖²: with inputs L and targets L c_b, Σ_b ½(w_b − c_b)ᵀLᵀL(w_b − c_b)."""
    return 0.5 * (outputs - targets).square().sum()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One meta-objective instance on `torch.nn.Linear(d, nb, bias=False)`.

    Attributes:
        weight: (nb, d) the model's weight W at θ (row b: θ for batch b).
        loss_fn: the training loss J of (outputs, targets).
        batch: (inputs (k, d), targets (k, nb)): the batch B of the gradient and of Q's loss term.
        fsd_inputs: (m, d) the FSD batch B′.
        lam_fsd: λ_F.
        lam_wsd: λ_W.
    """

    weight: torch.Tensor
    loss_fn: LossFn
    batch: tuple[torch.Tensor, torch.Tensor]
    fsd_inputs: torch.Tensor
    lam_fsd: float
    lam_wsd: float

    @property
    def G(self) -> torch.Tensor:
        """The FSD Hessian X′ᵀX′/|B′| (d×d)."""
        return self.fsd_inputs.mT @ self.fsd_inputs / self.fsd_inputs.shape[0]

    @property
    def K(self) -> torch.Tensor:
        """λ_F G + λ_W I."""
        return self.lam_fsd * self.G + self.lam_wsd * torch.eye(self.G.shape[0])


def linear_problem(gradients: torch.Tensor, G: torch.Tensor, lam_fsd: float, lam_wsd: float,
                   gen: torch.Generator) -> Problem:
    """Theorem 1's Q̂ exactly: the linear loss with batch gradients `gradients` (rows, (nb, d)), FSD
    Hessian G, every row of W at a random θ."""
    nb, d = gradients.shape
    weight = torch.randn(d, generator=gen).expand(nb, -1).clone()
    return Problem(weight, linear_loss, (torch.eye(d), gradients.mT), fsd_inputs_for(G), lam_fsd, lam_wsd)


def quadratic_problem(H: torch.Tensor, theta: torch.Tensor, centres: torch.Tensor, G: torch.Tensor,
                      lam_fsd: float, lam_wsd: float) -> Problem:
    """J_b(θ) = ½(θ − c_b)ᵀH(θ − c_b) for the rows c_b of `centres` (nb, d), every row of W at θ."""
    L = fsd_inputs_for(H) / H.shape[0] ** 0.5  # LᵀL = H
    weight = theta.expand(centres.shape[0], -1).clone()
    return Problem(weight, quadratic_loss, (L, L @ centres.mT), fsd_inputs_for(G), lam_fsd, lam_wsd)


# ----- the engine pieces and their mutants -----


def _without_half(model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float, lam_wsd: float) -> Objective:
    """Mutant: the ½ missing on both quadratic terms, ρ = ‖Δf‖²/|B′| and λ_W‖u − θ‖² (optimum (2K)⁻¹)."""
    return Proximal(model, loss_fn, fsd=squared_without_half, lam_fsd=lam_fsd, lam_wsd=2 * lam_wsd)


def _constant_init(P0: torch.Tensor, dims: tuple[int, ...], like: torch.Tensor,
                   gen: torch.Generator | None) -> pa.Structure:
    return pa.Dense(P0.to(like).clone())


def dense_from(P0: torch.Tensor) -> Family:
    """precondalg's `dense` family (P = φ, every entry learned, not kept symmetric) with φ₀ = P0."""
    return dataclasses.replace(dense(), init=functools.partial(_constant_init, P0))


def _transposed_from(P0: torch.Tensor) -> Family:
    """Mutant family: P applied as φᵀ."""
    return dataclasses.replace(dense_from(P0), form=pa.transpose, hyper_vjp=None)


def same_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q's loss term on the batch of the gradient (Eq. 8)."""
    return batch


def _next_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutant: the loss term of batch b on batch b + 1's targets (S then pairs two different batches)."""
    inputs, targets = batch
    return inputs, targets.roll(-1, dims=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class ExactMetaStep(Objective):
    """A meta-step that minimises a quadratic meta-objective exactly (one block).

    Its "meta-gradient" is the Newton step J⁺∇Q(φ), ∇Q being `inner`'s meta-gradient for the block's
    context as the engine built it and J the Jacobian of φ ↦ ∇Q(φ), column i = ∇Q(φ + eᵢ) − ∇Q(φ) over
    φ's flattened leaves (exact when Q is quadratic in φ).  With the fitter SGD(lr = 1) the engine moves
    φ to the minimiser; where J is singular, to the minimiser nearest to φ in the Frobenius norm (the
    minimum-norm step, `torch.linalg.lstsq` with the SVD driver), where gradient descent from φ
    converges too.

    Attributes:
        inner: the meta-objective (precondalg's `Proximal`, or a mutant of it).
    """

    inner: Objective

    def evaluate(self, params: list[torch.Tensor], closure: Callable[[], Any] | None,
                 generator: torch.Generator, **inputs: Any) -> Evaluation:
        return self.inner.evaluate(params, closure, generator, **inputs)

    def evaluate_gradients(self, params: list[torch.Tensor], closure: Callable[[], Any] | None,
                           generator: torch.Generator, **inputs: Any) -> Evaluation:
        return self.inner.evaluate_gradients(params, closure, generator, **inputs)

    def check_block(self, params: Sequence[torch.Tensor], placement: Any) -> None:
        self.inner.check_block(params, placement)

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[pa.Structure]:
        (ctx,) = blocks
        leaves, spec = pytree.tree_flatten(ctx.phi)
        shapes = [leaf.shape for leaf in leaves]
        sizes = [leaf.numel() for leaf in leaves]

        def structure(v: torch.Tensor) -> pa.Structure:
            parts = [p.reshape(s) for p, s in zip(torch.split(v, sizes), shapes)]
            return pytree.tree_unflatten(parts, spec)

        def meta_grad(v: torch.Tensor) -> torch.Tensor:
            (g,) = self.inner.meta_grads([dataclasses.replace(ctx, phi=structure(v))], evaluation)
            return torch.cat([leaf.reshape(-1) for leaf in pytree.tree_leaves(g)])

        v0 = torch.cat([leaf.detach().reshape(-1) for leaf in leaves])
        g0 = meta_grad(v0)
        jacobian = (torch.func.vmap(meta_grad)(v0 + torch.eye(v0.numel())) - g0).mT  # probes batched
        step = torch.linalg.lstsq(jacobian, g0.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
        return [structure(step)]


def optimizer_for(problem: Problem, family: Family, objective_of: ObjectiveOf, exact: bool,
                  placement: Placement, lr: float = 0.0,
                  position: str = "gradient") -> tuple[torch.nn.Module, Preconditioned]:
    """The model at θ and precondalg's `Preconditioned` on its weight: `family` on `placement`, the
    objective `objective_of(...)` (wrapped in `ExactMetaStep` when `exact`), fitter SGD(lr = 1), base
    SGD with learning rate `lr` (0: θ stays)."""
    nb, d = problem.weight.shape
    model = torch.nn.Linear(d, nb, bias=False)
    with torch.no_grad():
        model.weight.copy_(problem.weight)
    objective = objective_of(model, problem.loss_fn, problem.lam_fsd, problem.lam_wsd)
    opt = Preconditioned(
        model.parameters(),
        lr=lr,
        structure=family,
        placement=placement,
        objective=ExactMetaStep(objective) if exact else objective,
        fitter=TorchOptimizer(torch.optim.SGD, lr=1.0),
        base="sgd",
        position=position,
    )
    return model, opt


def engine_step(model: torch.nn.Module, opt: Preconditioned, problem: Problem, route: Route) -> None:
    """One training step: the gradient on B by backward, then ``step(batch=route(B), fsd_batch=B′)``."""
    inputs, targets = problem.batch
    model.zero_grad()
    with torch.enable_grad():
        problem.loss_fn(model(inputs), targets).backward()
    opt.step(batch=route(problem.batch), fsd_batch=problem.fsd_inputs)


def fitted(problem: Problem, family: Family, objective_of: ObjectiveOf, route: Route, placement: Placement,
           position: str = "gradient") -> torch.Tensor:
    """The dense P that one exact meta-step of the engine fits (θ fixed)."""
    model, opt = optimizer_for(problem, family, objective_of, True, placement, position=position)
    engine_step(model, opt, problem, route)
    ((_, P),) = opt.preconditioners()
    return dense_of(P)


def meta_gradient(problem: Problem, family: Family, objective_of: ObjectiveOf, route: Route) -> torch.Tensor:
    """∂Q/∂φ at φ₀ as the engine takes it: φ₀ − φ₁ after one plain SGD(lr = 1) meta-step (θ fixed)."""
    model, opt = optimizer_for(problem, family, objective_of, False, InputSide())
    (phi0,) = [leaf.clone() for leaf in opt.state[model.weight]["preconditioner"]["phi"]]
    engine_step(model, opt, problem, route)
    return phi0 - opt.state[model.weight]["preconditioner"]["phi"][0]


def fro_rel(A: torch.Tensor, B: torch.Tensor) -> float:
    """‖A − B‖_F/‖B‖_F."""
    return float(torch.linalg.matrix_norm(A - B) / torch.linalg.matrix_norm(B))


# ----- APO-3: Theorem 1 -----

APO3_DRAWS: tuple[Draw, ...] = ((2, 6, "skewed"), (3, 12, "heavy"), (5, 15, "discrete"), (8, 24, "shifted"),
                                (12, 36, "skewed"))
"""(d, nb, gradient kind): d ∈ [2, 12], nb ∈ [3d, 4d]; the first draw has λ_F = 0 (P* = I/λ_W), the
second λ_W = 0 (P* = (λ_F G)⁻¹), the others random λ."""
LAMBDA_CORNERS = {0: "λ_F = 0", 1: "λ_W = 0"}


def _apo3_instance(i: int, draw: Draw, gen: torch.Generator) -> Problem:
    d, nb, kind = draw
    lam_fsd, lam_wsd = draw_lambdas(gen)
    lam_fsd, lam_wsd = {0: (0.0, lam_wsd), 1: (lam_fsd, 0.0)}.get(i, (lam_fsd, lam_wsd))
    return linear_problem(draw_gradients(kind, nb, d, gen), spd(d, gen), lam_fsd, lam_wsd, gen)


@check(
    id="APO-3",
    paper="APO Theorem 1 and App. G, Eqs. 38-50 (Bae 2022)",
    statement=(
        "Optimum: precondalg's Proximal objective on a loss linear in θ with a quadratic squared-error FSD "
        "(exactly Theorem 1's Q̂(P) = E_B[J_B − g_BᵀPg_B + ½(Pg_B)ᵀ(λ_F G + λ_W I)Pg_B]), minimised over all "
        "d² entries of a dense P by Preconditioned (a Newton meta-step on Proximal's own meta-gradient, "
        "from P₀ = I), gives P* = (λ_F G + λ_W I)⁻¹ "
        "for 5 draws (d = 2…12, nb = 3d…4d non-Gaussian gradients of non-zero mean, corners λ_F = 0 and "
        "λ_W = 0); the engine's meta-gradient at a random non-symmetric P is nb(KPS − S), S = E[ggᵀ]."
    ),
    tolerance=f"S: ‖P − P*‖_F/‖P*‖_F <= {S_TOL3:g}; {E_TOL} for the meta-gradient",
    provenance="PAPER+DERIVED",
    mutants={
        "the ½ missing on the FSD and WSD quadratics": {"objective_of": _without_half},
        "P applied as Pᵀ": {"family_of": _transposed_from},
        "S from a different batch than the update (loss term on batch b + 1)": {"route": _next_batch},
        "library: FSD on the training batch B instead of B′": {"objective_of": fsd_on_training_batch},
    },
)
def apo_3(
    objective_of: ObjectiveOf = proximal,
    family_of: FamilyOf = dense_from,
    route: Route = same_batch,
    draws: tuple[Draw, ...] = APO3_DRAWS,
    seed: int = 3,
) -> Outcome:
    """APO-3 (Bae 2022, Theorem 1): the minimiser of the approximate meta-objective is (λ_F G + λ_W I)⁻¹.

    For each draw, the gradients g_b (rows of Γ) of one of the `NOISE` kinds, G SPD with eigenvalues in
    [0.1, 10] and λ_F, λ_W (`draw_lambdas`, corners first); `Proximal`'s Q on the linear problem is
    minimised exactly by the engine (`ExactMetaStep`, one meta-step from φ₀ = I), and its meta-gradient
    (one plain SGD meta-step) at a random P is compared with the proof's ∂Q̂/∂P = K P Σ − Σ, Σ = ΓᵀΓ.
    """
    gen, out = generator(seed), Measures()
    errors, grad_errors, rows = [], [], []
    for i, draw in enumerate(draws):
        problem = _apo3_instance(i, draw, gen)
        d, nb, kind = draw
        target = torch.linalg.inv(problem.K)
        P = fitted(problem, family_of(torch.eye(d)), objective_of, route, InputSide())
        errors.append(fro_rel(P, target))
        P1 = torch.randn(d, d, generator=gen)
        gradients = problem.batch[1].mT
        Sigma = gradients.mT @ gradients
        meta = meta_gradient(problem, family_of(P1), objective_of, route)
        grad_errors.append(rel_err(meta, problem.K @ P1 @ Sigma - Sigma))
        rows.append({"d": d, "nb": nb, "kind": kind, "λ_F": problem.lam_fsd, "λ_W": problem.lam_wsd,
                     "cond(S)": float(torch.linalg.cond(Sigma)), "rel. error": errors[-1]})
    out.at_most("max ‖P − (λ_F G + λ_W I)⁻¹‖_F/‖·‖_F", max(errors), S_TOL3)
    out.at_most("max rel. error, engine ∂Q/∂P vs nb(KPS − S) at a random P", max(grad_errors), E_RTOL)
    out.details["draws"] = rows
    return out.outcome()


# ----- APO-4: singular S -----

APO4_DRAWS: tuple[Draw, ...] = ((4, 1, "skewed"), (6, 3, "heavy"), (10, 9, "discrete"))
"""(d, nb, gradient kind) with nb < d: S = E[ggᵀ] has rank nb (one batch, half, d − 1)."""


def _nonsingular_draws() -> tuple[Draw, ...]:
    return tuple((d, 3 * d, kind) for d, _, kind in APO4_DRAWS)


@check(
    id="APO-4",
    paper="APO Theorem 1, its non-singularity assumption (Bae 2022)",
    statement=(
        "Non-uniqueness: for nb < d batches (S = E[ggᵀ] of rank nb; 3 draws, d = 4…10), precondalg's "
        "Proximal Q̂ minimised by Preconditioned's meta-step from a random dense P₀ reaches the affine set "
        "of minimisers {P : KPS = S}, K = λ_F G + λ_W I, but not P* = K⁻¹, although the engine's "
        "meta-gradient vanishes at P* too (P* is one minimiser, not the unique one)."
    ),
    tolerance=(
        f"S: ‖KPS − S‖_F/‖S‖_F <= {APO4_STATIONARY:g}; ‖P − P*‖_F/‖P*‖_F > {APO4_APART:g}; "
        f"E: ‖∂Q/∂P(P*)‖_max/‖nbS‖_max <= {E_RTOL:g}"
    ),
    provenance="DERIVED",
    mutants={
        "S non-singular (nb = 3d)": {"draws": _nonsingular_draws()},
        "the ½ missing on the FSD and WSD quadratics": {"objective_of": _without_half},
        "library: FSD on the training batch B instead of B′": {"objective_of": fsd_on_training_batch},
    },
)
def apo_4(
    objective_of: ObjectiveOf = proximal,
    draws: tuple[Draw, ...] = APO4_DRAWS,
    seed: int = 4,
) -> Outcome:
    """APO-4: without a non-singular S Theorem 1's minimiser is not unique.

    Draws as for APO-3 but nb < d.  The engine's exact meta-step (`ExactMetaStep`: the minimum-norm
    Newton step, i.e. the minimiser nearest to P₀, where gradient descent from P₀ converges) from a
    random P₀ (Gaussian entries of P*'s root-mean-square size ‖P*‖_F/d) satisfies the first-order
    condition K P S = S of Theorem 1's proof and stays away from P*, while the engine's meta-gradient
    at P* is zero.
    """
    gen, out = generator(seed), Measures()
    stationary, apart, at_optimum, rows = [], [], [], []
    for d, nb, kind in draws:
        problem = linear_problem(draw_gradients(kind, nb, d, gen), spd(d, gen), *draw_lambdas(gen), gen)
        target = torch.linalg.inv(problem.K)
        P0 = torch.randn(d, d, generator=gen) * torch.linalg.matrix_norm(target) / d  # P*'s scale
        P = fitted(problem, dense_from(P0), objective_of, same_batch, InputSide())
        gradients = problem.batch[1].mT
        S = gradients.mT @ gradients / nb
        stationary.append(fro_rel(problem.K @ P @ S, S))
        apart.append(fro_rel(P, target))
        meta = meta_gradient(problem, dense_from(target), objective_of, same_batch)
        at_optimum.append(float(meta.abs().max() / (nb * S).abs().max()))
        rows.append({"d": d, "nb": nb, "kind": kind, "rank(S)": int(torch.linalg.matrix_rank(S)),
                     "‖KPS − S‖/‖S‖": stationary[-1], "‖P − P*‖/‖P*‖": apart[-1]})
    out.at_most("max ‖KPS − S‖_F/‖S‖_F of the fitted P", max(stationary), APO4_STATIONARY)
    out.add("min ‖P − P*‖_F/‖P*‖_F of the fitted P", min(apart), ">", APO4_APART)
    out.at_most("max ‖∂Q/∂P at P*‖_max/‖nbS‖_max (engine)", max(at_optimum), E_RTOL)
    out.details["draws"] = rows
    return out.outcome()


# ----- APO-5: exact quadratic loss -----

APO5_DRAWS: tuple[Draw, ...] = ((2, 2, "skewed"), (4, 6, "heavy"), (6, 12, "discrete"), (8, 9, "shifted"))
"""(d, nb, kind of the batch optima c_b): nb ≥ d (S non-singular); the first draw has λ_F = λ_W = 0
(Newton, H⁻¹), the second λ_F = 0 (damped Newton), the others random λ."""
LINE_SEARCH_DIMS = (2, 5, 8)
LINE_SEARCH_STEPS = 25
"""APO-5(c): deterministic quadratics of these sizes, this many steps."""
ETA0 = 0.1
"""The learning rate φ₀ = η₀ of APO-5(b, c) (any positive value: the meta-step is exact)."""


def lr_family() -> Family:
    """APO's learning-rate family `positive_scalar` with η = φ ("linear": Q is then quadratic in φ),
    η₀ = `ETA0`; with `Concatenated` and position "direction" this is the `APO` preset's LR mode."""
    return positive_scalar(ETA0, "linear")


def line_search_quadratic(d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """H, c and θ₀ of APO-5(c): H SPD (d ≥ 2) with eigenvalues 0.1 and 10 (condition number 100), the
    others log-uniform between, Haar eigenvectors U; θ₀ − c = U(z/λ), z = 1 + N(0, 0.1²) entries, near
    Kantorovich's worst start, so that steepest descent zigzags and is far from converged after
    `LINE_SEARCH_STEPS` steps (its η_t stays well defined)."""
    lam = torch.cat([torch.tensor([0.1, 10.0]), log_uniform((d - 2,), -1, 1, gen)])
    U = haar(d, gen)
    c = torch.randn(d, generator=gen)
    z = 1 + 0.1 * torch.randn(d, generator=gen)
    return (U * lam) @ U.mT, c, c + U @ (z / lam)


def _apo5_instance(i: int, draw: Draw,
                   gen: torch.Generator) -> tuple[Problem, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The problem, H, θ and the batch optima c_b (rows) of draw i (corners first)."""
    d, nb, kind = draw
    lam_fsd, lam_wsd = draw_lambdas(gen)
    lam_fsd, lam_wsd = {0: (0.0, 0.0), 1: (0.0, lam_wsd)}.get(i, (lam_fsd, lam_wsd))
    H, G, theta = spd(d, gen), spd(d, gen), torch.randn(d, generator=gen)
    centres = draw_gradients(kind, nb, d, gen)
    return quadratic_problem(H, theta, centres, G, lam_fsd, lam_wsd), H, theta, centres


def optimal_lr(H: torch.Tensor, G: torch.Tensor, theta: torch.Tensor, centres: torch.Tensor, lam_fsd: float,
               lam_wsd: float) -> float:
    """η* = E‖g‖²/(E[gᵀHg] + λ_W E‖g‖² + λ_F E[gᵀGg]) for the batch gradients g_b = H(θ − c_b)."""
    g = (theta - centres) @ H  # rows g_b (H symmetric)
    norms = g.square().sum()
    return float(norms / ((g @ H * g).sum() + lam_wsd * norms + lam_fsd * (g @ G * g).sum()))


def line_search_run(objective_of: ObjectiveOf, d: int,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """APO-LR (λ = 0, exact meta-step) on J(θ) = ½(θ − c)ᵀH(θ − c) and steepest descent with the exact
    line search η = gᵀg/gᵀHg from the same θ₀, `LINE_SEARCH_STEPS` steps each.

    Returns:
        The engine's iterates (T+1, d) and learning rates (T,), then the reference's.
    """
    H, c, theta0 = line_search_quadratic(d, gen)
    problem = quadratic_problem(H, theta0, c.unsqueeze(0), torch.eye(d), 0.0, 0.0)
    model, opt = optimizer_for(problem, lr_family(), objective_of, True, Concatenated(), lr=1.0,
                               position="direction")
    thetas, etas = [theta0], []
    for _ in range(LINE_SEARCH_STEPS):
        engine_step(model, opt, problem, same_batch)
        thetas.append(model.weight.detach()[0].clone())
        etas.append(dense_of(opt.preconditioners()[0][1])[0, 0])
    ref_thetas, ref_etas = [theta0], []
    for _ in range(LINE_SEARCH_STEPS):
        g = H @ (ref_thetas[-1] - c)
        ref_etas.append(g @ g / (g @ H @ g))
        ref_thetas.append(ref_thetas[-1] - ref_etas[-1] * g)
    return (torch.stack(thetas) - c, torch.stack(etas), torch.stack(ref_thetas) - c, torch.stack(ref_etas))


@check(
    id="APO-5",
    paper="APO App. F-G, Table 1 (damped) Newton rows (Bae 2022)",
    statement=(
        "Optimum with an exact quadratic loss J_B = ½(θ − c_B)ᵀH(θ − c_B) in precondalg's Proximal objective "
        "(4 draws, d = 2…8, corners λ = 0 and λ_F = 0): (a) Preconditioned's exact meta-step over a dense P "
        "gives (H + λ_F G + λ_W I)⁻¹; (b) over a learning rate (positive_scalar, APO's LR placement) "
        "η* = E‖g‖²/(E[gᵀHg] + λ_W E‖g‖² + λ_F E[gᵀGg]); (c) APO-LR with λ = 0 and the meta-objective "
        "minimised exactly at each step follows steepest descent with exact line search (3 quadratics, "
        "cond(H) = 100, 25 steps)."
    ),
    tolerance=f"S: rel. error <= {S_TOL:g} for (a), (b); {E_TOL} for the trajectory (c)",
    provenance="DERIVED",
    mutants={
        "loss term evaluated at θ instead of the lookahead u": {"objective_of": loss_at_theta},
        "the ½ missing on the FSD and WSD quadratics": {"objective_of": _without_half},
        "library: FSD on the training batch B instead of B′": {"objective_of": fsd_on_training_batch},
    },
)
def apo_5(
    objective_of: ObjectiveOf = proximal,
    draws: tuple[Draw, ...] = APO5_DRAWS,
    seed: int = 5,
) -> Outcome:
    """APO-5: with an exact quadratic loss APO's meta-objective is minimised by damped Newton.

    (a) and (b) on nb batches with optima c_b = μ + A z_b (`draw_gradients` kinds), H and G SPD with
    eigenvalues in [0.1, 10]; (c) on one deterministic batch, the engine's iterates θ_t − c against an
    independent steepest descent with η_t = gᵀg/gᵀHg, errors relative to max|θ₀ − c|.
    """
    gen, out = generator(seed), Measures()
    p_errors, lr_errors, rows = [], [], []
    for i, draw in enumerate(draws):
        problem, H, theta, centres = _apo5_instance(i, draw, gen)
        d = draw[0]
        P = fitted(problem, dense_from(torch.eye(d)), objective_of, same_batch, InputSide())
        p_errors.append(fro_rel(P, torch.linalg.inv(H + problem.K)))
        eta = fitted(problem, lr_family(), objective_of, same_batch, Concatenated(), "direction")[0, 0]
        target = optimal_lr(H, problem.G, theta, centres, problem.lam_fsd, problem.lam_wsd)
        lr_errors.append(abs(float(eta) / target - 1))
        rows.append({"d": d, "nb": draw[1], "λ_F": problem.lam_fsd, "λ_W": problem.lam_wsd,
                     "(a) rel. error": p_errors[-1], "(b) rel. error": lr_errors[-1]})
    traj_errors, eta_errors, runs = [], [], []
    for d in LINE_SEARCH_DIMS:
        thetas, etas, ref_thetas, ref_etas = line_search_run(objective_of, d, gen)
        traj_errors.append(float((thetas - ref_thetas).abs().max() / ref_thetas[0].abs().max()))
        eta_errors.append(rel_err(etas, ref_etas))
        runs.append({"d": d, "trajectory error": traj_errors[-1], "η_t error": eta_errors[-1],
                     "‖θ_T − c‖/‖θ₀ − c‖": float(ref_thetas[-1].norm() / ref_thetas[0].norm())})
    out.at_most("(a) max ‖P − (H + λ_F G + λ_W I)⁻¹‖_F/‖·‖_F", max(p_errors), S_TOL)
    out.at_most("(b) max |η − η*|/η*", max(lr_errors), S_TOL)
    out.at_most("(c) max_t ‖θ_t − θ_t^line search‖_max/‖θ₀ − c‖_max", max(traj_errors), E_RTOL)
    out.at_most("(c) max rel. error, η_t vs gᵀg/gᵀHg", max(eta_errors), E_RTOL)
    out.details["draws"] = rows
    out.details["(c) runs"] = runs
    return out.outcome()

