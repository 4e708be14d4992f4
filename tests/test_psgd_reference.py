"""PSGD against the published reference implementation, psgd_torch (QUALITY.md §2, "Reference
equivalence"), where the two define the same rule.

psgd_torch 0.6.1 normalises its steps by a lower bound of the spectral norm of R, which is neither of
`LieGroup`'s normalisers (PSGD 2019's max-abs, PSGD 2026's Lipschitz estimate), so the step sizes differ
by a positive scalar by design.  What the two share, and what is compared here, is the relative
gradient R = triu(aaᵀ − bbᵀ) (Eq. 18; per factor for Kronecker) and the multiplicative form
Q ← Q − s·R·Q with s > 0: (Q − Q′)Q⁻¹ must be a positive multiple of precondalg's R.  The
preconditioned gradients P g must agree exactly.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import precondalg as pa
from precondalg.objectives import closed_form_relative_gradient

psgd = pytest.importorskip("psgd_torch.psgd", reason="psgd_torch (a dev dependency) is not installed")

F64 = torch.float64


def _triangular(n: int, gen: torch.Generator) -> torch.Tensor:
    """An upper-triangular Q with a positive diagonal (PSGD's Cholesky-factor convention)."""
    return torch.triu(0.3 * torch.randn(n, n, generator=gen, dtype=F64)) + torch.diag(
        1 + torch.rand(n, generator=gen, dtype=F64)
    )


def _assert_positive_multiple(D: torch.Tensor, R: torch.Tensor) -> None:
    """D = s·R with s > 0, to float64 round-off."""
    s = (D * R).sum() / (R * R).sum()
    assert s > 0
    assert (D - s * R).abs().max() <= 1e-10 * D.abs().max()


def _step_direction(Q: torch.Tensor, Q_new: torch.Tensor) -> torch.Tensor:
    """(Q − Q′)Q⁻¹ for a step Q′ = Q − s·R·Q."""
    return torch.linalg.solve_triangular(Q, Q - Q_new, upper=True, left=False)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_dense_update_and_preconditioned_gradient(seed, sizes):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    Q = _triangular(n, gen)
    dxs = [torch.randn(k, generator=gen, dtype=F64) for k in sizes]
    dgs = [torch.randn(k, generator=gen, dtype=F64) for k in sizes]
    Q_ref = psgd.update_precond_dense(Q.clone(), dxs, dgs, 0.1)
    R = closed_form_relative_gradient(pa.Triangular(Q), torch.cat(dgs)[:, None], torch.cat(dxs)[:, None])
    _assert_positive_multiple(_step_direction(Q, Q_ref), R.to_dense())

    grads = [torch.randn(k, generator=gen, dtype=F64) for k in sizes]
    ours = pa.gram(pa.Triangular(Q)) @ torch.cat(grads)
    ref = torch.cat([g.reshape(-1) for g in psgd.precond_grad_dense(Q, grads)])
    assert (ours - ref).abs().max() <= 1e-12 * ref.abs().max()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 4), n=st.integers(2, 5))
def test_kronecker_update_and_preconditioned_gradient(seed, m, n):
    """psgd_torch's dense⊗dense Kronecker rule (Eq. 23: Q₁ᵀQ₁ G Q₂ᵀQ₂) against `Kronecker(Q₁, Q₂)` on
    the row-major vec(G): per factor, its step direction is a positive multiple of our term."""
    gen = torch.Generator().manual_seed(seed)
    Ql, Qr = _triangular(m, gen), _triangular(n, gen)
    dX, dG = torch.randn(m, n, generator=gen, dtype=F64), torch.randn(m, n, generator=gen, dtype=F64)
    rho = torch.sqrt(Ql.diag().max() / Qr.diag().max())  # psgd_torch balances the factors first
    Ql_ref, Qr_ref = psgd.update_precond_kron(Ql.clone(), Qr.clone(), dX, dG, 0.1)
    Q = pa.Kronecker(pa.Triangular(Ql), pa.Triangular(Qr))
    R = closed_form_relative_gradient(Q, dG.reshape(-1, 1), dX.reshape(-1, 1))
    _assert_positive_multiple(_step_direction(Ql / rho, Ql_ref), R.terms[0].to_dense())
    _assert_positive_multiple(_step_direction(Qr * rho, Qr_ref), R.terms[1].to_dense())

    G = torch.randn(m, n, generator=gen, dtype=F64)
    ours = (pa.gram(Q) @ G.reshape(-1)).reshape(m, n)
    ref = psgd.precond_grad_kron(Ql, Qr, G)
    assert (ours - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_lie_group_fitter_steps_along_the_reference_direction():
    """Our fitter's step (max-abs normaliser, autograd relative gradient) and psgd_torch's agree up to
    the positive step scale."""
    gen = torch.Generator().manual_seed(3)
    Q = _triangular(5, gen)
    h, v = torch.randn(5, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)
    leaves, spec = torch.utils._pytree.tree_flatten(pa.Triangular(Q))
    leaves = [leaf.clone() for leaf in leaves]
    euclidean = torch.func.grad(lambda T: pa.objectives.criterion(pa.gram(T), h[:, None], v[:, None]))(
        pa.Triangular(Q)
    )
    pa.fitters.LieGroup(lr=0.1).build(leaves, spec).step(torch.utils._pytree.tree_leaves(euclidean))
    Q_ref = psgd.update_precond_dense(Q.clone(), [v], [h], 0.1)
    _assert_positive_multiple(_step_direction(Q, leaves[0]), _step_direction(Q, Q_ref))
