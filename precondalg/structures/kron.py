"""`kron(*structures)`: A₁ ⊗ A₂ ⊗ …, flattening nested Kronecker products."""

from __future__ import annotations

from precondalg.structures._base import Structure
from precondalg.structures.kronecker import Kronecker


def kron(*structures: Structure) -> Kronecker:
    """The Kronecker product A₁ ⊗ A₂ ⊗ … (row-major convention, see `Kronecker`).

    Nested Kronecker operands are flattened, so ``kron(kron(A, B), C)`` is ``Kronecker(A, B, C)``.
    Always a `Kronecker`: a product of k factors stores Σ stored(A_i) values, never their product.
    """
    factors: list[Structure] = []
    for s in structures:
        factors.extend(s.factors if isinstance(s, Kronecker) else (s,))
    return Kronecker(*factors)
