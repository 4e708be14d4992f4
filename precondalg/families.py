"""Families: how a learned structure φ is initialised and how it forms the preconditioner P_φ.

A `Family` is the *structure* choice of a learned preconditioner: ``init(dims, like, generator)``
returns the initial φ (a structure, hence a pytree whose leaves the fitter moves) for the dimensions a
placement gives, and ``form(φ)`` returns the preconditioner P_φ that multiplies the placed gradient.
Each family is named like the structure φ it makes.

| family | φ₀ | P_φ | used by |
| --- | --- | --- | --- |
| `dense_gram(scale)` | Dense(scale·I) | MᵀM = `gram(M)` | FOP full and spatial; PSGD dense Q |
| `normalized_dense_gram()` | Dense(I) | √n·MᵀM/‖MᵀM‖_F | FOP-norm (Moskovitz et al. 2019, App. A.1) |
| `low_rank_gram(r, std)` | Dense(M), M r×n, N(0, std²) | I + MᵀM (low rank) | FOP low rank |
| `triangular_gram(scale)` | Triangular(scale·I) | QᵀQ | PSGD's triangular Q (Li 2019, Eq. 18) |
| `diagonal_gram(scale)` | Diagonal(scale·1) | QᵀQ = diag(q²) | PSGD's diagonal Q |
| `kronecker_gram(factor, scale)` | ⊗ᵢ scale^(1/K)·I | ⊗ᵢ QᵢᵀQᵢ | PSGD's Kronecker Q (Eq. 23), by axis |
| `kronecker(factor, value)` | ⊗ᵢ value^(1/K)·I | φ | Shampoo, K-FAC (set in closed form) |
| `scan_gram(scale)` | diag ⊗ Normalization | QᵀQ | PSGD's SCAN (§5, Eq. 25) |
| `scaw_gram(scale)` | diag ⊗ Triangular | QᵀQ | PSGD's SCAW (§5, App. A) |
| `lra_gram(rank, scale)` | (I + UVᵀ)·diag(d) | QᵀQ | psgd_torch's LRA (fitter `UVd`) |
| `permutation_network_gram(N, k, ñ)` | A, orthogonal blocks | AᵀA (I at φ₀) | LODO (Liao 2023, Eq. 2) |
| `residual_network_gram(N, ñ)` | diag(d)·R, d = 1 | Rᵀ diag(d) R | LODO-Residuals (§5.3) |
| `scalar(value)` | Scalar(value) | φ | hypergradient descent (global / per layer); LODO-Global |
| `positive_scalar(value, t)` | Scalar(t⁻¹(value)) | t(φ)·I (exp, softplus, id) | APO's lr (Eq. 6) |
| `diagonal(value)` | Diagonal(value·1) | φ | per-parameter hypergradient descent (PP-HD); LODO-Diagonal |
| `dense(value)` | Dense(value·I) | φ | a dense learned matrix (LODO's simplified dynamics, §4.1) |
| `eigenbasis(scale)` | Eigenbasis(I, I, 1) | scale·φ, φ = K diag(vec S)² Kᵀ | APO-Precond (Bae 2022, Eq. 9) |

A new structure needs only a new `init` (and `form`): every objective and fitter then works with it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from precondalg._checks import check_choice, check_number
from precondalg.structures import (
    Dense,
    Diagonal,
    Eigenbasis,
    IdentityPlusLowRank,
    Kronecker,
    Normalization,
    Product,
    Scalar,
    Structure,
    Triangular,
    compose,
    gram,
    permutation_network,
    residual_network,
    transpose,
)
from precondalg.structures import scale as scale_structure
from precondalg.structures.permutation import permutation_network_gram_vjp

__all__ = [
    "Family",
    "dense",
    "dense_gram",
    "diagonal",
    "diagonal_gram",
    "eigenbasis",
    "kronecker",
    "kronecker_gram",
    "low_rank_gram",
    "lra_gram",
    "normalized_dense_gram",
    "permutation_network_gram",
    "positive_scalar",
    "residual_network_gram",
    "scalar",
    "scan_gram",
    "scaw_gram",
    "triangular_gram",
]

Init = Callable[[tuple[int, ...], torch.Tensor, torch.Generator | None], Structure]


def _identity(phi: Structure) -> Structure:
    return phi


@dataclasses.dataclass(frozen=True)
class Family:
    """A learned structure: its initialisation and the preconditioner it forms.

    Attributes:
        init: ``init(dims, like, generator) -> φ₀``: dims from the placement, ``like`` a tensor whose
            dtype and device φ₀ takes, ``generator`` the optimizer's seeded generator for random inits.
        form: ``form(φ) -> P_φ`` (default: P = φ).  Must be differentiable in φ's leaves (it is, when
            written with the structures' algebra).
        hyper_form: the map the hypergradient differentiates, where it is not `form` (None: `form`).
            FOP-norm's hypergradient is that of the plain MᵀM (the normalisation is not differentiated).
        hyper_vjp: optional closed form of the VJP of φ ↦ hyper_form(φ) @ u: ``hyper_vjp(φ, u, c)``
            returns ⟨c, ∂(P_φ u)⟩ as a structure of φ's type (u, c of shape (n, k)).  The hypergradient
            uses it instead of `torch.func.vjp` (it is faster; tests hold it equal to the generic VJP).
        name: how the family is shown in messages and checkpoints (the factories set it, e.g.
            "triangular_gram(scale=0.1)"); default: from `init`'s name.
        power: how P depends on φ, for a closed-form fitter (`precondalg.fitters.ClosedForm`) that sets
            φ from a target P: 1 for P = φ, 2 for P = φᵀφ (φ's parts then set symmetric, or upper
            triangular); None (default): φ cannot be set from P in closed form.
    """

    init: Init
    form: Callable[[Structure], Structure] = _identity
    hyper_form: Callable[[Structure], Structure] | None = None
    hyper_vjp: Callable[[Structure, torch.Tensor, torch.Tensor], Structure] | None = None
    name: str | None = None
    power: int | None = None

    def __repr__(self) -> str:
        if self.name is not None:
            return self.name
        return f"Family(init={getattr(self.init, '__qualname__', type(self.init).__name__)})"

    @property
    def kind(self) -> str:
        """The family without its initial values, e.g. "scalar" for ``scalar(0.1)``: what a checkpoint
        must match (φ's values come from the checkpoint, so φ₀'s do not matter)."""
        return self.name.split("(")[0] if self.name is not None else repr(self)


def _eye(n: int, like: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device) * value


def _dense_identity(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Dense(_eye(math.prod(dims), like, value))


def _triangular_identity(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Triangular(_eye(math.prod(dims), like, value))


def _diagonal_init(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Diagonal(torch.full((math.prod(dims),), float(value), dtype=like.dtype, device=like.device))


_FACTORS: dict[str, Callable[..., Structure]] = {
    "dense": _dense_identity,
    "triangular": _triangular_identity,
    "diagonal": _diagonal_init,
}


def _scalar_init(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Scalar(torch.tensor(float(value), dtype=like.dtype, device=like.device), math.prod(dims))


def _low_rank_init(
    rank: int, std: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    n = math.prod(dims)
    if rank > n:
        raise ValueError(f"low_rank_gram: 'rank' must be at most the dimension n = {n}; got {rank}")
    M = torch.randn(rank, n, generator=gen, dtype=torch.float64) * std
    return Dense(M.to(dtype=like.dtype, device=like.device))


def _positive_scale(owner: str, scale_: float) -> float:
    check_number(owner, "scale", scale_, 0.0, math.inf, lo_open=True, hi_open=True)
    return float(scale_)


def dense_gram(scale: float = 1.0) -> Family:
    """P = MᵀM with M = scale·I at the start (a dense M).

    Full FOP (M₀ = I; Moskovitz et al. 2019, Eq. 4) and spatial FOP on conv taps, fitted by the
    `Hypergradient` with Adam (lr 1e-4 in the paper); also PSGD's dense Q (Li 2019), fitted by
    `Newton`/`Fisher` with the `LieGroup` fitter (μ₀ 0.01–0.2, scale 0.1–1).  Memory n² per block: use
    it for n up to a few thousand.

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("dense_gram", scale)
    return Family(
        init=functools.partial(_dense_identity, value),
        form=gram,
        hyper_vjp=_gram_vjp,
        name="dense_gram()" if value == 1.0 else f"dense_gram(scale={value!r})",
        power=2,
    )


