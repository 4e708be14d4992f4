"""`ResidualNetwork(weights, perms, n)`: LODO-Residuals' product of identity-plus-permutation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from precondalg.structures._base import (
    INTEGERS,
    Cost,
    Structure,
    check_tensor,
    not_invertible,
    register_structure,
    static_field,
)
from precondalg.structures.permutation import _index, _inverse_index, checked_permutations


@register_structure
class ResidualNetwork(Structure):
    """R E = (I + D_N Π_N) ⋯ (I + D_1 Π_1) E: LODO-Residuals' operator (Liao et al. 2023, §5.3), ñ×n.

    E = [Iₙ; 0] embeds Rⁿ into R^ñ by zero padding.  Layer i adds to its input the input permuted,
    ``(Π_i x)_j = x_{perms[i][j]}`` (a gather), and scaled entry-wise by D_i = diag(weights[i]).
    LODO-Residuals' preconditioner is ``α₀ EᵀRᵀ diag(d) R E`` (the family `residual_network_gram`),
    which is symmetric, and PSD while d ≥ 0.  A matvec costs N·ñ multiply-adds.

    Args:
        weights: (N, ñ) floating tensor of learned layer weights (w_i).
        perms: N permutations of range(ñ), as sequences of ints (static: stored as tuples).
        n: the input dimension, 1 ≤ n ≤ ñ.

    Examples:
        >>> R = residual_network(3, depth=2, generator=torch.Generator().manual_seed(0))
        >>> R.shape
        (6, 3)
    """

    weights: torch.Tensor
    perms: tuple[tuple[int, ...], ...] = static_field()
    n: int = static_field()

    def __post_init__(self) -> None:
        check_tensor("ResidualNetwork", "weights", self.weights, "(N, ñ)", 2)
        depth, width = self.weights.shape
        perms = checked_permutations(
            "ResidualNetwork", self.perms, depth, width, layers=f" of 'weights' {tuple(self.weights.shape)}"
        )
        object.__setattr__(self, "perms", perms)
        if not isinstance(self.n, INTEGERS) or not 1 <= self.n <= width:
            raise ValueError(f"ResidualNetwork: argument 'n' must be an int in [1, {width}]; got {self.n!r}")

    @property
    def width(self) -> int:
        """ñ, the hidden width."""
        return self.weights.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.width, self.n)

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.pad(X, (0, 0, 0, self.width - self.n))
        for w, perm in zip(self.weights, self.perms):
            Y = Y + w[:, None] * Y.index_select(0, _index(perm, Y.device))
        return Y

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        # (I + DΠ)ᵀ y = y + Πᵀ(D y), and Πᵀ is the gather by the inverse permutation.
        Y = X
        for w, perm in zip(reversed(self.weights), reversed(self.perms)):
            Y = Y + (w[:, None] * Y).index_select(0, _inverse_index(perm, Y.device))
        return Y[: self.n]

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, f"it is {self.width}×{self.n}; LODO-Residuals uses EᵀRᵀ diag(d) R E")

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, f"it is {self.width}×{self.n}; LODO-Residuals uses EᵀRᵀ diag(d) R E")

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=self.weights.dtype, device=self.weights.device)
        return self._mv(eye)

    def cost(self) -> Cost:
        return Cost(stored=self.weights.numel(), matvec=self.weights.numel(), solve=None)


def residual_network(
    n: int,
    depth: int = 64,
    *,
    width: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ResidualNetwork:
    """LODO-Residuals' initialisation (the authors' code): random permutations, weights N(0, 1/N).

    Args:
        n: input dimension.
        depth: N, the number of layers (the code's 64).
        width: ñ; defaults to 2n (the code's rule for this variant).  At least n.
        generator: the random generator for the permutations and weights.
        dtype: dtype of the weights (default: torch's default dtype).
        device: device of the weights.

    Returns:
        A `ResidualNetwork` of shape (ñ, n); the weights have standard deviation 1/√N, so R is only
        near the identity at the start (the code's choice).
    """
    width = 2 * n if width is None else width
    if not isinstance(width, INTEGERS) or width < n:
        raise ValueError(f"residual_network: 'width' must be an int at least n = {n}; got {width!r}")
    perms = tuple(tuple(torch.randperm(width, generator=generator).tolist()) for _ in range(depth))
    weights = torch.randn(depth, width, generator=generator, dtype=torch.float64) / depth**0.5
    return ResidualNetwork(weights.to(dtype=dtype or torch.get_default_dtype(), device=device), perms, n)
