"""PSGD (Li 2019) theory checks on fitting Q on its group and on the Kronecker preconditioner: PSGD-9
(fitting converges to the optimal P, Eq. 8, noiseless and noisy), PSGD-10 (Kronecker fitting), PSGD-12
(Kronecker PSGD is SGD in transformed coordinates, Eqs. 23–24 and 3), PSGD-14 (the preconditioned
embedding gradient keeps its sparsity, App. A) and PSGD-16 (the Fisher-type Kronecker optimum, §6.3).

Every fit is the library's, run as a user runs it (`library_fit`): precondalg's `Preconditioned`
optimizer with a family (`triangular_gram`, `kronecker_gram`) on a placement, a criterion (`Newton` on a
quadratic loss whose Hessian is the drawn H, through its closure; `Fisher` on gradients set in ``.grad``)
and the `LieGroup` fitter (or `ClosedForm`), v drawn from the optimizer's own generator, and P read from
the optimizer's state.  PSGD-12 and PSGD-14 are about the parameter update, so they run the optimizer with
a fixed Q (it never fits: ``update_probability=0``) or a fitted one.  The references are independent of
the library: targets (|H|⁻¹, (H² + E[E²])^{-1/2}) by `eigh` of the dense H, PSGD-16's C^{-1/2} by scipy.
Mutants substitute a wrong library piece (a criterion, fitter, placement or Lie projection), never the
reference.

Vectorisation is row-major: ``pa.Kronecker(A, B) @ vec(G) = vec(A G Bᵀ)``.  PSGD's Q = Q₂ ⊗ Q₁ of the
paper (column-major vec, Q₁ on the rows of Θ, Q₂ on its columns) is ``pa.Kronecker(Q₁, Q₂)`` here, and
P = QᵀQ = ``pa.gram(pa.Kronecker(Q₁, Q₂))`` acts as G ↦ Q₁ᵀQ₁ G Q₂ᵀQ₂ (Eq. 23).

Speed.  Each fitting step places k = `PROBES` probes side by side as k columns (the criterion summed over
them, as the engine does for a placed gradient with several columns), which divides the variance of the
relative-gradient estimate by k: the parameter is a stack of k copies of the weight, (k, n) placed by
`InputSide` (PSGD-9) or (k, rows, columns) placed by `Probed` (each copy by the library's `TwoSided`).
100–150 steps with μ₀ decaying from 0.2 or 0.3 then replace the paper code's 10³–2·10⁴ single-probe steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence

import scipy.linalg
import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.families import Family, kronecker_gram, scan_gram, scaw_gram, triangular_gram
from precondalg.fitters import ClosedForm, Fitter, LieGroup
from precondalg.objectives import Fisher, Newton
from precondalg.objectives.base import Objective
from precondalg.optim import Preconditioned
from precondalg.placement import InputSide, Placement, TwoSided
from theory_checks._numerics import E_RTOL, E_TOL, generator, rel_err
from theory_checks.psgd import (
    NO_RULES,
    TRIL_RULES,
    FisherWithoutDamping,
    InverseNotTransposed,
    NewtonWithGradient,
    Rule,
    UnitNormalizerLieGroup,
    diag_kind,
    eq25_matrix,
    lie_rules,
    normalization_kind,
    triu_kind,
)
from theory_checks.psgd_criteria import (
    haar,
    matrix_function,
    random_symmetric,
    scipy_inverse_sqrt,
    spd,
    sym_indefinite,
)
from theory_checks.registry import Measures, Outcome, check

Schedule = tuple[tuple[float, int], ...]
"""Phases (μ₀, steps) of a fit: μ₀ decays phase by phase."""
FitterOf = Callable[[float], Fitter]
Step = Callable[[Preconditioned], None]

PROBES = 1024
"""Probe vectors v per fitting step (placed side by side as k columns)."""
FIT_SCHEDULE: Schedule = ((0.3, 60), (0.1, 40), (0.03, 25), (0.01, 15), (0.003, 10))
"""PSGD-9, PSGD-10(a) and PSGD-16: 150 steps, μ₀ = 0.3, 0.1, 0.03, 0.01, 0.003 (60 steps at 0.3 reach the
optimum from Q₀ = I for |H| of condition number ~10²; the later ones average the noise out)."""
SPREAD_PROBES = 256
SPREAD_SCHEDULE: Schedule = ((0.2, 50), (0.05, 50))
"""PSGD-10(b): 100 steps of 256 probes, μ₀ = 0.2 then 0.05 (the setting its bound is calibrated on)."""
NEWTON = Newton()
FISHER = Fisher()
"""precondalg's criteria (Fisher with λ = 0, as PSGD-12 and PSGD-14 use it)."""
TRIANGULAR = triangular_gram()
KRONECKER_TRIANGULAR = kronecker_gram(factor="triangular")
TWO_SIDED = TwoSided()
"""precondalg's triangular Q (P = QᵀQ), Kronecker Q₁ ⊗ Q₂ of triangular factors, and two-sided placement."""


def lie_group(mu: float) -> Fitter:
    """precondalg's `LieGroup` fitter with normalised step μ₀ = mu (max-abs normaliser)."""
    return LieGroup(lr=mu)