def _gram_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    # d⟨c, MᵀM u⟩ = ⟨M(u cᵀ + c uᵀ), dM⟩: FOP's Eq. 4 (−αM(g_{t−1}g_tᵀ + g_t g_{t−1}ᵀ) with c = −αg_t).
    M = phi.A
    Mu, Mc = M @ u, M @ c
    return Dense(Mu @ c.mT + Mc @ u.mT)


def _normalized_gram(phi: Structure) -> Structure:
    # ‖MᵀM‖_F = ‖MMᵀ‖_F, and √n = ‖Iₙ‖_F with n the first dimension of M (App. A.1).
    M = phi.A
    return gram(phi) * (M.shape[0] ** 0.5 / torch.linalg.matrix_norm(M @ M.mT))


def normalized_dense_gram() -> Family:
    """FOP-norm (Moskovitz et al. 2019, App. A.1): P = √n·MᵀM/‖MᵀM‖_F, M = I at the start; the
    hypergradient is the plain MᵀM one (the normalisation is applied, not differentiated)."""
    return Family(
        init=functools.partial(_dense_identity, 1.0),
        form=_normalized_gram,
        hyper_form=gram,
        hyper_vjp=_gram_vjp,
        name="normalized_dense_gram()",
    )


def _one_plus_gram(phi: Structure) -> Structure:
    M = phi.A
    return IdentityPlusLowRank(M.mT, M.mT)


