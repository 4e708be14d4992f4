"""Matrix functions of symmetric positive semi-definite statistics: the closed forms that the
`precondalg.fitters.ClosedForm` fitter sets a preconditioner from.

- `psd_power`: (S + δI)^e by a symmetric eigendecomposition, S's eigenvalues clipped at 0 first (S is
  PSD in exact arithmetic; round-off can make its smallest eigenvalues slightly negative).
- `newton_inverse_root`: (S + δI)^(−1/p) by the coupled Newton iteration (Guo & Higham 2006), which
  the Shampoo paper's implementation and Distributed Shampoo offer beside the eigendecomposition; it
  uses matrix products only, but stops on a tolerance (a host synchronisation per iteration).

Both return NaN where they cannot give a finite answer (an eigenvalue of S + δI that is 0 under a
negative exponent; a Newton iteration that does not converge), so that the optimizer's non-finite
guard keeps the previous preconditioner and counts the fit as rolled back, instead of a silent wrong
value.
"""

from __future__ import annotations

import torch

from precondalg._tensors import finite_each

__all__ = ["newton_inverse_root", "psd_eigh", "psd_power"]


def psd_power(S: torch.Tensor, exponent: float, damping: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(S + δI)^e of a symmetric PSD matrix, by `torch.linalg.eigh`: Q diag((max(λ, 0) + δ)^e) Qᵀ.

    Args:
        S: (n, n) symmetric positive semi-definite (only its lower triangle is read, as by eigh).
        exponent: e, e.g. −1/4 (Shampoo's factor of a matrix), −1 (K-FAC), −1/8 (a Gram factor Q
            with QᵀQ = (S + δI)^(−1/4)).
        damping: δ ≥ 0 added to every eigenvalue (a number or a 0-d tensor).

    Returns:
        (n, n) symmetric: (S + δI)^e; NaN where S holds a non-finite entry (then eigh is not called on
        it) and Inf/NaN where an eigenvalue + δ is 0 under e < 0.

    Examples:
        >>> S = torch.tensor([[4.0, 0.0], [0.0, 16.0]], dtype=torch.float64)
        >>> psd_power(S, -0.5)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.2500]], dtype=torch.float64)
    """
    values, vectors, finite = psd_eigh(S)
    values = (values + damping).pow(exponent)
    values = torch.where(finite, values, torch.full_like(values, torch.nan))
    return (vectors * values) @ vectors.mT


def psd_eigh(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eigendecomposition of a symmetric PSD S with its eigenvalues clipped at 0, safe on non-finite
    input (eigh fails on NaN: it then decomposes I instead, and the caller masks the result with the
    flag, on the device, without a host synchronisation).

    Args:
        S: (n, n) symmetric (only its lower triangle is read, as by eigh).

    Returns:
        (values (n,), vectors (n, n), finite): S = vectors·diag(values)·vectorsᵀ where `finite` (a 0-d
        bool tensor: every entry of S finite), else those of I.
    """
    finite = finite_each([S])[0]
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    values, vectors = torch.linalg.eigh(torch.where(finite, S, eye))
    return values.clamp(min=0), vectors, finite


def newton_inverse_root(
    S: torch.Tensor,
    p: int,
    damping: torch.Tensor | float = 0.0,
    tolerance: float | None = None,
    max_iterations: int = 100,
) -> torch.Tensor:
    """(S + δI)^(−1/p) by the coupled Newton iteration (Guo & Higham 2006, as in Distributed Shampoo's
    ``_matrix_inverse_root_newton``): with A = S + δI, z = (p + 1)/(2‖A‖_F), X₀ = z^(1/p)·I, M₀ = z·A,

        Mₚ = ((p + 1)I − M)/p,   X ← X Mₚ,   M ← Mₚᵖ M,

    until max|M − I| ≤ tolerance; then X = A^(−1/p).

    Args:
        S: (n, n) symmetric positive semi-definite.
        p: the root, an int ≥ 1.
        damping: δ ≥ 0.
        tolerance: the stopping tolerance on max|M − I| (None: 1e-6 in float32 and lower precision,
            1e-12 in float64).
        max_iterations: the most iterations; an iteration that has not converged by then returns NaN.

    Returns:
        (n, n): A^(−1/p), or NaN (not converged, or a non-finite S).

    Raises:
        ValueError: p not an int ≥ 1.
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"newton_inverse_root: 'p' must be an int >= 1; got {p!r}")
    if tolerance is None:
        tolerance = 1e-12 if S.dtype == torch.float64 else 1e-6
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    A = S + damping * eye
    if not bool(torch.isfinite(A).all()):
        return torch.full_like(A, torch.nan)
    z = (p + 1) / (2 * torch.linalg.matrix_norm(A))
    X = z ** (1 / p) * eye
    M = z * A
    for _ in range(max_iterations):
        if float((M - eye).abs().max()) <= tolerance:
            return X
        Mp = ((p + 1) * eye - M) / p
        X = X @ Mp
        M = torch.linalg.matrix_power(Mp, p) @ M
    if float((M - eye).abs().max()) <= tolerance:
        return X
    return torch.full_like(A, torch.nan)