def view_matrix(placement: Placement, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense (n, n) matrix of θ ↦ placement.view([θ]) (a single placed column) on the parameter's
    row-major coordinates, read off the basis."""
    n = math.prod(shape)
    return torch.cat([placement.view([e]) for e in torch.eye(n).reshape(n, *shape)], 1)


def _probe_maps(inner: Placement, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (n, n) matrices of `inner`'s view of one weight of `shape` and of its unview of one column,
    read off the basis (both linear maps; n calls each, small beside an optimizer step)."""
    n = math.prod(shape)
    unview = torch.stack([inner.unview(e[:, None], [shape])[0].reshape(-1) for e in torch.eye(n)], 1)
    return view_matrix(inner, shape), unview


@dataclasses.dataclass(frozen=True)
class Probed(Placement):
    """k probes of one weight as k placed columns: a parameter (k, *shape), the stack of k copies of a
    weight of `shape` that share one block, copy j placed by the library placement `inner` (one column
    each) as column j; dims and the check of P are `inner`'s for the weight.  It is what `InputSide`
    does for a vector weight, for a placement of several factors (`TwoSided`)."""

    inner: Placement = TWO_SIDED

    def dims(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        return self.inner.dims([tuple(shapes[0][1:])])

    def check(self, P: pa.Structure, dims: tuple[int, ...]) -> None:
        self.inner.check(P, dims)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """(k, *shape) gradient → (n, k): column j is ``inner.view([G[j]])``."""
        G = grads[0]
        return _probe_maps(self.inner, tuple(G.shape[1:]))[0] @ G.reshape(G.shape[0], -1).mT

    def unview(self, X: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """(n, k) → [(k, *shape)]: copy j is ``inner.unview(X[:, j:j+1], [shape])``."""
        shape = tuple(shapes[0])
        return [(_probe_maps(self.inner, shape[1:])[1] @ X).mT.reshape(shape)]


def parameter_matrix(P: pa.Structure, placement: Placement, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense matrix of θ ↦ unview(P @ view(θ)) in the parameter's row-major coordinates: the
    preconditioner as the optimizer applies it to a gradient of this shape."""
    n = math.prod(shape)
    basis = torch.eye(n).reshape(n, *shape)
    return torch.stack([placement.unview(P @ placement.view([e]), [shape])[0].reshape(-1) for e in basis], 1)


def initial_phi(family: Family, placement: Placement, shape: tuple[int, ...]) -> pa.Structure:
    """The family's φ₀ for a parameter of this shape (as `Preconditioned` builds it)."""
    return family.init(placement.dims([shape]), torch.empty(()), None)


def phi_of(opt: Preconditioned, W: torch.Tensor, family: Family, placement: Placement) -> pa.Structure:
    """The optimizer's current φ for its parameter W: its state's leaves in φ₀'s tree structure."""
    spec = pytree.tree_structure(initial_phi(family, placement, tuple(W.shape)))
    return pytree.tree_unflatten(list(opt.state[W]["preconditioner"]["phi"]), spec)


def library_fit(
    W: torch.Tensor,
    family: Family,
    placement: Placement,
    objective: Objective,
    fitter: FitterOf,
    schedule: Schedule,
    step: Step,
    seed: int,
    rules: Mapping[type, Rule] = NO_RULES,
) -> pa.Structure:
    """PSGD's fit as a user runs it: per phase (μ₀, steps) of `schedule`, precondalg's `Preconditioned`
    on W (lr 0, so that only φ moves; `family` on `placement`, `objective`, ``fitter(μ₀)``, base SGD,
    generator seeded by `seed`), resumed from the previous phase's ``state_dict()`` (φ and the generator
    of v; the fitter's learning rate is the constructor's), then `steps` calls of ``step(opt)``.  `rules`
    replace the library's Lie projections for the run (`lie_rules`; none).  Returns the fitted φ, read
    from the optimizer's state."""
    state = None
    with lie_rules(rules):
        for mu, steps in schedule:
            opt = Preconditioned(
                [W], lr=0.0, structure=family, placement=placement, objective=objective, fitter=fitter(mu),
                seed=seed,
            )
            if state is not None:
                opt.load_state_dict(state)
            for _ in range(steps):
                step(opt)
            state = opt.state_dict()
    return phi_of(opt, W, family, placement)


def quadratic_step(H: torch.Tensor, noise: Sequence[torch.Tensor], gen: torch.Generator) -> Step:
    """One step of the optimizer on the loss ½ Σ_j θ_jᵀ Ĥ_j θ_j of a stack θ (k, …) of k copies, θ_j
    flattened row-major: Ĥ_j = H + Σ_m ξ_jm B_m with ξ_jm ~ N(0, 1) drawn from `gen` at each evaluation
    (`noise` = the B_m; none: Ĥ_j = H).  The closure returns the loss (PSGD's convention); `Newton`'s
    Hessian-vector product of copy j is then Ĥ_j v_j."""

    def step(opt: Preconditioned) -> None:
        (W,) = opt.param_groups[0]["params"]

        def loss() -> torch.Tensor:
            X = W.reshape(W.shape[0], -1)
            XH = X @ H
            if noise:
                xi = torch.randn(X.shape[0], len(noise), generator=gen)
                XH = XH + sum(xi[:, m : m + 1] * (X @ B) for m, B in enumerate(noise))
            return 0.5 * (XH * X).sum()

        opt.step(loss)

    return step


def eig_abs(P: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """|eig(PH)| (P symmetric positive definite, H symmetric: the eigenvalues are real)."""
    return torch.linalg.eigvals(P @ H).abs()


def fro_rel(A: torch.Tensor, B: torch.Tensor) -> float:
    """‖A − B‖_F / ‖B‖_F."""
    return float(torch.linalg.matrix_norm(A - B) / torch.linalg.matrix_norm(B))


def q_qt(Q: pa.Structure) -> pa.Structure:
    """Mutant form: P = QQᵀ instead of QᵀQ."""
    return pa.gram(Q.T)


@dataclasses.dataclass(frozen=True)
class ColumnMajor(TwoSided):
    """Mutant placement: `TwoSided` with the paper's column-major vec(G) (columns stacked) while the
    structure stays the row-major ``pa.Kronecker(A, B)``: the vec convention swapped."""

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return grads[0].mT.reshape(-1, 1)

    def unview(self, X: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        rows, cols = shapes[0]
        return [X.reshape(cols, rows).mT]


def kron_shape(gen: torch.Generator) -> tuple[int, int]:
    """A (rows, columns) shape with rows ≠ columns, both in [2, 5] (the test strategy `kron_shape()` without
    1, which leaves a side with nothing to fit, and without square shapes, on which a swapped vec
    convention fits as well)."""
    rows = int(torch.randint(2, 6, (), generator=gen))
    cols = int(torch.randint(2, 5, (), generator=gen))
    return rows, cols + (cols >= rows)


# ----- PSGD-9: fitting a triangular Q converges to the optimum of Eq. 8 -----

PSGD9_DRAWS = 5
"""PSGD-9's drawn problems: the even-numbered ones noiseless, the odd-numbered ones noisy."""
PSGD9_NOISE_TERMS = 2
PSGD9_NOISE_SCALE = 0.5
"""Ĥ = H + Σ_m ξ_m B_m with ξ_m ~ N(0, 1) per probe and B_m = 0.5·mean|λ(H)|·(random symmetric, ‖·‖₂ = 1)."""
_MUTANT_DRAWS = {"draws": 1}
"""The run of the mutants that blow up at once (a normaliser of 1, a fit to g = 0): the first problem;
the others run every problem."""


def newton_optimum(H: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The Newton-type optimum with E[vvᵀ] = I: (H² + E[E²])^{-1/2}; |H|⁻¹ without noise."""
    return matrix_function(H @ H + noise, torch.rsqrt)


def psgd9_problem(gen: torch.Generator, noisy: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n ∈ [2, 6], H (`sym_indefinite`) and the noise directions B_m (none when not noisy)."""
    n = int(torch.randint(2, 7, (), generator=gen))
    H = sym_indefinite(n, gen)
    scale = PSGD9_NOISE_SCALE * float(torch.linalg.eigvalsh(H).abs().mean())
    terms = PSGD9_NOISE_TERMS if noisy else 0
    return H, [scale * random_symmetric(n, gen) for _ in range(terms)]


@check(
    id="PSGD-9",
    tier="dynamics",
    paper="PSGD Eqs. 8, 10, 18, 20 (Li 2019)",
    statement=(
        "Convergence: PSGD's fit of a triangular Q by the Preconditioned optimizer (triangular_gram on "
        "InputSide, Newton criterion on a quadratic loss, LieGroup, μ₀ 0.3 → 0.003 over 150 steps of 1024 "
        "probes) on drawn indefinite H (n ∈ [2, 6]) reaches |eig(PH)| = 1 and P = |H|⁻¹; with Hessian "
        "noise Ĥ = H + E it reaches (H² + E[E²])^{-1/2}; Q stays upper triangular."
    ),
    tolerance=(
        "D: max||eig(PH)| − 1| <= 0.05 and rel. error <= 0.05 (noiseless, 3 draws), rel. error <= 0.1 "
        "(noisy, 2 draws), the worst draw; exact: off-pattern == 0"
    ),
    provenance=("PAPER", "CODE", "DERIVED"),
    mutants={
        "triangular Lie projection tril(E), not triu(E)": {"rules": TRIL_RULES},
        "Lie step's normaliser ‖R‖ replaced by 1": {"fitter": UnitNormalizerLieGroup, **_MUTANT_DRAWS},
        "relative gradient with b = Q⁻¹v (not Q⁻ᵀv)": {"objective": InverseNotTransposed()},
        "Newton fits with g where Hv belongs": {"objective": NewtonWithGradient(), **_MUTANT_DRAWS},
    },
)
def psgd_9(
    family: Family = TRIANGULAR,
    objective: Objective = NEWTON,
    fitter: FitterOf = lie_group,
    rules: Mapping[type, Rule] = NO_RULES,
    schedule: Schedule = FIT_SCHEDULE,
    draws: int = PSGD9_DRAWS,
    seed: int = 9,
) -> Outcome:
    """PSGD-9 (Li 2019, Eqs. 8, 10, 18, 20): iterating Eq. 20 with sampled v converges to the optimum.

    The Newton criterion c(P) = E[hᵀPh + vᵀP⁻¹v], h = Ĥv, v ~ N(0, I), is minimised over SPD P by
    P E[hhᵀ] P = E[vvᵀ] = I (Eq. 8).  Noiseless, E[hhᵀ] = H², so P = (H²)^{-1/2} = |H|⁻¹ and every
    eigenvalue of PH is ±1 (the paper code's self-test stops at max||eig(PH)| − 1| < 0.1).  With
    Ĥ = H + E, E symmetric, zero-mean and independent of v, E[hhᵀ] = H² + E[E²] and
    P = (H² + E[E²])^{-1/2} [DERIVED].  Here E = Σ_m ξ_m B_m with ξ_m ~ N(0, 1) drawn per probe, so
    E[E²] = Σ_m B_m² exactly; the details report how far that optimum is from |H|⁻¹.

    The fit is the library's (`library_fit`): `Preconditioned` with `family` (Q₀ = I) on a parameter
    θ (1024, n) placed by `InputSide` (its 1024 rows are the probes: one P shared by all), the `objective`
    (`Newton`, h = Ĥv by autograd through the closure of the loss ½ Σ_j θ_jᵀĤ_jθ_j, θ = 0 held there by
    lr 0) and ``fitter(μ₀)`` (`LieGroup`), 150 steps with μ₀ = 0.3, 0.1, 0.03, 0.01, 0.003, in place of
    2·10⁴ single-probe steps at μ₀ = 0.01 then 0.002 (the same fixed point; on 8 other seeds the worst
    errors were 1.0% noiseless and 1.4% noisy).  P = QᵀQ is the family's
    form of the optimizer's φ; the reference is `eigh` of the dense H² + Σ B_m².  `draws` problems
    (n ∈ [2, 6], `sym_indefinite` H), the odd-numbered ones noisy.
    """
    gen, out, rows = generator(seed), Measures(), []
    eig_dev, err_clean, err_noisy, off = 0.0, 0.0, 0.0, 0.0
    for i in range(draws):
        noisy = i % 2 == 1
        H, noise = psgd9_problem(gen, noisy)
        n = H.shape[0]
        W = torch.zeros(PROBES, n, requires_grad=True)
        step = quadratic_step(H, noise, gen)
        opt_seed = int(torch.randint(2**31, (), generator=gen))
        Q = library_fit(W, family, InputSide(), objective, fitter, schedule, step, opt_seed, rules)
        P = family.form(Q).to_dense()
        target = newton_optimum(H, sum((B @ B for B in noise), torch.zeros(n, n)))
        err = fro_rel(P, target)
        off = max(off, max(float(leaf.tril(-1).abs().max()) for leaf in pytree.tree_leaves(Q)))
        dev = float((eig_abs(P, H) - 1).abs().max()) if bool(torch.isfinite(P).all()) else math.inf
        row = {"n": n, "noisy": noisy, "rel. error": err, "max||eig(PH)| − 1|": dev}
        if noisy:
            err_noisy = max(err_noisy, err)
            row["rel. distance of the target from |H|⁻¹"] = fro_rel(target, newton_optimum(H, 0 * H))
        else:
            err_clean, eig_dev = max(err_clean, err), max(eig_dev, dev)
        rows.append(row)
    out.at_most("noiseless: max over draws of max||eig(PH)| − 1|", eig_dev, 0.05)
    out.at_most("noiseless: max rel. error ‖P − |H|⁻¹‖_F/‖|H|⁻¹‖_F", err_clean, 0.05)
    if draws > 1:
        out.at_most("noisy: max rel. error ‖P − (H² + E[E²])^{-1/2}‖_F/‖·‖_F", err_noisy, 0.1)
    out.equal("max |strictly lower entry| of the fitted Q (its leaf)", off, 0)
    out.details["problems"] = rows
    out.details["schedule (μ₀, steps)"] = [list(p) for p in schedule]
    out.details["probes per step"] = PROBES
    return out.outcome()


# ----- PSGD-10: Kronecker group fitting -----

PSGD10_DECOMPOSABLE = 2
"""PSGD-10(a): drawn (rows, columns) shapes (`kron_shape`) with decomposable Hessians H₁ ⊗ H₂."""
PSGD10_SPREAD_DRAWS = 5
PSGD10_SPREAD_SHAPE = (2, 3)
"""PSGD-10(b): five arbitrary symmetric 6×6 Hessians Z + Zᵀ, Z Gaussian (the paper code's snippet)."""
PSGD10_SPREAD_BOUND = 0.95
"""PSGD-10(b)'s bound on the median spread ratio, calibrated on the correct implementation (a first guess
of 0.7 is below what even the paper code's own setting reaches; see `psgd_10`)."""
_DECOMPOSABLE_ONLY = {"decomposable": 1, "spread": 0}
"""The mutants' run: one decomposable shape (non-square, with two non-diagonal |Hᵢ|⁻¹) and no spread
draws."""


def psgd10_hessian(gen: torch.Generator, shape: tuple[int, int], decomposable: bool) -> torch.Tensor:
    """The Hessian on the row-major vec of a (rows × columns) parameter: H₁ ⊗ H₂ (`torch.kron`, H₁ on
    the rows, both `sym_indefinite`) when decomposable, else Z + Zᵀ with Z Gaussian."""
    rows, cols = shape
    if decomposable:
        return torch.kron(sym_indefinite(rows, gen), sym_indefinite(cols, gen))
    Z = torch.randn(rows * cols, rows * cols, generator=gen)
    return Z + Z.mT


def kronecker_fit(
    H: torch.Tensor,
    shape: tuple[int, int],
    family: Family,
    placement: Placement,
    objective: Objective,
    fitter: FitterOf,
    schedule: Schedule,
    probes: int,
    rules: Mapping[type, Rule],
    gen: torch.Generator,
) -> torch.Tensor:
    """The library's fit (`library_fit`) of φ = Q₁ ⊗ Q₂ for a (rows × columns) weight, `probes` per
    step placed by `Probed` (copy by copy by `placement`), `objective` on the quadratic loss with Hessian
    H; returns P as the optimizer applies it to one weight (`parameter_matrix`, through `placement`)."""
    W = torch.zeros(probes, *shape, requires_grad=True)
    opt_seed = int(torch.randint(2**31, (), generator=gen))
    step = quadratic_step(H, (), gen)
    Q = library_fit(W, family, Probed(placement), objective, fitter, schedule, step, opt_seed, rules)
    return parameter_matrix(family.form(Q), placement, shape)


def log_spread(P: torch.Tensor, H: torch.Tensor) -> float:
    """The standard deviation of log|eig(PH)|."""
    return float(eig_abs(P, H).log().std())


@check(
    id="PSGD-10",
    tier="dynamics",
    paper="PSGD §5.2, Eqs. 20, 23 (Li 2019)",
    statement=(
        "Convergence: PSGD's Kronecker fit by the Preconditioned optimizer (kronecker_gram('triangular') "
        "with TwoSided, Newton on a quadratic loss, LieGroup) (a) reaches |eig(PH)| = 1 and P = |H|⁻¹ for "
        "a decomposable H = H₁ ⊗ H₂ on 2 drawn non-square shapes (sides 2–5); (b) for arbitrary symmetric "
        "6×6 Hessians Z + Zᵀ reduces the spread std log|eig(PH)| (median ratio to P₀ = I over 5 draws, "
        "bound calibrated)."
    ),
    tolerance=(
        "D: (a) max||eig(PH)| − 1| <= 0.1 and rel. error <= 0.1, the worst of 2 shapes; (b) median "
        f"spread ratio <= {PSGD10_SPREAD_BOUND} (calibrated)"
    ),
    provenance=("CODE", "DERIVED"),
    mutants={
        "vec convention swapped (column-major vec, row-major Kronecker)": {
            "placement": ColumnMajor(),
            **_DECOMPOSABLE_ONLY,
        },
        "triangular Lie projection tril(E), not triu(E)": {"rules": TRIL_RULES, **_DECOMPOSABLE_ONLY},
    },
)
def psgd_10(
    family: Family = KRONECKER_TRIANGULAR,
    placement: Placement = TWO_SIDED,
    objective: Objective = NEWTON,
    fitter: FitterOf = lie_group,
    rules: Mapping[type, Rule] = NO_RULES,
    decomposable: int = PSGD10_DECOMPOSABLE,
    spread: int = PSGD10_SPREAD_DRAWS,
    seed: int = 10,
) -> Outcome:
    """PSGD-10 (Li 2019, §5.2; the paper code's verification snippets of its Kronecker update).

    (a) If H = H₁ ⊗ H₂ (row-major, H₁ on the rows of the parameter; the paper's column-major H₂ ⊗ H₁),
    then |H|⁻¹ = |H₁|⁻¹ ⊗ |H₂|⁻¹ lies in the Kronecker group, so the optimum of the Newton criterion
    over all SPD P (Eq. 8) is reached inside the group: |eig(PH)| → 1 and P → |H|⁻¹.  The shapes are
    not square, so a swapped vec convention cannot fit (the placed Hessian is then Π(H₁ ⊗ H₂)Πᵀ =
    H₂ ⊗ H₁, which no pa.Kronecker(Q₁ (rows), Q₂ (columns)) matches).

    (b) For an arbitrary symmetric H the group cannot reach |H|⁻¹; the paper code only prints how much
    the spread std log|eig(PH)| shrinks.  Calibration (once, on this implementation): the paper code's
    own setting (2×3, H = Z + Zᵀ, one probe per step, μ₀ = 0.01, 10³ steps) gives a median ratio of 0.80
    over 20 seeds (0.53–0.95), and the schedule used here (100 steps, μ₀ = 0.2 then 0.05, 256 probes)
    0.81 on the same seeds (0.54–0.96); over 80 seeds it gives a median of 0.85 (0.53–0.99, never ≥ 1),
    and the median of 5 random seeds exceeds 0.93 in 5% and 0.95 in 1% of draws.  A bound of 0.7 would
    fail on the correct implementation, so the bound is 0.95 on the median of the 5 draws; P₀ = I gives 1.

    The fits are the library's (`kronecker_fit`: `Preconditioned` with `family` on probes placed by
    `Probed(placement)`, `objective` on the quadratic loss, ``fitter(μ₀)``; (a) 150 steps of 1024 probes
    with μ₀ 0.3 → 0.003 in place of the snippet's ≤ 2·10⁴ single-probe steps; on 8 other seeds, shapes
    up to 5×4, the worst rel. error was 2.4%).  P is read as the optimizer
    applies it, θ ↦ unview(P @ view(θ)), in row-major parameter coordinates; the reference |H|⁻¹ is
    `eigh` of the dense H.  The mutants run one (a) shape and no (b) draw.
    """
    gen, out, rows = generator(seed), Measures(), []
    eig_dev, err = 0.0, 0.0
    fit = functools.partial(
        kronecker_fit, family=family, placement=placement, objective=objective, fitter=fitter, rules=rules,
        gen=gen,
    )
    for _ in range(decomposable):
        shape = kron_shape(gen)
        H = psgd10_hessian(gen, shape, decomposable=True)
        P = fit(H, shape, schedule=FIT_SCHEDULE, probes=PROBES)
        dev, e = float((eig_abs(P, H) - 1).abs().max()), fro_rel(P, newton_optimum(H, 0 * H))
        eig_dev, err = max(eig_dev, dev), max(err, e)
        rows.append({"shape": list(shape), "max||eig(PH)| − 1|": dev, "rel. error": e})
    out.at_most("(a) max over shapes of max||eig(PH)| − 1|", eig_dev, 0.1)
    out.at_most("(a) max rel. error ‖P − |H|⁻¹‖_F/‖|H|⁻¹‖_F", err, 0.1)
    out.details["(a) decomposable"] = rows
    out.details["(a) probes per step"] = PROBES
    if spread:
        shape = PSGD10_SPREAD_SHAPE
        P0 = parameter_matrix(family.form(initial_phi(family, placement, shape)), placement, shape)
        ratios = []
        for _ in range(spread):
            H = psgd10_hessian(gen, shape, decomposable=False)
            P = fit(H, shape, schedule=SPREAD_SCHEDULE, probes=SPREAD_PROBES)
            ratios.append(log_spread(P, H) / log_spread(P0, H))
        out.at_most(
            f"(b) median over {spread} draws of std log|eig(PH)| / std log|eig(P₀H)|",
            statistics.median(ratios),
            PSGD10_SPREAD_BOUND,
        )
        out.details["(b) spread ratios"] = ratios
    return out.outcome()


# ----- PSGD-16: the Fisher-type Kronecker optimum -----

PSGD16_DRAWS = 3
"""PSGD-16's drawn problems: the first undamped (λ = 0, the paper's statement), the others damped."""
PSGD16_BETA = 0.9
"""The `ClosedForm` fitter's averaging β (an exponential average read bias-corrected)."""


def psgd16_problem(gen: torch.Generator, damped: bool) -> tuple[tuple[int, int], torch.Tensor, float]:
    """A drawn (rows, columns) shape (`kron_shape`), C = A ⊗ B with A (rows) and B (columns) `spd`
    (eigenvalues log-uniform in [0.1, 10]), and λ: 0, or λ² = f·λ_min(C) with f ~ U(0.5, 0.9) when
    damped."""
    shape = kron_shape(gen)
    C = torch.kron(spd(shape[0], gen), spd(shape[1], gen))
    f = 0.5 + 0.4 * float(torch.rand((), generator=gen))
    return shape, C, math.sqrt(f * float(torch.linalg.eigvalsh(C)[0])) if damped else 0.0


def lie_group_whitening(
    shape: tuple[int, int],
    C: torch.Tensor,
    lam: float,
    family: Family,
    placement: Placement,
    criterion: Callable[[float], Objective],
    gen: torch.Generator,
) -> torch.Tensor:
    """The library's stochastic fit (`library_fit`, `LieGroup`, `FIT_SCHEDULE`) of the ``criterion(λ)``
    on 1024 probes per step placed by `Probed(placement)`: gradients g ~ N(0, C − λ²I) (so that the
    damped statistics E[hhᵀ] = E[ggᵀ] + λ²I are C) set in ``.grad`` before each step.  Returns P as the
    optimizer applies it to one weight."""
    n = math.prod(shape)
    L = torch.linalg.cholesky(C - lam**2 * torch.eye(n))
    W = torch.zeros(PROBES, *shape, requires_grad=True)

    def step(opt: Preconditioned) -> None:
        W.grad = (L @ torch.randn(n, PROBES, generator=gen)).mT.reshape(W.shape)
        opt.step()

    opt_seed = int(torch.randint(2**31, (), generator=gen))
    Q = library_fit(W, family, Probed(placement), criterion(lam), lie_group, FIT_SCHEDULE, step, opt_seed)
    return parameter_matrix(family.form(Q), placement, shape)


def closed_form_whitening(
    shape: tuple[int, int],
    C: torch.Tensor,
    lam: float,
    family: Family,
    placement: Placement,
    criterion: Callable[[float], Objective],
    gen: torch.Generator,
) -> torch.Tensor:
    """The library's closed-form fit: `Preconditioned` on one weight of `shape` (`family` on
    `placement`, ``criterion(λ)``, ``ClosedForm(beta=0.9)``) over n = rows·columns steps whose
    gradients have exactly the statistics C − λ²I under the fitter's bias-corrected exponential average
    (weights w_t = (1 − β)β^{n−t}/(1 − βⁿ)): g_t = L o_t/√w_t, L Lᵀ = C − λ²I, o_t the columns of a Haar
    orthogonal matrix, so Σ_t w_t g_t g_tᵀ = C − λ²I.  Returns P as the optimizer applies it after the
    last step's refit."""
    n = math.prod(shape)
    L = torch.linalg.cholesky(C - lam**2 * torch.eye(n))
    O = haar(n, gen)
    beta = PSGD16_BETA
    weights = [(1 - beta) * beta ** (n - t) / (1 - beta**n) for t in range(1, n + 1)]
    W = torch.zeros(shape, requires_grad=True)
    opt = Preconditioned(
        [W], lr=0.0, structure=family, placement=placement, objective=criterion(lam),
        fitter=ClosedForm(beta=beta), seed=int(torch.randint(2**31, (), generator=gen)),
    )
    for t, w in enumerate(weights):
        W.grad = (L @ O[:, t] / math.sqrt(w)).reshape(shape)
        opt.step()
    return parameter_matrix(family.form(phi_of(opt, W, family, placement)), placement, shape)


@check(
    id="PSGD-16",
    paper="PSGD §6.3, Eqs. 11–13, 23 (Li 2019)",
    statement=(
        "Optimum: when the Fisher-type statistics are Kronecker, E[hhᵀ] = E[ggᵀ] + λ²I = A ⊗ B (λ = 0: "
        "E[ggᵀ] = A ⊗ B, the paper's case; λ > 0: E[ggᵀ] = A ⊗ B − λ²I), the Preconditioned optimizer's "
        "Kronecker fit (kronecker_gram('triangular') with TwoSided, Fisher(λ)) reaches P = (A ⊗ B)^{-1/2} "
        "= A^{-1/2} ⊗ B^{-1/2}, so P² is KFAC's (A ⊗ B)⁻¹: stochastically with LieGroup, exactly with "
        "ClosedForm on exact statistics (3 drawn shapes, sides 2–5, and SPD factors)."
    ),
    tolerance=(
        f"D: LieGroup rel. error of P <= 0.05 and of P² <= 0.1, the worst of 3 draws; {E_TOL} (ClosedForm)"
    ),
    provenance="DERIVED",
    mutants={
        "Fisher ignores λ (h = g)": {"criterion": FisherWithoutDamping, "draws": 2},
        "vec convention swapped (column-major vec, row-major Kronecker)": {
            "placement": ColumnMajor(),
            "draws": 1,
        },
    },
)
def psgd_16(
    family: Family = KRONECKER_TRIANGULAR,
    placement: Placement = TWO_SIDED,
    criterion: Callable[[float], Objective] = Fisher,
    draws: int = PSGD16_DRAWS,
    seed: int = 16,
) -> Outcome:
    """PSGD-16 (Li 2019, §6.3 "relationship to KFAC", formalised [DERIVED]).

    The Fisher-type criterion with h = g + λv, c_f(P) = E[hᵀPh + vᵀP⁻¹v] = tr(P E[hhᵀ] + P⁻¹) with
    E[hhᵀ] = E[ggᵀ] + λ²I (v independent of g), is minimised over SPD P by P = (E[hhᵀ])^{-1/2}
    (Eqs. 11–13).  If E[hhᵀ] = A ⊗ B exactly, that is A^{-1/2} ⊗ B^{-1/2}, which lies in the Kronecker
    group, so the group fit reaches it, and P² = (A ⊗ B)⁻¹ is KFAC's inverse (damped) Fisher.  The
    paper's case is λ = 0 with E[ggᵀ] = A ⊗ B; with λ > 0 the gradients here have E[ggᵀ] = A ⊗ B − λ²I
    (λ² a fraction 0.5–0.9 of λ_min(A ⊗ B)), so that λ must be counted to reach the optimum.  Row-major
    here: A acts on the rows of the (rows × columns) weight.

    Two library fits per draw: `lie_group_whitening` (`LieGroup`, 150 steps of 1024 probes with μ₀
    0.3 → 0.003) and `closed_form_whitening` (`ClosedForm`, the Fisher criterion's statistics with v
    integrated out, on one weight placed by `TwoSided` (one column per step) with gradients whose
    averaged statistics are exact, so its P is C^{-1/2} to rounding).  P is read as the
    optimizer applies it, in row-major parameter coordinates; the reference C^{-1/2} is scipy's
    (`scipy_inverse_sqrt`: the minimiser of tr(PC) + tr(P⁻¹), stationarity P C P = I).  `criterion`
    makes the objective for a λ (precondalg's ``Fisher(λ)``).
    """
    gen, out, rows = generator(seed), Measures(), []
    err, err_sq, err_closed = 0.0, 0.0, 0.0
    for i in range(draws):
        shape, C, lam = psgd16_problem(gen, damped=i > 0)
        target = scipy_inverse_sqrt(C)
        args = (shape, C, lam, family, placement, criterion, gen)
        P, P_closed = lie_group_whitening(*args), closed_form_whitening(*args)
        e, e_sq = fro_rel(P, target), fro_rel(P @ P, torch.from_numpy(scipy.linalg.inv(C.numpy())))
        e_closed = rel_err(P_closed, target)
        err, err_sq, err_closed = max(err, e), max(err_sq, e_sq), max(err_closed, e_closed)
        rows.append({"shape": list(shape), "λ": lam, "rel. error of P": e, "rel. error of P²": e_sq,
                     "ClosedForm rel. error": e_closed})
    out.at_most("LieGroup: max rel. error ‖P − (A⊗B)^{-1/2}‖_F/‖·‖_F", err, 0.05)
    out.at_most("LieGroup: max rel. error ‖P² − (A⊗B)⁻¹‖_F/‖·‖_F (KFAC's inverse)", err_sq, 0.1)
    out.at_most("ClosedForm: max rel. error of P vs (A⊗B)^{-1/2}", err_closed, E_RTOL)
    out.details["problems"] = rows
    out.details["probes per step"] = PROBES
    return out.outcome()


# ----- shared by PSGD-12 and PSGD-14: the optimizer with a given Q -----

FACTOR_KINDS = {pa.Triangular: triu_kind, pa.Diagonal: diag_kind, pa.Normalization: normalization_kind}
"""Random group elements of PSGD-11's kinds, per factor structure."""


def random_like(phi: pa.Structure, gen: torch.Generator) -> pa.Structure:
    """A random group element of φ's structure (a Kronecker of Triangular, Diagonal or Normalization
    factors): each factor drawn as in PSGD-11 (Diagonal entries positive, the others of either sign)."""
    factors = phi.factors if isinstance(phi, pa.Kronecker) else (phi,)
    drawn = [FACTOR_KINDS[type(f)](f.shape[0]).draw(gen) for f in factors]
    return pa.Kronecker(*drawn) if isinstance(phi, pa.Kronecker) else drawn[0]


def optimizer_with(
    W: torch.Tensor, family: Family, Q: pa.Structure, lr: float, fitter: Fitter, update_probability: float
) -> tuple[Preconditioned, Callable[[], pa.Structure]]:
    """precondalg's `Preconditioned` on W (TwoSided, `family`, Fisher λ = 0, `fitter`, base SGD) with φ
    set to Q in place of φ₀ after construction; and a function returning its current φ."""
    opt = Preconditioned(
        [W],
        lr=lr,
        structure=family,
        placement=TwoSided(),
        objective=FISHER,
        fitter=fitter,
        update_probability=update_probability,
    )
    leaves = opt.state[W]["preconditioner"]["phi"]
    spec = pytree.tree_structure(initial_phi(family, TwoSided(), tuple(W.shape)))
    with torch.no_grad():
        for leaf, value in zip(leaves, pytree.tree_leaves(Q), strict=True):
            leaf.copy_(value)
    return opt, lambda: pytree.tree_unflatten(leaves, spec)


# ----- PSGD-12: Kronecker PSGD is SGD in transformed coordinates -----

PSGD12_FAMILIES = {
    "triu": kronecker_gram(factor="triangular"),
    "diag": kronecker_gram(factor="diagonal"),
    "scan": scan_gram(),
    "scaw": scaw_gram(),
}
"""The Kronecker groups of PSGD-12: Q₁ ⊗ Q₂ triangular ⊗ triangular, diagonal ⊗ diagonal, SCAN
(diagonal ⊗ diagonal-plus-last-column) and SCAW (diagonal ⊗ triangular)."""
PSGD12_STEPS, PSGD12_SAMPLES, PSGD12_BATCH = 100, 64, 16

Transformed = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def transformed_loss(
    theta_p: torch.Tensor, Q1: torch.Tensor, Q2: torch.Tensor, X: torch.Tensor, T: torch.Tensor
) -> torch.Tensor:
    """The loss of the transformed model of Eq. 24: x′ = Q₂x, y′ = Θ′x′, evaluated on the ORIGINAL output
    y = Q₁ᵀy′ (½ mean ‖y − t‖² over the batch columns)."""
    y = Q1.mT @ (theta_p @ (Q2 @ X))
    return 0.5 * ((y - T) ** 2).sum(0).mean()


def _naive_transformed_loss(
    theta_p: torch.Tensor, Q1: torch.Tensor, Q2: torch.Tensor, X: torch.Tensor, T: torch.Tensor
) -> torch.Tensor:
    """Mutant: the squared error taken in y′-space against transformed targets Q₁⁻ᵀt."""
    y_p = theta_p @ (Q2 @ X)
    return 0.5 * ((y_p - torch.linalg.solve(Q1.mT, T)) ** 2).sum(0).mean()


def psgd12_data(
    shape: tuple[int, int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares data for Θ of `shape` (outputs × inputs): features X (d × N), d = inputs − 1, with
    shifted means and spreads, X augmented by a row of ones, targets T = Θ* X_aug + noise, and Θ₀."""
    out, inputs = shape
    d, N = inputs - 1, PSGD12_SAMPLES
    loc, spread = 3 * torch.randn(d, 1, generator=gen), 2 * torch.rand(d, 1, generator=gen)
    X = loc + spread * torch.randn(d, N, generator=gen)
    Xa = torch.cat([X, torch.ones(1, N)])
    T = torch.randn(out, inputs, generator=gen) @ Xa + 0.1 * torch.randn(out, N, generator=gen)
    return X, Xa, T, torch.randn(out, inputs, generator=gen)


def psgd12_shape(gen: torch.Generator) -> tuple[int, int]:
    """(outputs, inputs) from the test strategy `kron_shape()`: outputs in [1, 5], inputs in [2, 5] (the last
    input is the constant 1, so at least one feature)."""
    return int(torch.randint(1, 6, (), generator=gen)), int(torch.randint(2, 6, (), generator=gen))


def psgd12_run(
    family: Family,
    Q: pa.Structure,
    Xa: torch.Tensor,
    T: torch.Tensor,
    theta0: torch.Tensor,
    Q1: torch.Tensor,
    Q2: torch.Tensor,
    loss_p: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
    lr: float,
) -> tuple[float, float, float]:
    """Run the optimizer (fixed Q: it never fits) on Θ and plain SGD on Θ′ = Q₁⁻ᵀΘ₀Q₂⁻¹ over the same
    minibatches; returns max_k ‖Θ_k − Q₁ᵀΘ′_kQ₂‖_max/‖Θ_k‖_max, the largest change of φ's leaves and how
    far Θ moved, ‖Θ_K − Θ₀‖_max/‖Θ₀‖_max."""
    W = theta0.clone().requires_grad_(True)
    opt, phi = optimizer_with(W, family, Q, lr, LieGroup(lr=0.0), update_probability=0.0)
    theta_p = torch.linalg.solve(Q1.mT, torch.linalg.solve(Q2.mT, theta0.mT).mT).requires_grad_(True)
    sgd = torch.optim.SGD([theta_p], lr=lr)
    worst = 0.0
    for idx in batches:
        opt.step(lambda idx=idx: 0.5 * ((W @ Xa[:, idx] - T[:, idx]) ** 2).sum(0).mean())
        sgd.zero_grad()
        loss_p(theta_p, idx).backward()
        sgd.step()
        with torch.no_grad():
            worst = max(worst, rel_err(Q1.mT @ theta_p @ Q2, W))
    drift = max(float((a - b).abs().max()) for a, b in zip(pytree.tree_leaves(phi()), pytree.tree_leaves(Q)))
    moved = float((W.detach() - theta0).abs().max() / theta0.abs().max())
    return worst, drift, moved


@check(
    id="PSGD-12",
    paper="PSGD Eqs. 3, 22–25 (Li 2019)",
    statement=(
        "Identity: 100 steps of the Preconditioned optimizer (TwoSided, fixed Q = Q₁ ⊗ Q₂ of the "
        "triangular, diagonal, SCAN and SCAW groups, base SGD) on least squares (Θ of a drawn shape, "
        "1–5 outputs × 2–5 inputs, per group) equal SGD on "
        "Θ′ = Q₁⁻ᵀΘQ₂⁻¹ with x′ = Q₂x and the loss on y = Q₁ᵀy′: Θ_k = Q₁ᵀΘ′_kQ₂; with Q₁ = I and Q₂ the "
        "Eq. 25 matrix it is SGD on normalised inputs; and P vec(G) = vec(Q₁ᵀQ₁GQ₂ᵀQ₂) (both vec orders)."
    ),
    tolerance=f"{E_TOL}; exact: change of Q == 0",
    provenance=("PAPER", "DERIVED"),
    mutants={
        # 20 steps: a mutant deviates from the first step on
        "P = Q₁Q₁ᵀ ⊗ Q₂Q₂ᵀ (QQᵀ in place of QᵀQ)": {"form": q_qt, "steps": 20},
        "transformed problem's loss taken in y′-space": {"loss": _naive_transformed_loss, "steps": 20},
    },
)
def psgd_12(
    families: dict[str, Family] = PSGD12_FAMILIES,
    form: Callable[[pa.Structure], pa.Structure] | None = None,
    loss: Transformed = transformed_loss,
    steps: int = PSGD12_STEPS,
    seed: int = 12,
) -> Outcome:
    """PSGD-12 (Li 2019, Eqs. 22–24 and 3): Kronecker-preconditioned SGD is SGD in transformed coordinates.

    With P = QᵀQ, Q = Q₁ ⊗ Q₂ (row-major here; the paper's Q₂ ⊗ Q₁ column-major), Eq. 23 is
    Θ ← Θ − μ Q₁ᵀQ₁ (∂f/∂Θ) Q₂ᵀQ₂.  For Θ = Q₁ᵀΘ′Q₂, ∂f/∂Θ′ = Q₁ (∂f/∂Θ) Q₂ᵀ, so SGD on Θ′ maps to exactly
    that step (Eq. 24; Eq. 3 for P^{1/2}).  The model is y = Θx = Q₁ᵀ(Θ′(Q₂x)) = Q₁ᵀy′: the loss must be
    taken on y [DERIVED subtlety]; taking it on y′ against Q₁⁻ᵀt changes the problem (a mutant).  The
    batch-normalisation remark (§5.3, Eq. 25): Q₁ = I and Q₂ = [[diag(1/σ), −m/σ], [0, 1]] make x′ the
    normalised features, so PSGD is SGD on normalised inputs (the reference uses (x − m)/σ directly).

    Θ_k is the `Preconditioned` optimizer's (placement `TwoSided`, the family's φ set to a random group
    element after construction, `Fisher` criterion and ``LieGroup`` fitter with ``update_probability=0``,
    so that Q is never fitted and stays exactly as set, base SGD); Θ′_k is `torch.optim.SGD` on the
    transformed model, over the same minibatches of 16 of 64 samples, with lr = 0.3/λ_max(PH) of the
    full-batch Hessian (P as the optimizer applies it); each group (and the Eq. 25 case) gets its own
    drawn shape (`psgd12_shape`) and data (`psgd12_data`).  The mutants run 20 steps (they deviate from the
    first).  The vec identity is checked in both orders: ``pa.gram(pa.Kronecker(Q₁, Q₂)) @ vec_r(G)``
    and the paper's column-major ``pa.gram(pa.Kronecker(Q₂, Q₁)) @ vec_c(G)`` against the dense
    Q₁ᵀQ₁GQ₂ᵀQ₂.
    """
    gen, out = generator(seed), Measures()
    batches = [torch.randperm(PSGD12_SAMPLES, generator=gen)[:PSGD12_BATCH] for _ in range(steps)]
    worst, drift, vec_r, vec_c, per_kind = 0.0, 0.0, 0.0, 0.0, {}
    cases = [(name, fam, False) for name, fam in families.items()]
    cases.append(("Eq. 25 (Q₁ = I)", families.get("scan", scan_gram()), True))
    for name, fam, normalising in cases:
        shape = psgd12_shape(gen)
        X, Xa, T, theta0 = psgd12_data(shape, gen)
        fam = fam if form is None else dataclasses.replace(fam, form=form)
        if normalising:
            mean, std = X.mean(1), X.std(1, correction=0)
            Q = pa.Kronecker(pa.Diagonal(torch.ones(shape[0])), eq25_matrix(mean, std))
            Xp = torch.cat([(X - mean[:, None]) / std[:, None], torch.ones(1, X.shape[1])])

            def loss_p(theta_p: torch.Tensor, idx: torch.Tensor, Xp=Xp, T=T) -> torch.Tensor:
                return 0.5 * ((theta_p @ Xp[:, idx] - T[:, idx]) ** 2).sum(0).mean()
        else:
            Q = random_like(initial_phi(fam, TwoSided(), shape), gen)

            def loss_p(theta_p: torch.Tensor, idx: torch.Tensor, Q=Q, Xa=Xa, T=T) -> torch.Tensor:
                Q1, Q2 = (f.to_dense() for f in Q.factors)
                return loss(theta_p, Q1, Q2, Xa[:, idx], T[:, idx])

        Q1, Q2 = (f.to_dense() for f in Q.factors)
        P = parameter_matrix(fam.form(Q), TwoSided(), shape)
        hessian = torch.kron(torch.eye(shape[0]), Xa @ Xa.mT / PSGD12_SAMPLES)
        lr = 0.3 / float(torch.linalg.eigvals(P @ hessian).real.max())
        err, change, moved = psgd12_run(fam, Q, Xa, T, theta0, Q1, Q2, loss_p, batches, lr)
        G = torch.randn(shape, generator=gen)
        dense = Q1.mT @ Q1 @ G @ Q2.mT @ Q2
        vec_r = max(vec_r, rel_err((fam.form(Q) @ G.reshape(-1, 1)).reshape(G.shape), dense))
        paper = fam.form(pa.Kronecker(Q.factors[1], Q.factors[0])) @ G.mT.reshape(-1, 1)
        vec_c = max(vec_c, rel_err(paper.reshape(G.mT.shape).mT, dense))
        worst, drift = max(worst, err), max(drift, change)
        per_kind[name] = {"shape": list(shape), "max rel. deviation": err, "lr": lr,
                          "‖Θ_K − Θ₀‖_max/‖Θ₀‖_max": moved}
    deviation = f"max_k ‖Θ_k − Q₁ᵀΘ′_kQ₂‖_max/‖Θ_k‖_max over {steps} steps and {len(cases)} groups"
    out.at_most(deviation, worst, E_RTOL)
    out.equal("max change of Q's entries during the run (no fit: update_probability 0)", drift, 0)
    out.at_most("rel. error, gram(Kronecker(Q₁, Q₂)) @ vec_r(G) vs Q₁ᵀQ₁GQ₂ᵀQ₂", vec_r, E_RTOL)
    out.at_most("rel. error, gram(Kronecker(Q₂, Q₁)) @ vec_c(G) vs Q₁ᵀQ₁GQ₂ᵀQ₂ (paper)", vec_c, E_RTOL)
    out.details["per group"] = per_kind
    return out.outcome()


# ----- PSGD-14: the preconditioned embedding gradient keeps its sparsity -----

PSGD14_DIM, PSGD14_TOKENS, PSGD14_ACTIVE, PSGD14_STEPS = 4, 60, 3, 5
"""Embedding dimension D, tokens I, tokens with a non-zero gradient per step (95% zero), steps."""
PSGD14_FIT_LR = 0.1
"""The LieGroup step μ₀ while the optimizer fits Q (the paper's LSTM setting)."""
WHITENING_SCALING = kronecker_gram(factor="triangular", max_skew=4.0)
"""For a D × I embedding (I ≫ D): Q = Q_D ⊗ diag(q), by psgd_torch's max_skew rule."""
SCAW = scaw_gram()
"""For an I × D embedding: Q = diag(q) ⊗ Q_D (PSGD's scaling-and-whitening preconditioner)."""


def psgd14_run(family: Family, tokens_axis: int, gen: torch.Generator) -> tuple[int, float, int, float]:
    """Steps of the optimizer (TwoSided, `family`, Fisher, LieGroup(0.1), SGD with lr 1, Q₀ a random
    group element) on an embedding with tokens along `tokens_axis` (1: W is D × I, the paper's
    [w₁, …, w_I]; 0: W is I × D, PyTorch's layout) and gradients with 3 of 60 token slices non-zero.
    W is zeroed before each step, so W after the step is −(the preconditioned gradient) exactly.
    Returns the number of non-zero entries it has in zero-gradient token slices, its largest relative
    error against the formula q²ᵢ·(Q_DᵀQ_D)gᵢ with Q after the step's fit, the token slices checked, and
    how much the fit moved the token factor (relative)."""
    shape = (PSGD14_DIM, PSGD14_TOKENS) if tokens_axis == 1 else (PSGD14_TOKENS, PSGD14_DIM)
    W = torch.zeros(shape, requires_grad=True)
    Q0 = random_like(initial_phi(family, TwoSided(), shape), gen)
    opt, phi = optimizer_with(W, family, Q0, 1.0, LieGroup(lr=PSGD14_FIT_LR), update_probability=1.0)
    leaks, err, zero_slices = 0, 0.0, 0
    for _ in range(PSGD14_STEPS):
        active = torch.randperm(PSGD14_TOKENS, generator=gen)[:PSGD14_ACTIVE]
        mask = torch.zeros(PSGD14_TOKENS, dtype=torch.bool)
        mask[active] = True
        G = torch.randn(shape, generator=gen) * (mask if tokens_axis == 1 else mask[:, None])
        with torch.no_grad():
            W.zero_()
        W.grad = G
        opt.step()
        S = -W.detach()
        leaks += int((S.movedim(tokens_axis, 0)[~mask] != 0).sum())
        zero_slices += int((~mask).sum())
        Q = phi()
        token_q = Q.factors[tokens_axis].to_dense().diagonal()
        dense_side = Q.factors[1 - tokens_axis].to_dense()
        metric = dense_side.mT @ dense_side
        expected = metric @ G * token_q**2 if tokens_axis == 1 else token_q[:, None] ** 2 * G @ metric
        err = max(err, rel_err(S, expected))
    fitted = rel_err(phi().factors[tokens_axis].to_dense(), Q0.factors[tokens_axis].to_dense())
    return leaks, err, zero_slices, fitted


@check(
    id="PSGD-14",
    paper="PSGD App. A, Eq. 23 (Li 2019)",
    statement=(
        "Invariant and identity: with Q = Q_D ⊗ diag(q) (tokens on a diagonal factor), the Preconditioned "
        "optimizer's step on an embedding whose gradient has 95% zero token columns (5 steps, Q fitted) "
        "is zero on those columns bit-exactly and equals q²ᵢ Q_DᵀQ_D gᵢ on the others; in both "
        "orientations (D × I with kronecker_gram max_skew, I × D with scaw_gram)."
    ),
    tolerance=f"exact: leaked entries == 0; {E_TOL}",
    provenance="PAPER",
    mutants={
        "D × I: a dense (triangular) token factor": {"encoder": kronecker_gram(factor="triangular")},
        "I × D: a dense (triangular) token factor": {"decoder": kronecker_gram(factor="triangular")},
    },
)
def psgd_14(
    encoder: Family = WHITENING_SCALING,
    decoder: Family = SCAW,
    seed: int = 14,
) -> Outcome:
    """PSGD-14 (Li 2019, App. A): the whitening-and-scaling (and scaling-and-whitening) preconditioner
    does not mix the gradients of different word embeddings.

    For W = [w₁, …, w_I] (D × I) and Q = diag(q) ⊗ Q_D in the paper's column-major notation (here
    ``pa.Kronecker(Q_D, diag(q))``, row-major), Eq. 23 gives the preconditioned gradient
    [q²₁ Q_DᵀQ_D g₁, …, q²_I Q_DᵀQ_D g_I] (the paper text prints q_{2,i}: the square was stripped;
    Q₂ᵀQ₂ = diag(q²)).  A zero gᵢ gives an exactly zero column, so the step keeps the sparsity.  The
    token factor stays diagonal while Q is fitted (a group), so this holds at every step.

    Run through the `Preconditioned` optimizer (TwoSided, Fisher λ = 0, ``LieGroup(lr=0.1)``, base SGD
    with lr 1, Q₀ a random group element set after construction): D × I with
    ``kronecker_gram('triangular', max_skew=4)`` (psgd_torch's rule gives the 60-token axis a diagonal
    factor: Q = Q_D ⊗ diag(q)), and I × D (PyTorch's embedding layout; the decoder's SCAW orientation)
    with ``scaw_gram()`` (diag(q) ⊗ Q_D).  A dense token factor mixes the columns (the mutants).
    """
    gen, out = generator(seed), Measures()
    leaks, err, slices = 0, 0.0, 0
    for name, family, axis in (("D × I", encoder, 1), ("I × D", decoder, 0)):
        n_leaks, e, n_slices, fitted = psgd14_run(family, axis, gen)
        leaks, err, slices = leaks + n_leaks, max(err, e), slices + n_slices
        out.details[f"{name}: relative change of the token factor by the fit"] = fitted
    out.equal(f"non-zero entries of the step in {slices} zero-gradient token slices", leaks, 0)
    out.at_most("max rel. error of the step vs q²ᵢ Q_DᵀQ_D gᵢ", err, E_RTOL)
    return out.outcome()