def low_rank_gram(rank: int, std: float = 1e-3) -> Family:
    """P = I + MᵀM with M (rank×n), entries N(0, std²): low-rank FOP (Moskovitz et al. 2019, Eq. 5
    as reconstructed: the paper's text gives the form, not the initial scale; std 1e-3 by default).

    std = 0 starts at M = 0, a stationary point of the hypergradient (its VJP is M(·) = 0): P then stays
    I, which reproduces the base optimizer exactly but never learns.  Typical: rank 1–32.

    Raises:
        TypeError: rank not an int, std not a number.
        ValueError: rank < 1 or std < 0 (rank > n is reported when the placement's n is known).
    """
    check_number("low_rank_gram", "rank", rank, 1, integer=True)
    check_number("low_rank_gram", "std", std, 0.0)
    return Family(
        init=functools.partial(_low_rank_init, rank, float(std)),
        form=_one_plus_gram,
        hyper_vjp=_gram_vjp,
        name=f"low_rank_gram({rank}, std={float(std)!r})",
    )


def triangular_gram(scale: float = 1.0) -> Family:
    """P = QᵀQ with Q upper triangular, Q₀ = scale·I: PSGD's dense preconditioner (Li 2019, Eq. 18).

    Fit it with `Newton()` or `Fisher(damping=…)` and the `LieGroup` fitter, which keeps Q triangular
    and invertible.  Typical values: scale 0.1 (the paper's Rosenbrock, with μ₀ = 0.2) to 1; the Lie
    step μ₀ 0.01 on networks (the paper's "typical value"), up to 0.1–0.2 on small problems.  Memory
    n(n+1)/2 values per block (stored as n×n).

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("triangular_gram", scale)
    name = f"triangular_gram(scale={value!r})"
    return Family(init=functools.partial(_triangular_identity, value), form=gram, name=name, power=2)


def diagonal_gram(scale: float = 1.0) -> Family:
    """P = QᵀQ = diag(q²) with q₀ = scale·1: PSGD's diagonal preconditioner (Li 2019; with `Newton`
    the equilibrated-SGD preconditioner, with `Fisher` an RMSprop-like one).

    Typical values: scale 0.1–1 with `LieGroup(lr=0.01)`.

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("diagonal_gram", scale)
    name = f"diagonal_gram(scale={value!r})"
    return Family(init=functools.partial(_diagonal_init, value), form=gram, name=name, power=2)


