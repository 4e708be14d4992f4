"""`IdentityPlusLowRank(U, V)`: I + UVᵀ, with a Woodbury solve."""

from __future__ import annotations

import torch

from precondalg.structures._base import (
    Cost,
    Structure,
    check_same_kind,
    check_tensor,
    register_structure,
)


@register_structure
class IdentityPlusLowRank(Structure):
    """I + UVᵀ: the identity plus a rank-r correction.

    Low-rank FOP's P = I + MᵀM is ``IdentityPlusLowRank(M.T, M.T)`` (Moskovitz et al. 2019,
    Eq. 5 as reconstructed); psgd_torch's LRA preconditioner is (I + UVᵀ)diag(d).  The solve uses the Woodbury
    identity (I + UVᵀ)⁻¹ = I − U(I_r + VᵀU)⁻¹Vᵀ, which costs an r×r solve.

    Args:
        U: (n, r) floating tensor.
        V: (n, r) floating tensor.

    Examples:
        >>> u = torch.tensor([[1.0], [0.0]])
        >>> IdentityPlusLowRank(u, u).to_dense()
        tensor([[2., 0.],
                [0., 1.]])
    """

    U: torch.Tensor
    V: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("IdentityPlusLowRank", "U", self.U, "(n, r)", 2)
        check_tensor("IdentityPlusLowRank", "V", self.V, "(n, r)", 2)
        if self.U.shape != self.V.shape:
            raise ValueError(
                "IdentityPlusLowRank: arguments 'U' and 'V' must have the same shape (n, r); got "
                f"U {tuple(self.U.shape)} and V {tuple(self.V.shape)}"
            )
        check_same_kind("IdentityPlusLowRank", U=self.U, V=self.V)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.U.shape[0])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return X + self.U @ (self.V.mT @ X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return X + self.V @ (self.U.mT @ X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return X - self.U @ torch.linalg.solve(self._capacitance(), self.V.mT @ X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return X - self.V @ torch.linalg.solve(self._capacitance().mT, self.U.mT @ X)

    def _capacitance(self) -> torch.Tensor:
        """I_r + VᵀU, the r×r matrix of the Woodbury identity."""
        r = self.U.shape[1]
        return torch.eye(r, dtype=self.U.dtype, device=self.U.device) + self.V.mT @ self.U

    def to_dense(self) -> torch.Tensor:
        n = self.U.shape[0]
        return torch.eye(n, dtype=self.U.dtype, device=self.U.device) + self.U @ self.V.mT

    def cost(self) -> Cost:
        n, r = self.U.shape
        # Woodbury: VᵀX (nr), capacitance VᵀU (nr²) and its LU (r³/3 + r²), then U·(…) (nr).
        return Cost(stored=2 * n * r, matvec=2 * n * r, solve=2 * n * r + n * r * r + r**3 // 3 + r * r)
