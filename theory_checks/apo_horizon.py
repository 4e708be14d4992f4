"""APO (Bae 2022) theory checks on which batch each term of the meta-objective sees, and on the descent
guarantee of the structured preconditioner: APO-9 (App. D, short-horizon bias: the loss term on the same
vs a different minibatch), APO-10 (App. D, the FSD term on the training batch is biased) and APO-11
(§4.5, P̂ is PSD, so a small enough step descends).

How the library is exercised.
- Per-replica meta-gradients (APO-9(a), APO-10).  N independent replicas θ₁ … θ_N of a problem are the
  rows of one parameter Θ (N × d) of a `Replicas` model whose outputs and loss are sums over the
  replicas; each replica draws its own batch.  With precondalg's `diagonal(η)` family on the
  `OutputSide` placement, P = diag(η₁, …, η_N) scales row i by ηᵢ, so `Proximal`'s Q (Eq. 8) is the sum
  of the replicas' meta-objectives and its meta-gradient entry i is replica i's ∂Q_i/∂ηᵢ: APO's
  learning-rate meta-gradient for N batches in one `Preconditioned` step.  It is read as φ₀ − φ₁ of a
  fitter SGD(lr = 1), with base lr 0 (θ does not move).  The "different batch" objective (App. D,
  Eq. 13) is the library's own: the gradient comes from batch B and ``step(batch=B′)`` gets another.
- Dynamics (APO-9(b)): the `APO(mode="lr")` preset, one param group (hence one learned η) per replica,
  one meta-step per step.
- Descent (APO-11): a `Preconditioned` step with the `eigenbasis(0.9)` family (APO's 0.9 on the applied
  step) at a drawn φ = (B, A, S), placement `TwoSided`, base SGD, never fitted.

The closed forms (η*, the FSD moments, the descent-lemma bound) are written here from the statements;
E[·] over batches is estimated by Monte Carlo (class MC: |estimate − truth| ≤ 5·se).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import scipy.stats
import torch
from PEPit import PEP
from PEPit.functions import SmoothFunction

import precondalg as pa
from precondalg.families import Family, diagonal, eigenbasis, positive_scalar
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import BlockContext, Evaluation, Objective, Proximal
from precondalg.optim import APO, Preconditioned, SkippedStepWarning, every
from precondalg.placement import Concatenated, OutputSide, TwoSided
from theory_checks._apo import (
    LossFn,
    ObjectiveOf,
    fsd_on_training_batch,
    loss_at_theta,
    proximal,
    squared_loss,
    squared_without_half,
    worst,
)
from theory_checks._numerics import E_ATOL, E_RTOL, dense_of, generator, log_uniform
from theory_checks._pep import PEP_TOL, SOLVER, SOLVER_TOL, solve
from theory_checks.apo import SHAPES, _unsquared_preconditioner, structured_preconditioner
from theory_checks.psgd_criteria import spd
from theory_checks.registry import Measures, Outcome, check

Batch = tuple[torch.Tensor, torch.Tensor]

MC_SIGMAS = 5.0
"""Class MC: |estimate − truth| ≤ 5·se."""


# ----- Monte-Carlo read-outs -----


def sigmas(deviation: float, se: float) -> float:
    """|deviation|/se in standard errors: inf for a non-zero deviation with se = 0, NaN for 0/0 or a NaN
    (both fail a ≤ bound)."""
    return float(torch.tensor(abs(deviation)) / se)


# ----- the replica models and the per-replica meta-gradient -----


class Replicas(torch.nn.Module):
    """Replicas of a noisy quadratic, f(x, Θ) = vec(Θ Rᵀ) for every input row (x itself unused).

    With targets vec(c Rᵀ) (c: N × d, one batch optimum cᵢ per replica) and `squared_loss`, replica i's
    loss is J_i(θᵢ) = ½(θᵢ − cᵢ)ᵀH(θᵢ − cᵢ) with H = RᵀR, and the squared-error FSD of replica i is
    ½(uᵢ − θᵢ)ᵀH(uᵢ − θᵢ) (G = H).

    Args:
        rows: tensors (kⱼ, d) whose rows together are the N replicas (one parameter each: one tensor for
            a per-row `diagonal` learning rate, one (1, d) tensor per param group for the preset).
        root: (d, d) R.
    """

    def __init__(self, rows: Sequence[torch.Tensor], root: torch.Tensor) -> None:
        super().__init__()
        self.rows = torch.nn.ParameterList([torch.nn.Parameter(r.clone()) for r in rows])
        self.root = root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(|x|, N·d) outputs: the same row vec(Θ Rᵀ) for every input row."""
        return (torch.cat(list(self.rows)) @ self.root.mT).reshape(1, -1).expand(x.shape[0], -1)