def _scalar_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    return Scalar((c * u).sum(), phi.n)  # Baydin's ⟨g_t, d_{t−1}⟩ with c = −g_t


def _diagonal_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    return Diagonal((c * u).sum(-1))


def scalar(value: float = 1.0) -> Family:
    """P = αI with α = value at the start: a learned learning rate (Baydin et al. 2018).

    The step is θ ← θ − lr·α·s, with s the base rule's step for position "direction" (or the base rule
    applied to αg for "gradient"): the group's ``lr`` multiplies the learned α, so keep lr = 1 and put
    the initial rate in `value` (the `HD` preset does), or keep value = 1 and let α learn a correction
    of a scheduled lr.  Typical hyper-learning rates: 1e-3 (SGD base), 1e-7–1e-8 (Adam base).

    Raises:
        TypeError: value not a number.
    """
    check_number("scalar", "value", value)
    init = functools.partial(_scalar_init, float(value))
    return Family(init=init, hyper_vjp=_scalar_vjp, name=f"scalar({value!r})", power=1)


_LR_PARAMETERISATIONS = ("log", "softplus", "linear")


def _positive_scalar_init(
    parameterisation: str,
    value: float,
    dims: tuple[int, ...],
    like: torch.Tensor,
    gen: torch.Generator | None,
) -> Structure:
    raw = {"log": math.log, "softplus": lambda v: v + math.log(-math.expm1(-v)), "linear": float}
    alpha = torch.tensor(raw[parameterisation](value), dtype=like.dtype, device=like.device)
    return Scalar(alpha, math.prod(dims))


def _exp_form(phi: Structure) -> Structure:
    return Scalar(phi.alpha.exp(), phi.n)


def _softplus_form(phi: Structure) -> Structure:
    return Scalar(torch.nn.functional.softplus(phi.alpha), phi.n)


def positive_scalar(value: float, parameterisation: str = "log") -> Family:
    """P = η·I with the learning rate η = t(φ) learned through a parameterisation t, η = value at the
    start: APO's learning-rate adaptation (Bae et al. 2022, Eq. 6), whose parameterisation the paper
    does not give — "log" (η = exp φ, the project's reconstruction: its schedules span two orders of
    magnitude and its meta-optimizer is RMSprop with lr 0.1), "softplus" (η = log(1 + e^φ)) or
    "linear" (η = φ, as `scalar`).

    Raises:
        TypeError: value not a number.
        ValueError: value not positive; an unknown parameterisation.
    """
    check_choice("positive_scalar", "parameterisation", parameterisation, _LR_PARAMETERISATIONS)
    check_number("positive_scalar", "value", value, 0.0, math.inf, lo_open=True, hi_open=True)
    init = functools.partial(_positive_scalar_init, parameterisation, float(value))
    name = f"positive_scalar({float(value)!r}, {parameterisation!r})"
    if parameterisation == "linear":
        return Family(init=init, hyper_vjp=_scalar_vjp, name=name, power=1)
    return Family(init=init, form=_exp_form if parameterisation == "log" else _softplus_form, name=name)


def diagonal(value: float = 1.0) -> Family:
    """P = diag(α) with every α = value at the start: per-parameter learned learning rates (PP-HD).

    As for `scalar`, the step is θ ← θ − lr·diag(α)·s: coordinate i moves by lr·αᵢ times the base
    rule's step, so lr and value multiply (the `HD` preset sets lr = 1 and value = the initial rate).

    Raises:
        TypeError: value not a number.
    """
    check_number("diagonal", "value", value)
    init = functools.partial(_diagonal_init, float(value))
    return Family(init=init, hyper_vjp=_diagonal_vjp, name=f"diagonal({value!r})", power=1)


def _dense_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    return Dense(c @ u.mT)  # d⟨c, G u⟩/dG = c uᵀ: LODO's simplified meta-gradient −α g_{t+1} g_tᵀ


