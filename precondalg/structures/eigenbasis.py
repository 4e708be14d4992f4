"""`Eigenbasis(B, A, S)`: APO's structured preconditioner (Bae et al. 2022, Eqs. 9–10)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from precondalg.structures._base import (
    Cost,
    Structure,
    check_same_kind,
    check_tensor,
    register_structure,
)
from precondalg.structures.kronecker import _apply_factors, _kron

Kernel = Callable[[torch.Tensor], torch.Tensor]


@register_structure
class Eigenbasis(Structure):
    """P̂ = K diag(vec S)² Kᵀ with K = B ⊗ A: APO-Precond's EKFAC-like preconditioner, mn×mn.

    It acts on the row-major vec of an m×n matrix G (a weight's gradient in PyTorch layout, m outputs,
    n inputs) as Eq. 10 of Bae et al. (2022), four matmuls and one elementwise product::

        P̂ @ G.flatten() == (B @ ((B.T @ G @ A) * S * S) @ A.T).flatten()

    In the paper's column-major vec this is Eq. 9, P̂ = (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ; in precondalg's
    row-major convention K = ``Kronecker(Dense(B), Dense(A))`` and P̂ = K diag(S.flatten())² Kᵀ.  P̂ is
    symmetric (``P.T`` is P itself) and PSD for any B, A, S (it is M D Mᵀ with D ⪰ 0); B = I, A = I,
    S = 1 give P̂ = I (APO's initialisation, SGD).  With B, A the eigenvectors of K-FAC's factors and
    S² = 1/(λ_FSD λ_Ḡ,i λ_Ā,j + λ_WSD), P̂ is the damped inverse Fisher (Corollary 2).  A, B and S are
    learned directly (nothing is estimated from statistics); the family `eigenbasis` makes it.

    The solve is P̂⁻¹ = K⁻ᵀ diag(vec S)⁻² K⁻¹, by an LU factorisation of B and of A: it needs B, A
    invertible and S without zeros (not checked: that would synchronise with the device; a singular
    factor or a zero in S gives inf/nan, as `Dense` and `Diagonal` do).  ``inverse(P)`` is the
    `Eigenbasis` (B⁻ᵀ, A⁻ᵀ, 1/S).  Placements `TwoSided` and `Layer` take it as a two-sided operator
    with factor sizes `dims` = (m, n).  Verified by the theory check APO-7 (Eq. 10 against the
    column-major Eq. 9, PSD, m² + n² + mn values, P̂ = I at the identity initialisation).

    Args:
        B: (m, m) floating tensor, the output-side basis.
        A: (n, n) floating tensor, the input-side basis.
        S: (m, n) floating tensor of scales (squared in P̂).

    Examples:
        >>> P = Eigenbasis(torch.eye(2), torch.eye(3), torch.full((2, 3), 2.0))
        >>> P.shape, P.dims, P @ torch.ones(6)
        ((6, 6), (2, 3), tensor([4., 4., 4., 4., 4., 4.]))
    """

    B: torch.Tensor
    A: torch.Tensor
    S: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Eigenbasis", "B", self.B, "(m, m)", 2)
        check_tensor("Eigenbasis", "A", self.A, "(n, n)", 2)
        check_tensor("Eigenbasis", "S", self.S, "(m, n)", 2)
        for name, factor, size in (("B", self.B, "m"), ("A", self.A, "n")):
            if factor.shape[0] != factor.shape[1]:
                raise ValueError(
                    f"Eigenbasis: argument '{name}' must be square, shape ({size}, {size}); got "
                    f"{tuple(factor.shape)}"
                )
        m, n = self.B.shape[0], self.A.shape[0]
        if self.S.shape[0] != m or self.S.shape[1] != n:
            raise ValueError(
                f"Eigenbasis: argument 'S' must have shape (m, n) = ({m}, {n}) for B of shape "
                f"{tuple(self.B.shape)} and A of shape {tuple(self.A.shape)}; got {tuple(self.S.shape)}"
            )
        check_same_kind("Eigenbasis", B=self.B, A=self.A, S=self.S)

    @property
    def dims(self) -> tuple[int, int]:
        """(m, n): the sizes of the Kronecker factors B (output side) and A (input side), the dims of a
        `TwoSided` or `Layer` placement."""
        return (self.B.shape[0], self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.dims
        return (m * n, m * n)

    def _squared_scales(self) -> torch.Tensor:
        """diag(vec S)² as a column: (mn, 1)."""
        return (self.S * self.S).reshape(-1, 1)

    def _sandwich(
        self, outer: list[Kernel], inner: list[Kernel], middle: torch.Tensor, X: torch.Tensor
    ) -> torch.Tensor:
        """outer ∘ diag(middle) ∘ inner on X (mn, k), each of outer and inner a Kronecker of two kernels
        (B's side on the rows of each column's m×n matrix, A's side on its columns)."""
        dims = list(self.dims)
        return _apply_factors(outer, dims, middle * _apply_factors(inner, dims, X, True), True)

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        # Eq. 10: Kᵀ vec(G) = vec(Bᵀ G A), then ⊙ S ⊙ S, then K: vec(B H Aᵀ).
        B, A = self.B, self.A
        return self._sandwich(
            [lambda Y: B @ Y, lambda Y: A @ Y],
            [lambda Y: B.mT @ Y, lambda Y: A.mT @ Y],
            self._squared_scales(),
            X,
        )

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self._mv(X)  # symmetric

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        # P̂⁻¹ = K⁻ᵀ diag(s)⁻² K⁻¹, K⁻¹ vec(G) = vec(B⁻¹ G A⁻ᵀ): one LU factorisation per factor, the
        # _ex variant (no error check, which would synchronise with the device).
        lu_b, piv_b, _ = torch.linalg.lu_factor_ex(self.B)
        lu_a, piv_a, _ = torch.linalg.lu_factor_ex(self.A)

        def solver(lu: torch.Tensor, piv: torch.Tensor, adjoint: bool) -> Kernel:
            return lambda Y: torch.linalg.lu_solve(lu, piv, Y, adjoint=adjoint)

        return self._sandwich(
            [solver(lu_b, piv_b, True), solver(lu_a, piv_a, True)],
            [solver(lu_b, piv_b, False), solver(lu_a, piv_a, False)],
            1 / self._squared_scales(),
            X,
        )

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return self._solve(X)  # symmetric

    def to_dense(self) -> torch.Tensor:
        K = _kron(self.B, self.A)
        return (K * self._squared_scales().mT) @ K.mT

    def cost(self) -> Cost:
        m, n = self.dims
        # Four matmuls (m²n + mn² each pair) and the product with S ⊙ S; the solve adds an LU
        # factorisation of B and of A (⌊m³/3⌋ + ⌊n³/3⌋) and replaces the matmuls by triangular solves.
        apply = 2 * (m * m * n + m * n * n) + m * n
        return Cost(stored=m * m + n * n + m * n, matvec=apply, solve=m**3 // 3 + n**3 // 3 + apply)
