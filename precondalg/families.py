"""Families: how a learned structure φ is initialised and how it forms the preconditioner P_φ.

A `Family` is the *structure* choice of a learned preconditioner: ``init(dims, like, generator)``
returns the initial φ (a structure, hence a pytree whose leaves the fitter moves) for the dimensions a
placement gives, and ``form(φ)`` returns the preconditioner P_φ that multiplies the placed gradient.

| family | φ₀ | P_φ | used by |
| --- | --- | --- | --- |
| `dense_gram()` | Dense(I) | MᵀM = `gram(M)` | FOP full and spatial (METHODS.md §1.1, §1.5) |
| `normalized_dense_gram()` | Dense(I) | √n·MᵀM/‖MᵀM‖_F | FOP-norm (§1.7); hypergradient of MᵀM (O-FOP-2) |
| `low_rank_gram(r, std)` | Dense(M), M r×n, N(0, std²) | I + MᵀM (low rank) | FOP low rank (§1.4) |
| `scalar(value)` | Scalar(value) | φ | hypergradient descent (global / per layer, §1.8–1.9) |
| `diagonal(value)` | Diagonal(value·1) | φ | PP-HD (§1.8) |
| `kronecker_gram()` | Kronecker(Dense(I), Dense(I)) | AᵀA ⊗ BᵀB | two-sided (`TwoSided`) |

A new structure needs only a new `init` (and `form`): every objective and fitter then works with it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from precondalg.structures import (
    Dense,
    Diagonal,
    IdentityPlusLowRank,
    Kronecker,
    Scalar,
    Structure,
    gram,
    scale,
)

__all__ = [
    "Family",
    "dense_gram",
    "diagonal",
    "kronecker_gram",
    "low_rank_gram",
    "normalized_dense_gram",
    "scalar",
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
            FOP-norm's default hypergradient is that of the plain MᵀM (METHODS.md §6, O-FOP-2).
        hyper_vjp: optional closed form of the VJP of φ ↦ hyper_form(φ) @ u: ``hyper_vjp(φ, u, c)``
            returns ⟨c, ∂(P_φ u)⟩ as a structure of φ's type (u, c of shape (n, k)).  The hypergradient
            uses it instead of `torch.func.vjp` (it is faster; tests hold it equal to the generic VJP).
    """

    init: Init
    form: Callable[[Structure], Structure] = _identity
    hyper_form: Callable[[Structure], Structure] | None = None
    hyper_vjp: Callable[[Structure, torch.Tensor, torch.Tensor], Structure] | None = None


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _dense_identity(dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> Structure:
    return Dense(_eye(math.prod(dims), like))


def _kronecker_identity(dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> Structure:
    return Kronecker(*[Dense(_eye(n, like)) for n in dims])


def _scalar_init(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Scalar(torch.tensor(float(value), dtype=like.dtype, device=like.device), math.prod(dims))


def _diagonal_init(
    value: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    return Diagonal(torch.full((math.prod(dims),), float(value), dtype=like.dtype, device=like.device))


def _low_rank_init(
    rank: int, std: float, dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
) -> Structure:
    n = math.prod(dims)
    if rank > n:
        raise ValueError(f"low_rank_gram: 'rank' must be at most the dimension n = {n}; got {rank}")
    M = torch.randn(rank, n, generator=gen, dtype=torch.float64) * std
    return Dense(M.to(dtype=like.dtype, device=like.device))


def dense_gram() -> Family:
    """P = MᵀM with M = I at the start: full FOP, and spatial FOP on conv taps."""
    return Family(init=_dense_identity, form=gram, hyper_vjp=_gram_vjp)


def _gram_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    # d⟨c, MᵀM u⟩ = ⟨M(u cᵀ + c uᵀ), dM⟩: FOP's Eq. 4 (−αM(g_{t−1}g_tᵀ + g_t g_{t−1}ᵀ) with c = −αg_t).
    M = phi.A
    Mu, Mc = M @ u, M @ c
    return Dense(Mu @ c.mT + Mc @ u.mT)


def _normalized_gram(phi: Structure) -> Structure:
    # ‖MᵀM‖_F = ‖MMᵀ‖_F, and √n = ‖Iₙ‖_F with n the first dimension of M (App. A.1).
    M = phi.A
    return scale(gram(phi), M.shape[0] ** 0.5 / torch.linalg.matrix_norm(M @ M.mT))


def normalized_dense_gram() -> Family:
    """FOP-norm: P = √n·MᵀM/‖MᵀM‖_F, M = I at the start; the hypergradient is the plain MᵀM one."""
    return Family(init=_dense_identity, form=_normalized_gram, hyper_form=gram, hyper_vjp=_gram_vjp)


def _one_plus_gram(phi: Structure) -> Structure:
    M = phi.A
    return IdentityPlusLowRank(M.mT, M.mT)


def low_rank_gram(rank: int, std: float = 1e-3) -> Family:
    """P = I + MᵀM with M (rank×n), entries N(0, std²): low-rank FOP (Eq. 5 reconstructed, O-FOP-1).

    std = 0 starts at M = 0, a stationary point of the hypergradient (its VJP is M(·) = 0): P then stays
    I, which reproduces the base optimizer exactly but never learns.

    Raises:
        ValueError: rank < 1 or std < 0 (rank > n is reported when the placement's n is known).
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"low_rank_gram: 'rank' must be a positive int; got {rank!r}")
    if not std >= 0:
        raise ValueError(f"low_rank_gram: 'std' must be >= 0; got {std!r}")

    return Family(init=functools.partial(_low_rank_init, rank, std), form=_one_plus_gram, hyper_vjp=_gram_vjp)


def _scalar_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    return Scalar((c * u).sum(), phi.n)  # Baydin's ⟨g_t, d_{t−1}⟩ with c = −g_t


def _diagonal_vjp(phi: Structure, u: torch.Tensor, c: torch.Tensor) -> Structure:
    return Diagonal((c * u).sum(-1))


def scalar(value: float = 1.0) -> Family:
    """P = αI with α = value at the start (a learned learning rate)."""
    return Family(init=functools.partial(_scalar_init, value), hyper_vjp=_scalar_vjp)


def diagonal(value: float = 1.0) -> Family:
    """P = diag(α) with every α = value at the start (per-parameter learning rates)."""
    return Family(init=functools.partial(_diagonal_init, value), hyper_vjp=_diagonal_vjp)


def kronecker_gram() -> Family:
    """P = AᵀA ⊗ BᵀB with A = I, B = I at the start, for a `TwoSided` placement (dims (out, in))."""
    return Family(init=_kronecker_identity, form=gram)