def dense(value: float = 1.0) -> Family:
    """P = G, a dense n×n matrix learned entry by entry, G₀ = value·I.

    With the `Hypergradient` and plain SGD (lr η) this is the simplified LODO of Liao et al. (2023,
    §4.1): G ← G + η·lr·g_{t+1} g_tᵀ (base "sgd", position "direction").  G is not kept symmetric or
    positive definite.  Memory n² per block.

    Raises:
        TypeError: value not a number.
    """
    check_number("dense", "value", value)
    init = functools.partial(_dense_identity, float(value))
    return Family(init=init, hyper_vjp=_dense_vjp, name=f"dense({value!r})", power=1)


def _permutation_network_init(
    depth: int, block_size: int, width: int | None, dims: tuple[int, ...], like: torch.Tensor,
    gen: torch.Generator | None,
) -> Structure:
    n = math.prod(dims)
    return permutation_network(
        n, depth, block_size, width=width, generator=gen, dtype=like.dtype, device=like.device
    )


def permutation_network_gram(depth: int = 16, block_size: int = 4, width: int | None = None) -> Family:
    """P = AᵀA = EᵀKᵀKE with A = B_N Π_N ⋯ B_1 Π_1 E a `PermutationNetwork`: LODO's learned inverse
    Hessian (Liao et al. 2023, Eq. 2; its α₀ is the optimizer's lr).

    φ₀ has random permutations and random orthogonal k×k blocks (the authors' code), so P₀ = I.  The
    permutations are static data of φ, drawn from the optimizer's generator and saved in checkpoints.
    A matvec with P costs 2·N·ñ·k multiply-adds; φ holds N·ñ·k values.

    Args:
        depth: N, the number of layers (LODO's 16).
        block_size: k (LODO's 4).
        width: ñ; None: `lodo_width(n, block_size)`, the code's rule (the smallest multiple of k above
            2n).

    Raises:
        TypeError, ValueError: depth or block_size not a positive int; width not None or a positive int
            (a width below n or not a multiple of k is reported when n is known).
    """
    check_number("permutation_network_gram", "depth", depth, 1, integer=True)
    check_number("permutation_network_gram", "block_size", block_size, 1, integer=True)
    if width is not None:
        check_number("permutation_network_gram", "width", width, 1, integer=True)
    init = functools.partial(_permutation_network_init, depth, block_size, width)
    return Family(
        init=init,
        form=gram,
        hyper_vjp=permutation_network_gram_vjp,
        name=f"permutation_network_gram(depth={depth}, block_size={block_size}, width={width})",
    )