class LinearReplicas(torch.nn.Module):
    """Replicas of a linear regression, f(x, Θ)ᵢ = xᵢᵀθᵢ: inputs (b, N, d), outputs (b, N).

    Args:
        theta: (N, d) the replicas' parameters.
    """

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, N) outputs xᵢᵀθᵢ for inputs x of shape (b, N, d)."""
        return (x * self.weight).sum(-1)


def replica_meta_gradients(
    model: torch.nn.Module, objective: Objective, eta: float, batch: Batch, meta_batch: Batch,
    fsd_batch: torch.Tensor,
) -> torch.Tensor:
    """Each replica's ∂Q_i/∂ηᵢ at ηᵢ = eta, as one `Preconditioned` step computes it.

    The gradient is ∇J on `batch` (backward on the model); the step gets ``batch=meta_batch`` (the
    loss term of Q) and ``fsd_batch``; P = diag(η) on the output side of the single (N, d) parameter,
    base lr 0, fitter SGD(lr = 1), so the meta-gradient is φ₀ − φ₁.

    Returns:
        (N,) the meta-gradients.
    """
    (weight,) = model.parameters()
    opt = Preconditioned(
        [weight], 0.0, structure=diagonal(eta), placement=OutputSide(), objective=objective,
        fitter=TorchOptimizer(torch.optim.SGD, lr=1.0), base="sgd", position="direction",
    )
    model.zero_grad()
    squared_loss(model(batch[0]), batch[1]).backward()
    opt.step(batch=meta_batch, fsd_batch=fsd_batch)
    ((_, P),) = opt.preconditioners()
    return eta - P.d


# ----- mutant objectives -----


@dataclasses.dataclass(frozen=True, eq=False)
class _LookaheadUphill(Proximal):
    """Mutant library objective: the lookahead taken uphill, u = θ + P g."""

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Any]:
        flipped = [dataclasses.replace(ctx, lookahead=-ctx.lookahead) for ctx in blocks]
        return super().meta_grads(flipped, evaluation)


def _lookahead_uphill(model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float,
                      lam_wsd: float) -> Objective:
    return _LookaheadUphill(model, loss_fn, fsd="squared", lam_fsd=lam_fsd, lam_wsd=lam_wsd)


def _fsd_without_half(model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float,
                      lam_wsd: float) -> Objective:
    """Mutant: the squared-error divergence without its ½, ρ = ‖Δf‖²/|B′|."""
    return Proximal(model, loss_fn, fsd=squared_without_half, lam_fsd=lam_fsd, lam_wsd=lam_wsd)


# ----- APO-9: the optimal learning rate of the same- and the different-batch meta-objective -----


@dataclasses.dataclass(frozen=True)
class Quadratic:
    """A noisy quadratic at the current θ: J_B(θ) = ½(θ − c_B)ᵀH(θ − c_B), c_B ~ N(θ*, C), r = θ − θ*.

    Attributes:
        H: (d, d) SPD curvature (G = H for the squared-error FSD of `Replicas`).
        C: (d, d) SPD covariance of the batch optima.
        r: (d,) θ − θ*.
        lam_fsd: λ_F.
        lam_wsd: λ_W.
    """

    H: torch.Tensor
    C: torch.Tensor
    r: torch.Tensor
    lam_fsd: float
    lam_wsd: float


def nqm_curvature(d: int = 10) -> torch.Tensor:
    """The App. D noisy quadratic's H: eigenvalues log-spaced in [0.01, 1], diagonal."""
    return torch.diag(torch.logspace(-2, 0, d))


def optimal_lrs(q: Quadratic) -> tuple[float, float]:
    """η* of the same- and the different-batch meta-objective (DERIVED), with g = H(θ − c_B):

        η*_same = E‖g‖²/D,  η*_diff = ‖∇J(θ)‖²/D,  D = (1 + λ_F) E[gᵀHg] + λ_W E‖g‖²,
        E‖g‖² = rᵀH²r + tr(H²C),  E[gᵀHg] = rᵀH³r + tr(H³C),  ‖∇J‖² = rᵀH²r.
    """
    H2 = q.H @ q.H
    mean2 = float(q.r @ H2 @ q.r)
    second = mean2 + float(torch.trace(H2 @ q.C))
    third = float(q.r @ H2 @ q.H @ q.r + torch.trace(H2 @ q.H @ q.C))
    denominator = (1 + q.lam_fsd) * third + q.lam_wsd * second
    return second / denominator, mean2 / denominator


def _nqm_targets(q: Quadratic, root: torch.Tensor, n: int, gen: torch.Generator) -> Batch:
    """One batch per replica: inputs (1, 1) (unused) and targets vec(c Rᵀ), cᵢ ~ N(θ* = 0, C)."""
    c = torch.randn(n, q.C.shape[0], generator=gen) @ torch.linalg.cholesky(q.C).mT
    return torch.zeros(1, 1), (c @ root.mT).reshape(1, -1)


