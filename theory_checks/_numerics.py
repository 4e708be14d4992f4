"""Shared numerics of the checks: the tolerance classes and dense read-outs of operators.

Class E (exact identity) is `rtol = 1e-10, atol = 1e-12·scale`; the checks use its normwise form,
``max|a − b| / max|b| ≤ 1e-10``, and ``1e-12·scale`` for quantities that should be exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import precondalg as pa

E_RTOL = 1e-10
E_ATOL = 1e-12
E_TOL = "E: rel. error <= 1e-10"


def generator(seed: int) -> torch.Generator:
    """A seeded CPU generator (every check is deterministic)."""
    return torch.Generator().manual_seed(seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normwise relative error max|a − b| / max|b| (class E compares it with 1e-10)."""
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)


def dense_of(A: pa.Structure) -> torch.Tensor:
    """The dense matrix of A obtained by applying the operator to the basis vectors: A @ I."""
    return A @ torch.eye(A.shape[1], dtype=A.dtype)


def sym_err(G: torch.Tensor) -> float:
    """Relative asymmetry ‖G − Gᵀ‖_max / ‖G‖_max."""
    return rel_err(G, G.mT)


def min_eig_rel(P: torch.Tensor) -> float:
    """λ_min of the symmetric part of P, relative to its spectral radius (‖P‖₂ for a symmetric P)."""
    eig = torch.linalg.eigvalsh((P + P.mT) / 2)
    return float(eig[0] / eig.abs().max().clamp_min(torch.finfo(P.dtype).tiny))


def off_pattern(X: torch.Tensor, pattern: torch.Tensor) -> float:
    """The largest |X| outside a boolean sparsity pattern, relative to max|X|."""
    scale = X.abs().max().clamp_min(torch.finfo(X.dtype).tiny)
    return float(X.masked_fill(pattern, 0).abs().max() / scale)


def log_uniform(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """Magnitudes 10^U(lo, hi): data spanning tiny to huge scales."""
    return 10 ** (lo + (hi - lo) * torch.rand(shape, generator=gen))


def central_diff(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float) -> torch.Tensor:
    """The gradient of a scalar f at x by central finite differences, (f(x + h eᵢ) − f(x − h eᵢ))/2h."""
    grad = torch.empty_like(x).reshape(-1)
    for i in range(grad.numel()):
        e = torch.zeros_like(grad)
        e[i] = h
        e = e.reshape(x.shape)
        grad[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad.reshape(x.shape)


def numerical_rank(A: torch.Tensor, atol: float) -> int:
    """The number of singular values of A above `atol`."""
    return int((torch.linalg.svdvals(A) > atol).sum())