def _residual_init(
    depth: int, width: int | None, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    n = math.prod(dims)
    R = residual_network(n, depth, width=width, generator=gen, dtype=like.dtype, device=like.device)
    d = torch.ones(R.width, dtype=like.dtype, device=like.device)
    return compose(Diagonal(d), R)


def _residual_form(phi: Structure) -> Structure:
    return compose(transpose(phi.factors[-1]), phi)  # Rᵀ·(diag(d)·R)


def residual_network_gram(depth: int = 64, width: int | None = None) -> Family:
    """P = EᵀRᵀ diag(d) R E with R a `ResidualNetwork` (∏ (I + D_i Π_i)): LODO-Residuals (Liao et al.
    2023, §5.3; the authors' code, its α₀ being the optimizer's lr).

    φ = diag(d)·R E: d₀ = 1 and the layer weights drawn N(0, 1/N), so P₀ is only near I (the code's
    choice).  P is symmetric, and PSD while d ≥ 0 (d is not constrained, as in the code).  A matvec
    costs 2·N·ñ + ñ multiply-adds.

    Args:
        depth: N (the code's 64).
        width: ñ; None: 2n (the code's rule for this variant).

    Raises:
        TypeError, ValueError: depth not a positive int; width not None or a positive int.
    """
    check_number("residual_network_gram", "depth", depth, 1, integer=True)
    if width is not None:
        check_number("residual_network_gram", "width", width, 1, integer=True)
    return Family(
        init=functools.partial(_residual_init, depth, width),
        form=_residual_form,
        name=f"residual_network_gram(depth={depth}, width={width})",
    )


_KRONECKER_FACTORS = tuple(_FACTORS)


def _diagonal_axis(n: int, dims: tuple[int, ...], max_size: float, max_skew: float) -> bool:
    """psgd_torch's rule (`init_Q_exprs`, v0.6): an axis of size n gets a diagonal factor when n = 1,
    n > max_size, or n > max_skew × the second-largest size (1 for a single axis)."""
    second = sorted(dims)[-2] if len(dims) > 1 else 1
    return n == 1 or n > max_size or n > max_skew * second


def _kronecker_identity(
    factor: str,
    value: float,
    max_size: float,
    max_skew: float,
    dims: tuple[int, ...],
    like: torch.Tensor,
    gen: torch.Generator | None,
) -> Structure:
    # psgd_torch's split of the initial scale: value^(1/K) on each of the K factors.
    per = value ** (1 / len(dims))
    kinds = ["diagonal" if _diagonal_axis(n, dims, max_size, max_skew) else factor for n in dims]
    return Kronecker(*[_FACTORS[kind](per, (n,), like, gen) for kind, n in zip(kinds, dims)])


def kronecker_gram(
    factor: str = "dense", scale: float = 1.0, max_size: float = math.inf, max_skew: float = math.inf
) -> Family:
    """P = Q₁ᵀQ₁ ⊗ ⋯ ⊗ Q_KᵀQ_K, one factor per placement dimension, each Qᵢ = scale^(1/K)·I at the start
    (so P₀ = scale²·I).

    With `TwoSided` (dims (out, in)) it acts as G ↦ Q₁ᵀQ₁ G Q₂ᵀQ₂: PSGD's Kronecker preconditioner
    (Li 2019, Eq. 23) with ``factor="triangular"``, fitted by `Newton`/`Fisher` and `LieGroup` (the
    paper's autoencoder: Q₁ = 0.1·I, Q₂ = I, step 0.1; here use scale 0.1); with `EveryAxis` one factor
    per tensor axis (psgd_torch's `Kron`, any number of axes); with the `Hypergradient` and
    ``factor="dense"`` a two-sided FOP.  ``factor="diagonal"`` gives diagonal factors (PSGD's choice
    for very large dimensions).

    Args:
        factor: "dense", "triangular" or "diagonal": the structure of every Qᵢ.
        scale: the initial scale of P^(1/2) (a positive number).
        max_size: an axis longer than this gets a diagonal factor (psgd_torch's
            ``preconditioner_max_size``).
        max_skew: an axis longer than max_skew × the second-largest axis gets a diagonal factor
            (psgd_torch's ``preconditioner_max_skew``, v0.6 rule).  An axis of size 1 always gets a
            1×1 diagonal factor (the same matrix as any 1×1 factor), as in psgd_torch.

    Raises:
        ValueError: unknown factor; scale not positive; max_size or max_skew negative.
    """
    sizes = (max_size, max_skew)
    name, init = _kronecker_choices("kronecker_gram", _KRONECKER_FACTORS, factor, "scale", scale, *sizes)
    return Family(init=init, form=gram, name=name, power=2)


def _kronecker_choices(
    owner: str,
    factors: tuple[str, ...],
    factor: str,
    value_name: str,
    value: float,
    max_size: float,
    max_skew: float,
) -> tuple[str, Init]:
    """The checked name and init of a Kronecker family (`kronecker_gram`, `kronecker`)."""
    check_choice(owner, "factor", factor, factors)
    value = _positive_scale(owner, value)
    check_number(owner, "max_size", max_size, 0.0)
    check_number(owner, "max_skew", max_skew, 0.0)
    name = f"{owner}()" if (factor, value) == ("dense", 1.0) else (
        f"{owner}(factor={factor!r}, {value_name}={value!r})"
    )
    if (max_size, max_skew) != (math.inf, math.inf):
        name = f"{name[:-1]}, max_size={max_size!r}, max_skew={max_skew!r})".replace("(, ", "(")
    return name, functools.partial(_kronecker_identity, factor, value, float(max_size), float(max_skew))


def kronecker(
    factor: str = "dense", value: float = 1.0, max_size: float = math.inf, max_skew: float = math.inf
) -> Family:
    """P = φ = A₁ ⊗ ⋯ ⊗ A_K, one factor per placement dimension, each value^(1/K)·I at the start (so
    P₀ = value·I): the Kronecker structure itself, without a Gram.

    Shampoo (Gupta et al. 2018; Aᵢ = (Lᵢ + εI)^(−1/2K)) and K-FAC (Martens & Grosse 2015; (Ḡ + γI)⁻¹ ⊗
    (Ā + γI)⁻¹) set it in closed form with the `ClosedForm` fitter; with `TwoSided`/`EveryAxis`/`Layer`
    placements.  A meta-objective can fit the same structure (P is then not guaranteed PSD; use
    `kronecker_gram` for P = ⊗ QᵢᵀQᵢ).

    Args:
        factor: "dense" or "diagonal": every Aᵢ's structure.
        value: the initial P = value·I (a positive number).
        max_size: as for `kronecker_gram`: a longer axis gets a diagonal factor.
        max_skew: as for `kronecker_gram`: an axis longer than max_skew × the second-largest axis gets
            a diagonal factor.

    Raises:
        ValueError: unknown factor; value not positive; max_size or max_skew negative.
    """
    sizes = (max_size, max_skew)
    name, init = _kronecker_choices("kronecker", ("dense", "diagonal"), factor, "value", value, *sizes)
    return Family(init=init, name=name, power=1)


def _two_sided_group(
    inputs: str, value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    if len(dims) != 2:
        raise ValueError(
            f"{inputs}_gram: needs the two dims (out, in) of a TwoSided placement; got dims {dims}"
        )
    out, n_in = dims
    per = value**0.5
    right = (
        Normalization(
            torch.full((n_in,), per, dtype=like.dtype, device=like.device),
            torch.zeros(n_in - 1, dtype=like.dtype, device=like.device),
        )
        if inputs == "scan"
        else Triangular(_eye(n_in, like, per))
    )
    return Kronecker(_diagonal_init(per, (out,), like, gen), right)


def scan_gram(scale: float = 1.0) -> Family:
    """PSGD's scaling-and-normalization preconditioner (SCAN, Li 2019 §5 and Eq. 25) for a weight
    W (out, in) with `TwoSided`: Q = diag(q₁) ⊗ Q₂, Q₂ a `Normalization` (diagonal plus last column),
    P = QᵀQ acting as G ↦ diag(q₁²) G Q₂ᵀQ₂.  Q₂ normalises the layer's inputs when the last input
    column of W multiplies a constant 1 (the paper's augmented input x = [x; 1], i.e. W holds the bias
    as its last column); 2·in + out − 1 values.  Each factor starts at scale^(1/2)·I.

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("scan_gram", scale)
    return Family(
        init=functools.partial(_two_sided_group, "scan", value), form=gram, name=f"scan_gram(scale={value!r})"
    )


def scaw_gram(scale: float = 1.0) -> Family:
    """PSGD's scaling-and-whitening preconditioner (SCAW, Li 2019 §5 and App. A) for a weight
    W (out, in) with `TwoSided`: Q = diag(q₁) ⊗ Q₂, Q₂ upper triangular, P = QᵀQ acting as
    G ↦ diag(q₁²) G Q₂ᵀQ₂ (output scaling, input whitening).  Each factor starts at scale^(1/2)·I.

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("scaw_gram", scale)
    return Family(
        init=functools.partial(_two_sided_group, "scaw", value), form=gram, name=f"scaw_gram(scale={value!r})"
    )


def _lra_init(
    rank: int, value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    n = math.prod(dims)
    if rank >= n:
        raise ValueError(f"lra_gram: 'rank' must be less than the dimension n = {n}; got {rank}")
    # psgd_torch v0.6's LRA: U, V ~ N(0, 1/(n(r + 10))), so that ‖UVᵀ‖ ≪ 1 even for rank 1.
    std = (n * (rank + 10)) ** -0.5
    U, V = (torch.randn(n, rank, generator=gen, dtype=torch.float64) * std for _ in range(2))
    U, V = (M.to(dtype=like.dtype, device=like.device) for M in (U, V))
    return Product(IdentityPlusLowRank(U, V), _diagonal_init(value, dims, like, gen))


def lra_gram(rank: int = 10, scale: float = 1.0) -> Family:
    """PSGD's low-rank approximation (LRA, "UVd"): Q = (I + UVᵀ)·diag(d), P = QᵀQ, with U, V (n×r) and
    d (n); psgd_torch's `LRA` preconditioner.  U, V start at N(0, 1/(n(r + 10))) entries (psgd_torch
    v0.6), so Q₀ ≈ scale·I; d = scale·1.

    Q is not on a matrix Lie group (I + UVᵀ is not closed under products), so `LieGroup` does not apply:
    fit it with `UVd` (psgd_torch's update), or any `TorchOptimizer`.  Memory 2nr + n.

    Raises:
        TypeError: rank not an int, scale not a number.
        ValueError: rank < 1 (rank ≥ n is reported when the placement's n is known), scale ≤ 0.
    """
    check_number("lra_gram", "rank", rank, 1, integer=True)
    value = _positive_scale("lra_gram", scale)
    name = f"lra_gram({rank}, scale={value!r})"
    return Family(init=functools.partial(_lra_init, rank, value), form=gram, name=name)


def _eigenbasis_identity(
    dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    if len(dims) != 2:
        raise ValueError(
            f"eigenbasis: needs the two dims (out, in) of a TwoSided or Layer placement; got dims {dims}"
        )
    out, n_in = dims
    ones = torch.ones(out, n_in, dtype=like.dtype, device=like.device)
    return Eigenbasis(_eye(out, like), _eye(n_in, like), ones)


def eigenbasis(scale: float = 1.0) -> Family:
    """P = scale·P̂ with P̂ = `Eigenbasis`(B, A, S) = (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ: APO-Precond's
    structured preconditioner for a weight W (out, in) (Bae et al. 2022, Eqs. 9–10).

    φ₀ = Eigenbasis(I_out, I_in, 1), so P₀ = scale·I (the paper's identity initialisation: SGD at the
    start).  Use it with `TwoSided` (dims (out, in·…)) or `Layer(model)` (dims (out, in·… + 1), the bias
    as a homogeneous input column, as in K-FAC); P̂ acts as G ↦ B[(BᵀGA) ⊙ S ⊙ S]Aᵀ (four matmuls)
    and stores out² + in² + out·in values.  APO applies 0.9·P̂ ("for stability", §4.5) while its
    meta-objective differentiates P̂ itself, so `form` is scale·φ and `hyper_form` is φ.  Fit it with
    `Proximal` (APO) or any other objective and `TorchOptimizer` (Adam); P̂ is not a matrix Lie group
    (no `LieGroup`).  In closed form (`ClosedForm` with K-FAC's `LayerStatistics`) φ is set to EKFAC's
    eigenbasis form of (Ḡ ⊗ Ā + λI)⁻¹ (`power` 1: P = scale·φ).

    Args:
        scale: the fixed factor on the applied preconditioner (APO's 0.9); a positive number.

    Raises:
        TypeError, ValueError: scale not a positive number.
    """
    value = _positive_scale("eigenbasis", scale)
    return Family(
        init=_eigenbasis_identity,
        form=_identity if value == 1.0 else functools.partial(_scaled_form, value),
        hyper_form=_identity,
        name="eigenbasis()" if value == 1.0 else f"eigenbasis(scale={value!r})",
        power=1,
    )


def _scaled_form(value: float, phi: Structure) -> Structure:
    return scale_structure(phi, value)  # a lazy Product(Scalar(value), φ): Eigenbasis has no scale rule