def mc_optimal_lr(q: Quadratic, objective_of: ObjectiveOf, same: bool, n: int,
                  gen: torch.Generator) -> tuple[float, float]:
    """The Monte-Carlo η* of the same- (or different-) batch meta-objective and its standard error.

    Each replica's meta-gradient is affine in its η on a quadratic, m_i(η) = a_i + b_i η; the library
    gives it at η = 0 and η = 1, and η̂* = −Σa/Σb is the zero of the averaged meta-gradient, with the
    ratio estimator's se = std(a + η̂* b)/(√N |mean b|).
    """
    root = torch.linalg.cholesky(q.H).mT  # RᵀR = H
    batch = _nqm_targets(q, root, n, gen)
    meta_batch = batch if same else _nqm_targets(q, root, n, gen)
    theta = q.r.expand(n, -1)  # θ* = 0

    def at(eta: float) -> torch.Tensor:
        model = Replicas([theta], root)
        objective = objective_of(model, squared_loss, q.lam_fsd, q.lam_wsd)
        return replica_meta_gradients(model, objective, eta, batch, meta_batch, batch[0])

    a = at(0.0)
    b = at(1.0) - a
    est = -a.sum() / b.sum()
    return float(est), float((a + est * b).std() / (math.sqrt(n) * b.mean().abs()))


def _apo9_quadratics(gen: torch.Generator) -> list[tuple[str, Quadratic]]:
    """The App. D NQM (d = 10) at θ* and far from it (λ = 0), and two random quadratics with λ > 0."""
    H, C = nqm_curvature(), 0.5 * torch.eye(10)
    out = [
        ("NQM d=10 at θ*, λ=0", Quadratic(H, C, torch.zeros(10), 0.0, 0.0)),
        ("NQM d=10, r=1, λ=0", Quadratic(H, C, torch.ones(10), 0.0, 0.0)),
    ]
    for d, lam_fsd in ((5, float(torch.rand((), generator=gen))), (2, 0.0)):
        q = Quadratic(spd(d, gen, -1.0, 0.5), spd(d, gen), torch.randn(d, generator=gen), lam_fsd,
                      float(torch.rand((), generator=gen)))
        out.append((f"random d={d}, λ_F={q.lam_fsd:.2f}, λ_W={q.lam_wsd:.2f}", q))
    return out


# ----- APO-9: the learning-rate schedules of APO(mode="lr") -----


def apo_lr(groups: list[dict[str, Any]], eta0: float, model: torch.nn.Module, meta_lr: float) -> Any:
    """precondalg's `APO(mode="lr")` preset: RMSprop on log η, one meta-step per step, λ = 0, base SGD."""
    return APO(groups, eta0, model=model, loss_fn=squared_loss, mode="lr", base="sgd", meta_every=1,
               meta_lr=meta_lr, lam_fsd=0.0, lam_wsd=0.0)


def preset_configuration(groups: list[dict[str, Any]], eta0: float, model: torch.nn.Module, meta_lr: float,
                         *, maximize: bool) -> Any:
    """`APO(mode="lr")`'s configuration of `Preconditioned` spelt out (η = exp φ, Concatenated,
    `Proximal` with λ = 0, RMSprop on φ, base SGD, position "direction", a fit every step), with
    `maximize` passed to RMSprop: True is the mutant, the meta-gradient's sign flipped in the fitter."""
    return Preconditioned(
        groups, 1.0, structure=positive_scalar(eta0, "log"), placement=Concatenated(),
        objective=Proximal(model, squared_loss, fsd="squared"),
        fitter=TorchOptimizer(torch.optim.RMSprop, lr=meta_lr, maximize=maximize), base="sgd",
        position="direction", update_probability=every(1),
    )


_ascending_apo_lr = functools.partial(preset_configuration, maximize=True)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """APO-9(b)'s run: T steps on the App. D NQM (d = 10, h log-spaced in [0.01, 1], C = 0.5 I) from
    θ₀ = θ* + 1, η₀ = `eta0`, with `seeds` replicas whose loss term sees the gradient's batch and as many
    whose loss term sees a fresh batch."""

    steps: int = 300
    seeds: int = 3
    eta0: float = 0.5
    meta_lr: float = 0.01
    seed: int = 9


