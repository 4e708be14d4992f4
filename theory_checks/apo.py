"""APO (Bae 2022) theory checks: APO-7, the structured preconditioner of Eqs. 9–10.

The paper writes P = (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ with column-major vec and W ∈ R^{m×n}
(METHODS.md §4.5).  precondalg's `Kronecker` is row-major, so the same operator on ``G.flatten()`` is
``K diag(S.flatten())² Kᵀ`` with ``K = Kronecker(Dense(B), Dense(A))``, built here as
``gram(Diagonal(S.flatten()) @ K.T)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import precondalg as pa
from theory_checks._numerics import E_ATOL, E_RTOL, E_TOL, dense_of, generator, min_eig_rel, rel_err
from theory_checks.registry import Measures, Outcome, check

Builder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], pa.Structure]
SHAPES = ((1, 1), (1, 4), (3, 1), (2, 3), (3, 2), (4, 4))
"""(m, n) shapes of W checked by APO-7 (THEORY.md §6: m, n ∈ [1, 4])."""


def structured_preconditioner(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor) -> pa.Structure:
    """APO's Eq. 9 preconditioner in precondalg's row-major form: (B ⊗ A) diag(vec_r S)² (B ⊗ A)ᵀ.

    Args:
        A: (n, n) input-side factor.
        B: (m, m) output-side factor.
        S: (m, n) scales.

    Returns:
        An mn×mn structure acting on ``G.flatten()`` for G of shape (m, n).
    """
    K = pa.Kronecker(pa.Dense(B), pa.Dense(A))
    return pa.gram(pa.Diagonal(S.flatten()) @ K.T)


def fast_form(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """APO Eq. 10: B [(Bᵀ G A) ⊙ S ⊙ S] Aᵀ, four matmuls and one elementwise product."""
    return B @ ((B.mT @ G @ A) * S * S) @ A.mT


def column_major_form(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 9 literally: dense (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ on the column-major vec(G)."""
    m, n = G.shape
    K = torch.kron(A, B)
    P = K @ torch.diag(S.mT.reshape(-1) ** 2) @ K.mT
    return (P @ G.mT.reshape(-1)).reshape(n, m).mT


def _column_kron_preconditioner(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor) -> pa.Structure:
    """Mutant: the column-major kron A ⊗ B applied to the row-major vec."""
    K = pa.Kronecker(pa.Dense(A), pa.Dense(B))
    return pa.gram(pa.Diagonal(S.flatten()) @ K.T)


def _unsquared_preconditioner(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor) -> pa.Structure:
    """Mutant: diag(vec S) instead of diag(vec S)² (indefinite when S has mixed signs)."""
    K = pa.Kronecker(pa.Dense(B), pa.Dense(A))
    return pa.compose(pa.compose(K, pa.Diagonal(S.flatten())), K.T)


@check(
    id="APO-7",
    paper="APO Eqs. 9-10 (Bae 2022)",
    statement=(
        "P = (A⊗B) diag(vec S)² (A⊗B)ᵀ equals the fast form B[(BᵀGA)⊙S⊙S]Aᵀ, is PSD, stores "
        "m²+n²+mn values, and is the identity at A=I, B=I, S=1."
    ),
    tolerance=f"{E_TOL}; λ_min/‖P‖ >= -1e-12; exact: parameter count",
    provenance="PAPER+DERIVED",
    mutants={
        "row-major vec with the column-major kron A⊗B": {"preconditioner": _column_kron_preconditioner},
        "S unsquared: diag(vec S)": {"preconditioner": _unsquared_preconditioner},
    },
)
def apo_7(
    preconditioner: Builder = structured_preconditioner,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    seed: int = 7,
) -> Outcome:
    """APO-7 (THEORY.md §5): properties of APO's structured preconditioner, Eqs. 9–10.

    For each (m, n), random A, B, G and S with mixed signs: Eq. 10 against ``P @ G.flatten()`` and
    against the paper's column-major dense form; λ_min of the dense P (operator on basis vectors);
    ``cost().stored``; and the identity initialisation.
    """
    gen, out = generator(seed), Measures()
    fast_err, dense_err, lam, count_err, init_err = 0.0, 0.0, float("inf"), 0, 0.0
    for m, n in shapes:
        A, B = torch.randn(n, n, generator=gen), torch.randn(m, m, generator=gen)
        S, G = torch.randn(m, n, generator=gen), torch.randn(m, n, generator=gen)
        P = preconditioner(A, B, S)
        fast = fast_form(A, B, S, G)
        fast_err = max(fast_err, rel_err((P @ G.flatten()).reshape(m, n), fast))
        dense_err = max(dense_err, rel_err(fast, column_major_form(A, B, S, G)))
        lam = min(lam, min_eig_rel(dense_of(P)))
        count_err = max(count_err, abs(P.cost().stored - (m * m + n * n + m * n)))
        identity = preconditioner(torch.eye(n), torch.eye(m), torch.ones(m, n))
        init_err = max(init_err, rel_err(dense_of(identity), torch.eye(m * n)))
    out.at_most("max rel. error, P @ vec(G) vs Eq. 10 fast form", fast_err, E_RTOL)
    out.at_most("max rel. error, Eq. 10 vs column-major torch.kron form", dense_err, E_RTOL)
    out.at_least("min λ_min(P)/‖P‖", lam, -E_ATOL)
    out.equal("max |cost().stored − (m²+n²+mn)|", count_err, 0)
    out.at_most("max rel. error, identity init vs I", init_err, E_RTOL)
    out.details["shapes (m, n)"] = [list(s) for s in shapes]
    return out.outcome()