@functools.lru_cache(maxsize=4)
def lr_schedules(optimizer_of: Callable[..., Any], spec: Schedule) -> tuple[torch.Tensor, int]:
    """The learned η of every replica after every step, (T, 2·seeds) with the same-batch replicas first,
    and the number of `SkippedStepWarning`s the run raised (a non-finite step or meta-step, rolled back).

    One optimizer, one param group (one η) per replica; each step draws every replica's batch optimum,
    back-propagates the gradient's batch, and hands the optimizer the same targets (same-batch
    replicas) or fresh ones (different-batch replicas) as ``batch``.  Memoised: a mutant that changes
    only APO-9(a) reuses the real run's schedules.
    """
    gen, H = generator(spec.seed), nqm_curvature()
    root, chol, n = H.sqrt(), math.sqrt(0.5), 2 * spec.seeds
    model = Replicas([torch.ones(1, H.shape[0]) for _ in range(n)], root)
    opt = optimizer_of([{"params": [p]} for p in model.rows], spec.eta0, model, spec.meta_lr)
    x, etas = torch.zeros(1, 1), torch.empty(spec.steps, n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedStepWarning)
        for t in range(spec.steps):
            c = chol * torch.randn(2, n, H.shape[0], generator=gen)
            c[1, : spec.seeds] = c[0, : spec.seeds]
            targets = (c @ root.mT).reshape(2, 1, -1)
            model.zero_grad()
            squared_loss(model(x), targets[0]).backward()
            opt.step(batch=(x, targets[1]))
            etas[t] = torch.stack([P.alpha for _, P in opt.preconditioners()])
    return etas, sum(issubclass(w.category, SkippedStepWarning) for w in caught)


def _spearman_tail(etas: torch.Tensor) -> float:
    """Spearman's ρ(t, η_t) over the last 90% of the steps."""
    tail = etas[etas.shape[0] // 10 :]
    return float(scipy.stats.spearmanr(torch.arange(len(tail)), tail).statistic)


@check(
    id="APO-9",
    tier="dynamics",
    paper="APO App. D, Eqs. 12-13 (Bae 2022)",
    statement=(
        "(a) On noisy quadratics (App. D NQM at θ* and far, two random ones with λ>0), the Monte-Carlo zero "
        "of Proximal's learning-rate meta-gradient matches η*_same = E‖g‖²/D with the loss term on the "
        "gradient's batch and η*_diff = ‖∇J‖²/D on another batch, D = (1+λ_F)E[gᵀHg] + λ_W E‖g‖². "
        "(b) APO(mode='lr', base 'sgd', meta_every 1, λ = 0, meta_lr 0.01, η₀ 0.5) on the 10-d NQM "
        "(h in [0.01, 1], C = 0.5I) from θ* + 1, 300 steps, medians over 3 "
        "independent replicas per objective: "
        "with the loss term on a different batch η keeps falling (Spearman(t, η_t) < -0.8 over the last "
        "90%) and ends at most 0.5x the same-batch η, which stays within 1.5x of tr(H²C)/tr(H³C) over "
        "the last half."
    ),
    tolerance="MC: |η̂* − η*| <= 5·se; D: medians over 3 replicas against the ratio thresholds",
    provenance="PAPER+DERIVED",
    mutants={
        "loss term at θ, not at the lookahead": {"objective_of": loss_at_theta},
        "lookahead uphill, u = θ + ηg": {"objective_of": _lookahead_uphill},
        "meta-gradient sign flipped in the fitter (RMSprop maximising Q)": {
            "optimizer_of": _ascending_apo_lr
        },
    },
)
def apo_9(
    objective_of: ObjectiveOf = proximal,
    optimizer_of: Callable[..., Any] = apo_lr,
    replicas: int = 4000,
    spec: Schedule = Schedule(),  # noqa: B008  (a frozen dataclass: immutable)
    seed: int = 9,
) -> Outcome:
    """APO-9 (Bae 2022, App. D): the same-batch meta-objective (Eq. 12) against the different-batch one
    (Eq. 13, Wu et al. 2018's): their optimal learning rates (a) and APO-LR's schedules (b).
    """
    gen, out = generator(seed), Measures()
    deviations: dict[bool, list[float]] = {True: [], False: []}
    rows = {}
    for name, q in _apo9_quadratics(gen):
        truth = dict(zip((True, False), optimal_lrs(q)))
        row = {}
        for same in (True, False):
            est, se = mc_optimal_lr(q, objective_of, same, replicas, gen)
            deviations[same].append(sigmas(est - truth[same], se))
            row["same" if same else "diff"] = {"MC η*": est, "se": se, "closed form": truth[same]}
        rows[name] = row
    out.at_most("(a) max |η̂*_same − η*_same|/se", worst(deviations[True]), MC_SIGMAS)
    out.at_most("(a) max |η̂*_diff − η*_diff|/se", worst(deviations[False]), MC_SIGMAS)
    out.details["(a) quadratics"] = rows

    etas, skipped = lr_schedules(optimizer_of, spec)
    same, diff = etas[:, : spec.seeds], etas[:, spec.seeds :]
    H, C = nqm_curvature(), 0.5 * torch.eye(10)
    target = optimal_lrs(Quadratic(H, C, torch.zeros(10), 0.0, 0.0))[0]
    tail = same[spec.steps // 2 :].median(dim=1).values / target
    spearman = statistics.median(_spearman_tail(diff[:, i]) for i in range(spec.seeds))
    ratio = float(diff[-1].median() / same[-1].median())
    out.at_most("(b) median Spearman(t, η_t), different batch, last 90%", spearman, -0.8)
    out.at_most("(b) median η_T different / same batch", ratio, 0.5)
    out.at_most("(b) max over the last half of median η_same/η*_same(θ*)", float(tail.max()), 1.5)
    out.at_least("(b) min over the last half of median η_same/η*_same(θ*)", float(tail.min()), 1 / 1.5)
    out.equal("(b) SkippedStepWarnings (non-finite steps rolled back)", skipped, 0)
    out.details["(b) η*_same(θ*)"] = target
    out.details["(b) η_T same batch"] = same[-1].tolist()
    out.details["(b) η_T different batch"] = diff[-1].tolist()
    out.details["(b) run"] = dataclasses.asdict(spec)
    return out.outcome()


# ----- APO-10: the FSD term on the training batch -----


@dataclasses.dataclass(frozen=True)
class Regression:
    """Linear regression y = xᵀθ* + ε with x ~ N(0, σ²I_d), ε ~ N(0, s²), |B| = |B′| = 1, at θ = θ* + δ,
    and the lookahead u = θ − ηg_B."""

    d: int
    sigma: float
    delta: float
    noise: float
    eta: float


def fsd_moments(p: Regression) -> tuple[float, float]:
    """E_B[FSD on B] and E_{B,B′}[FSD on B′] (DERIVED), FSD = ½(x̃ᵀ(u − θ))² = ½η²(x̃ᵀg_B)², g_B = x e,
    e = xᵀδ − ε.  Gaussian moments: E[‖x‖²(xᵀδ)²] = σ⁴(d+2)‖δ‖², E[‖x‖⁴(xᵀδ)²] = σ⁶(d+2)(d+4)‖δ‖²,
    E‖x‖² = σ²d, E‖x‖⁴ = σ⁴d(d+2); hence

        same: ½η² E[‖x‖⁴e²] = ½η² [σ⁶(d+2)(d+4)‖δ‖² + s²σ⁴d(d+2)],
        other: ½η² σ² E[‖x‖²e²] = ½η² σ² [σ⁴(d+2)‖δ‖² + s²σ²d].
    """
    d, v, dd, ss = p.d, p.sigma**2, p.delta**2, p.noise**2
    same = 0.5 * p.eta**2 * (v**3 * (d + 2) * (d + 4) * dd + ss * v**2 * d * (d + 2))
    other = 0.5 * p.eta**2 * v * (v**2 * (d + 2) * dd + ss * v * d)
    return same, other


def library_fsd(p: Regression, objective_of: ObjectiveOf, n: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each replica's FSD term of `Proximal`'s Q with B′ = B and with B′ independent of B.

    The FSD term of replica i is ½η²(x̃ᵢᵀgᵢ)², quadratic in η, so it is (η/2)·∂FSD/∂η; ∂FSD/∂η is the
    difference of the library's meta-gradients with λ_F = 1 and λ_F = 0 (the loss term cancels).

    Returns:
        (N,) FSD on B and (N,) FSD on B′.
    """
    theta_star = torch.randn(p.d, generator=gen)
    direction = torch.randn(p.d, generator=gen)
    theta = theta_star + p.delta * direction / direction.norm()
    x, x_other = p.sigma * torch.randn(2, 1, n, p.d, generator=gen)
    batch = (x, x @ theta_star + p.noise * torch.randn(1, n, generator=gen))
    model = LinearReplicas(theta.expand(n, -1))

    def meta(lam_fsd: float, fsd_inputs: torch.Tensor) -> torch.Tensor:
        objective = objective_of(model, squared_loss, lam_fsd, 0.0)
        return replica_meta_gradients(model, objective, p.eta, batch, batch, fsd_inputs)

    loss_part = meta(0.0, x)
    return tuple(p.eta / 2 * (meta(1.0, inputs) - loss_part) for inputs in (x, x_other))


def _apo10_regressions(gen: torch.Generator) -> list[Regression]:
    """d = 1, 3, 8 and a random one; corners δ = 0 (pure noise) and s = 0 (noiseless)."""
    sigma, eta = log_uniform((2,), -0.3, 0.3, gen).tolist(), float(log_uniform((), -2, -0.5, gen))
    return [
        Regression(1, 1.0, 1.0, 0.5, 0.1),
        Regression(3, sigma[0], 0.0, 1.0, 0.3),
        Regression(8, 0.7, 1.5, 0.0, 0.05),
        Regression(5, sigma[1], float(torch.rand((), generator=gen)) + 0.5, 0.3, eta),
    ]


@check(
    id="APO-10",
    paper="APO App. D, Eq. 14 (Bae 2022)",
    statement=(
        "Linear regression with x ~ N(0, σ²I_d), |B| = |B′| = 1, u = θ − ηg_B, 4 draws (d = 1, 3, 5, 8; "
        "δ = θ − θ* = 0 and s = 0 corners): Proximal's squared-error FSD term on B has mean "
        "½η²E[‖x‖⁴e²] = ½η²[σ⁶(d+2)(d+4)‖δ‖² + s²σ⁴d(d+2)], on an independent B′ "
        "½η²σ²E[‖x‖²e²] = ½η²σ²[σ⁴(d+2)‖δ‖² + s²σ²d], and the same-batch FSD exceeds the "
        "independent-batch one by more than 5 standard errors (a biased estimate of E_x̃[ρ])."
    ),
    tolerance="MC: |mean − closed form| <= 5·se; paired difference > 5·se",
    provenance="PAPER+DERIVED",
    mutants={
        "fsd_batch ignored: the FSD on the training batch B": {"objective_of": fsd_on_training_batch},
        "squared-error divergence without its ½": {"objective_of": _fsd_without_half},
    },
)
def apo_10(objective_of: ObjectiveOf = proximal, replicas: int = 20000, seed: int = 10) -> Outcome:
    """APO-10 (Bae 2022, App. D, Eq. 14): the FSD term of the library's meta-objective on the training
    batch against an independent batch, with the derived Gaussian moments."""
    gen, out = generator(seed), Measures()
    deviations: dict[str, list[float]] = {"same": [], "other": []}
    gaps, rows = [], []
    for p in _apo10_regressions(gen):
        on_b, on_other = library_fsd(p, objective_of, replicas, gen)
        truth = dict(zip(("same", "other"), fsd_moments(p)))
        row = dataclasses.asdict(p)
        for key, fsd in (("same", on_b), ("other", on_other)):
            se = float(fsd.std() / math.sqrt(replicas))
            deviations[key].append(sigmas(float(fsd.mean()) - truth[key], se))
            row[key] = {"MC mean": float(fsd.mean()), "se": se, "closed form": truth[key]}
        diff = on_b - on_other
        gaps.append(float(diff.mean() / (diff.std() / math.sqrt(replicas))))
        rows.append(row)
    out.at_most("max |mean FSD on B − ½η²E[‖x‖⁴e²]|/se", worst(deviations["same"]), MC_SIGMAS)
    out.at_most("max |mean FSD on B′ − ½η²σ²E[‖x‖²e²]|/se", worst(deviations["other"]), MC_SIGMAS)
    out.add("min (FSD on B − FSD on B′)/se, paired", float(torch.tensor(gaps).min()), ">", MC_SIGMAS)
    out.details["regressions"] = rows
    return out.outcome()


# ----- APO-11: P̂ is PSD, and a step of 0.9/(Lλ_max) descends -----

Builder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], pa.Structure]
APO_SCALE = 0.9
"""APO's factor on the applied step (§4.5): the check's step is APO_SCALE/(L λ_max(P̂)) · P̂g."""
BEYOND_SCALE = 2.1
"""A step factor past 2, where no descent is guaranteed (PEPit's worst case must be an increase)."""


def descent_factor(c: float) -> float:
    """The descent lemma with α = c/(Lλ_max): J(θ) − J(θ − αP̂g) ≥ (1 − c/2)·α·gᵀP̂g."""
    return 1 - c / 2


@functools.cache
def pep_descent(c: float) -> tuple[float, float, str]:
    """PEPit's exact worst case of J(θ₁) − J(θ₀) for θ₁ = θ₀ − c∇J(θ₀) over 1-smooth J with ‖∇J(θ₀)‖ = 1.

    `SmoothFunction`'s interpolation conditions (Taylor, Hendrickx & Glineur 2017) are necessary and
    sufficient for L-smooth (not necessarily convex) functions, so the value is the exact worst case.  It
    transfers to the check's step by θ = θ₀ + P̂^{1/2}u: J∘(θ₀ + P̂^{1/2}·) is (Lλ_max)-smooth, the step
    θ₀ − (c/(Lλ_max))P̂g is gradient descent on it with step c/(Lλ_max), and its squared gradient at
    u = 0 is gᵀP̂g; so J(θ₁) − J(θ₀) ≤ value·gᵀP̂g/(Lλ_max) for every L-smooth J.

    Returns:
        (dual value, duality gap, solver status) as `theory_checks._pep.solve`.
    """
    problem = PEP()
    fn = problem.declare_function(SmoothFunction, L=1.0)
    x0 = problem.set_initial_point()
    g0 = fn.gradient(x0)
    problem.set_initial_condition(g0**2 == 1)
    problem.set_performance_metric(fn(x0 - c * g0) - fn(x0))
    return solve(problem)


def _untransposed_preconditioner(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor) -> pa.Structure:
    """Mutant: K diag(vec S)² K, the outer factor not transposed (not symmetric)."""
    K = pa.Kronecker(pa.Dense(B), pa.Dense(A))
    return pa.compose(pa.compose(K, pa.Diagonal(S.flatten() ** 2)), K)


def _factors(m: int, n: int, gen: torch.Generator, corner: str) -> tuple[torch.Tensor, ...]:
    """Random A (n×n), B (m×m), S (m×n) with mixed signs; "zeros": S with zero entries but S₀₀ (P̂
    singular, not zero); "rank": B of rank 1 (P̂ singular along whole Kronecker directions)."""
    A, B = torch.randn(n, n, generator=gen), torch.randn(m, m, generator=gen)
    S = torch.randn(m, n, generator=gen)
    if corner == "zeros":
        keep = torch.rand(m, n, generator=gen) < 0.5
        keep[0, 0] = True
        S = S * keep
    if corner == "rank":
        B = torch.outer(torch.randn(m, generator=gen), torch.randn(m, generator=gen))
    return A, B, S


def _symmetric_eigh(P: pa.Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of the symmetric part of P's dense matrix (P applied to I)."""
    M = dense_of(P)
    return torch.linalg.eigh((M + M.mT) / 2)


def _min_quadratic_form(P: pa.Structure, gen: torch.Generator, draws: int = 16) -> float:
    """min gᵀ(P @ g)/(‖P‖₂‖g‖²) over random g and the least eigenvector of P's symmetric part."""
    lam, U = _symmetric_eigh(P)
    g = torch.cat([torch.randn(draws, P.shape[0], generator=gen), U[:, :1].mT])
    forms = (g * (P @ g.mT).mT).sum(1) / g.square().sum(1)
    return float(forms.min() / lam.abs().max())


def at_phi(builder: Builder, A: torch.Tensor, B: torch.Tensor, S: torch.Tensor, scale: float) -> Family:
    """precondalg's `eigenbasis(scale)` family (P = scale·φ) started at φ₀ = builder(A, B, S)."""
    return dataclasses.replace(eigenbasis(scale), init=lambda dims, like, gen: builder(A, B, S))


@dataclasses.dataclass(frozen=True)
class Smooth:
    """An L-smooth J of a weight W (m × n), and W₀."""

    name: str
    loss: Callable[[torch.Tensor], torch.Tensor]
    L: float
    W0: torch.Tensor


def _quadratic(m: int, n: int, gen: torch.Generator) -> Smooth:
    """J(W) = ½ vec(W − W*)ᵀ H vec(W − W*), H SPD (eigenvalues in [0.1, 10]): L = λ_max(H)."""
    H, W_star = spd(m * n, gen), torch.randn(m, n, generator=gen)
    return Smooth("quadratic", lambda W: 0.5 * (W - W_star).flatten() @ H @ (W - W_star).flatten(),
                  float(torch.linalg.eigvalsh(H)[-1]), torch.randn(m, n, generator=gen))


def _tight(m: int, n: int, P: pa.Structure, gen: torch.Generator) -> Smooth:
    """J(W) = (L/2)‖W − W*‖² started where g = ∇J is P's top eigenvector: the descent lemma is tight."""
    L, W_star = float(log_uniform((), -1, 1, gen)), torch.randn(m, n, generator=gen)
    top = _symmetric_eigh(P)[1][:, -1].reshape(m, n)
    return Smooth("tight", lambda W: 0.5 * L * (W - W_star).square().sum(), L, W_star + top / L)


def _softmax(m: int, n: int, gen: torch.Generator) -> Smooth:
    """Softmax regression, m classes, n features, 32 examples: L = ½λ_max(XᵀX/N) (Böhning's bound
    diag(p) − ppᵀ ⪯ ½I on the logits' Hessian)."""
    X, y = torch.randn(32, n, generator=gen), torch.randint(0, m, (32,), generator=gen)
    L = 0.5 * float(torch.linalg.eigvalsh(X.mT @ X / 32)[-1])
    return Smooth("softmax", lambda W: torch.nn.functional.cross_entropy(X @ W.mT, y), L,
                  torch.randn(m, n, generator=gen))


def library_step(J: Smooth, family: Family, lr: float) -> tuple[float, torch.Tensor]:
    """One `Preconditioned` step of W₀ with P from `family` (never fitted), TwoSided, base SGD.

    Returns:
        J(W₀) − J(W₁) and g = ∇J(W₀) (flattened).
    """
    W = torch.nn.Parameter(J.W0.clone())
    opt = Preconditioned([W], lr, structure=family, placement=TwoSided(), update_probability=0.0,
                         base="sgd", position="gradient")
    before = J.loss(W)
    before.backward()
    opt.step()
    with torch.no_grad():
        return float(before - J.loss(W)), W.grad.flatten()


@check(
    id="APO-11",
    paper="APO §4.5, Eq. 9 (Bae 2022)",
    statement=(
        "For random (A, B, S) of precondalg's Eigenbasis P̂ (6 shapes; S with zeros and rank-1 B "
        "corners), gᵀP̂g >= 0 for random g and P̂'s least eigenvector; and one Preconditioned step with "
        "the eigenbasis(0.9) family at that φ and lr 1/(Lλ_max(P̂)), i.e. θ − 0.9/(Lλ_max)·P̂g, on "
        "L-smooth J (quadratic, softmax regression, and the isotropic quadratic with g along P̂'s top "
        "eigenvector, where the bound is attained) decreases J by at least (1 − 0.45)·α·gᵀP̂g; certified: "
        "that bound is ≥ PEPit's exact worst-case decrease over all L-smooth J (through θ = θ₀ + P̂^{1/2}u), "
        "every sampled step is within that worst case, and at 2.1/(Lλ_max) the worst case increases J"
    ),
    tolerance="E: min gᵀP̂g/(‖P̂‖‖g‖²) >= -1e-12; decrease/bound >= 1 - 1e-10; PEPit: abs 1e-6 (CLARABEL)",
    provenance="PAPER+DERIVED",
    mutants={
        "S unsquared: K diag(vec S) Kᵀ (indefinite)": {"builder": _unsquared_preconditioner},
        "outer factor untransposed: K diag(vec S)² K": {"builder": _untransposed_preconditioner},
        "applied step 2.5/(Lλ_max): family scale 2.5 > 2": {"scale": 2.5},
        "claimed decrease (1 − c/4)·α·gᵀP̂g (faster than the descent lemma)": {
            "claimed": lambda c: 1 - c / 4
        },
    },
)
def apo_11(
    builder: Builder = structured_preconditioner,
    scale: float = APO_SCALE,
    claimed: Callable[[float], float] = descent_factor,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    seed: int = 11,
) -> Outcome:
    """APO-11 (Bae 2022, §4.5): P̂ PSD, so P̂g is a descent direction, and the descent lemma
    J(θ − αP̂g) ≤ J(θ) − αgᵀP̂g + (L/2)α²‖P̂g‖² ≤ J(θ) − (1 − Lαλ_max/2)·α·gᵀP̂g (‖P̂g‖² ≤ λ_max gᵀP̂g)
    at α = 0.9/(Lλ_max), for the library's step; the claimed factor `claimed(c)` is certified against
    PEPit's exact worst case (`pep_descent`) and every sampled step is compared with that worst case."""
    gen, out = generator(seed), Measures()
    worst, gap, status = pep_descent(APO_SCALE)
    beyond, beyond_gap, beyond_status = pep_descent(BEYOND_SCALE)
    forms, ratios, normalised, rows = [], [], [], []
    for m, n in shapes:
        for corner in ("", "zeros", "rank"):
            A, B, S = _factors(m, n, gen, corner)
            P = builder(A, B, S)
            forms.append(_min_quadratic_form(P, gen))
            lam_max = float(_symmetric_eigh(P)[0].abs().max())  # λ_max(P̂) = ‖P̂‖₂ for a PSD P̂
            problems = [_quadratic(m, n, gen), _tight(m, n, P, gen)]
            problems += [_softmax(m, n, gen)] if m > 1 else []
            for J in problems:
                decrease, g = library_step(J, at_phi(builder, A, B, S, scale), 1 / (J.L * lam_max))
                form = float(g @ (P @ g))
                ratios.append(decrease / (claimed(APO_SCALE) * APO_SCALE / (J.L * lam_max) * form))
                normalised.append(-decrease * J.L * lam_max / form)  # (J₁ − J₀)·Lλ_max/gᵀP̂g
                rows.append({"shape": [m, n], "corner": corner or "random", "J": J.name,
                             "decrease/bound": ratios[-1], "(J1 - J0)·Lλ_max/gᵀP̂g": normalised[-1]})
    out.at_least("min gᵀP̂g/(‖P̂‖‖g‖²)", float(torch.tensor(forms).min()), -E_ATOL)
    out.at_least("min decrease/(claimed factor·α·gᵀP̂g)", float(torch.tensor(ratios).min()), 1 - E_RTOL)
    out.at_least("PEPit worst-case decrease − claimed (c = 0.9)", -worst - claimed(APO_SCALE) * APO_SCALE,
                 -PEP_TOL)
    out.at_most("max sampled (J₁ − J₀)·Lλ_max/gᵀP̂g − PEPit worst case", max(normalised) - worst, PEP_TOL)
    out.add("PEPit worst (J₁ − J₀)·Lλ_max/gᵀP̂g at c = 2.1 (an increase)", beyond, ">", PEP_TOL)
    out.equal("PEPit solves not 'optimal'", (status != "optimal") + (beyond_status != "optimal"), 0)
    max_gap = max(abs(gap), abs(beyond_gap))
    out.at_most("max |PEPit duality gap|", max_gap, PEP_TOL / 1000)
    out.details.update(steps=rows, solver=SOLVER, solver_tolerance=SOLVER_TOL, comparison_tolerance=PEP_TOL,
                       pep_worst=worst, pep_worst_beyond=beyond, max_duality_gap=max_gap)
    return out.outcome()
