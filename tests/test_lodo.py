"""The LODO preset (Liao et al. 2023): its reductions, its steps against an independent reference of the
authors' algorithm, its variants, its checkpoints and its refusals.

The reference (`reference_run`) is the authors' `training/lodo.py` loop written with dense matrices: G
from explicit permutation matrices and block-diagonal matrices (not the library's kernels), the
meta-gradient by autograd through G(θ)m, torch.optim's Adam/SGD on the blocks.  The preset's first
`step` moves θ (the code's first step, with m₀ = 0, is a no-op); the reference starts the same way.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree
from optim_helpers import TOL64

import precondalg as pa
from precondalg.families import dense, permutation_network_gram, residual_network_gram
from precondalg.optim import LODO

f64 = torch.float64


def quadratic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """H (n×n, SPD, eigenvalues in [0.1, 1]) and a fixed sequence source for the centres."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    H = U @ torch.diag(torch.linspace(0.1, 1.0, n, dtype=f64)) @ U.T
    centres = torch.randn(64, n, generator=gen, dtype=f64)
    return H, centres


def gradient(H: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return H @ (x - c)


def explicit_G(blocks: torch.Tensor, perms, n: int) -> torch.Tensor:
    """EᵀKᵀKE from permutation matrices ((Π x)_j = x_{π(j)}) and dense block-diagonal matrices."""
    width = blocks.shape[1] * blocks.shape[2]
    eye = torch.eye(width, dtype=blocks.dtype)
    K = eye
    for B, perm in zip(blocks, perms):
        K = torch.block_diag(*B) @ eye[list(perm)] @ K
    KE = K[:, :n]
    return KE.T @ KE


def reference_run(H, centres, x0, blocks0, perms, *, lr, meta_lr, beta, steps, meta="adam"):
    """The authors' loop (METHODS §3.2–3.4) on a quadratic with the centre sequence `centres`."""
    n = x0.shape[0]
    blocks = blocks0.clone().requires_grad_(True)
    if meta == "adam":
        meta_opt = torch.optim.Adam([blocks], lr=meta_lr, eps=1e-7)
    else:
        meta_opt = torch.optim.SGD([blocks], lr=meta_lr)
    x, m, m_prev = x0.clone(), torch.zeros(n, dtype=f64), None
    for t in range(steps):
        g = gradient(H, x, centres[t])
        if m_prev is not None:  # ∂ℓ_t(x_t)/∂θ through x_t = x_{t−1} − lr·G(θ)m_{t−1}
            meta_opt.zero_grad()
            step = explicit_G(blocks, perms, n) @ m_prev
            (grad,) = torch.autograd.grad(step, blocks, grad_outputs=-lr * g)
            blocks.grad = grad
            meta_opt.step()
        m = beta * m + (1 - beta) * g
        with torch.no_grad():
            x = x - lr * explicit_G(blocks, perms, n) @ m
        m_prev = m
    return x, blocks.detach()


def run_preset(opt, x, H, centres, steps):
    for t in range(steps):
        x.grad = gradient(H, x.detach(), centres[t])
        opt.step()


@pytest.mark.parametrize("meta", ["adam", "sgd"])
@pytest.mark.parametrize("n, depth, k", [(6, 3, 2), (9, 4, 4), (1, 2, 2)])
def test_steps_equal_the_authors_algorithm(meta, n, depth, k):
    H, centres = quadratic(n, seed=n)
    x = torch.zeros(n, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.3, meta_lr=0.05, beta=0.6, depth=depth, block_size=k, meta_optimizer=meta, seed=3)
    ((_, P0),) = opt.preconditioners()
    A0 = P0.Q
    blocks0, perms = A0.blocks.clone(), A0.perms
    steps = 12
    run_preset(opt, x, H, centres, steps)
    x_ref, blocks_ref = reference_run(
        H, centres, torch.zeros(n, dtype=f64), blocks0, perms, lr=0.3, meta_lr=0.05, beta=0.6, steps=steps,
        meta=meta,
    )
    ((_, P),) = opt.preconditioners()
    assert not torch.allclose(P.Q.blocks, blocks0)  # the blocks moved: not a vacuous comparison
    torch.testing.assert_close(P.Q.blocks, blocks_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.detach(), x_ref, rtol=1e-12, atol=1e-12)


def test_initial_G_is_lr_times_identity_and_the_network_has_the_code_width():
    x = torch.zeros(100, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.27)
    ((_, P),) = opt.preconditioners()
    assert P.Q.blocks.shape == (16, 204 // 4, 4, 4)  # ñ = 204 for n = 100 (the code's rule)
    torch.testing.assert_close(P.to_dense(), torch.eye(100, dtype=f64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("variant", ["diagonal", "global"])
def test_meta_lr_zero_is_the_ema_rule_exactly(variant):
    """θ ← θ − lr·m with m = βm + (1−β)g: bit for bit for the variants whose G₀ = I exactly."""
    H, centres = quadratic(7, seed=1)
    x = torch.zeros(7, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.4, meta_lr=0.0, beta=0.7, variant=variant)
    y, m = torch.zeros(7, dtype=f64), torch.zeros(7, dtype=f64)
    for t in range(10):
        g = gradient(H, y, centres[t])
        m = m.mul(0.7).add(g, alpha=0.3)  # torch's lerp_ is the EMA's own kernel: compare values, not ops
        y = y - 0.4 * m
    run_preset(opt, x, H, centres, 10)
    torch.testing.assert_close(x.detach(), y, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("variant", ["full", "no_momentum"])
def test_meta_lr_zero_full_network_is_the_ema_rule_to_round_off(variant):
    """G₀ = AᵀA = I up to the SVD's round-off (about 1e-16), so the run equals lr·I to round-off."""
    H, centres = quadratic(10, seed=2)
    x = torch.zeros(10, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.4, meta_lr=0.0, variant=variant)
    beta = 0.0 if variant == "no_momentum" else 0.9
    y, m = torch.zeros(10, dtype=f64), torch.zeros(10, dtype=f64)
    for t in range(20):
        g = gradient(H, y, centres[t])
        m = beta * m + (1 - beta) * g
        y = y - 0.4 * m
    run_preset(opt, x, H, centres, 20)
    assert (x.detach() - y).abs().max() <= TOL64 * max(1.0, y.abs().max())
    ((_, P),) = opt.preconditioners()
    torch.testing.assert_close(P.to_dense(), torch.eye(10, dtype=f64), rtol=0, atol=1e-14)  # never moved


def test_permutation_network_vjp_equals_torch_func():
    family = permutation_network_gram(4, 4)
    gen = torch.Generator().manual_seed(0)
    A = family.init((11,), torch.zeros((), dtype=f64), gen)
    A = pa.PermutationNetwork(torch.randn(A.blocks.shape, generator=gen, dtype=f64), A.perms, 11)
    u, c = torch.randn(11, 3, generator=gen, dtype=f64), torch.randn(11, 3, generator=gen, dtype=f64)
    _, pullback = torch.func.vjp(lambda phi: family.form(phi) @ u, A)
    got, want = family.hyper_vjp(A, u, c).blocks, pullback(c)[0].blocks
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_dense_family_vjp_equals_torch_func():
    family = dense(1.0)
    gen = torch.Generator().manual_seed(1)
    G = pa.Dense(torch.randn(5, 5, generator=gen, dtype=f64))
    u, c = torch.randn(5, 2, generator=gen, dtype=f64), torch.randn(5, 2, generator=gen, dtype=f64)
    _, pullback = torch.func.vjp(lambda phi: family.form(phi) @ u, G)
    torch.testing.assert_close(family.hyper_vjp(G, u, c).A, pullback(c)[0].A, rtol=1e-14, atol=1e-14)


def test_residual_variant_is_the_code_operator():
    """G₀ = EᵀRᵀ diag(d) R E with R = ∏(I + diag(w_i)Π_i) from explicit permutation matrices."""
    x = torch.zeros(6, dtype=f64, requires_grad=True)
    opt = LODO([x], variant="residual", depth=5)
    ((_, P),) = opt.preconditioners()
    d, R = P.factors[1:]  # Rᵀ · diag(d) · R
    assert R.weights.shape == (5, 12)  # ñ = 2n for this variant
    eye = torch.eye(12, dtype=f64)
    dense_R = eye
    for w, perm in zip(R.weights, R.perms):
        dense_R = (eye + torch.diag(w) @ eye[list(perm)]) @ dense_R
    RE = dense_R[:, :6]
    torch.testing.assert_close(P.to_dense(), RE.T @ torch.diag(d.d) @ RE, rtol=1e-13, atol=1e-13)
    assert torch.equal(d.d, torch.ones(12, dtype=f64))
    assert 0.2 < R.weights.std().item() * math.sqrt(5) < 2.0  # N(0, 1/N) weights


def test_variants_build_what_they_say():
    def built(**kw):
        x = torch.zeros(5, dtype=f64, requires_grad=True)
        opt = LODO([x], **kw)
        ((_, P),) = opt.preconditioners()
        return P, opt.param_groups[0]["momentum"]

    P, beta = built(variant="diagonal")
    assert isinstance(P, pa.Diagonal) and torch.equal(P.d, torch.ones(5, dtype=f64)) and beta == 0.9
    P, _ = built(variant="global")
    assert isinstance(P, pa.Scalar) and P.alpha.item() == 1.0
    P, _ = built(variant="global", variant_mapping="code")  # the authors' script runs Diagonal
    assert isinstance(P, pa.Diagonal)
    P, beta = built(variant="no_momentum")
    assert isinstance(P, pa.Gram) and isinstance(P.Q, pa.PermutationNetwork) and beta == 0.0
    P, beta = built(variant="no_momentum", variant_mapping="code")  # Residuals, β = 0, N = 64
    assert isinstance(P.factors[-1], pa.ResidualNetwork) and P.factors[-1].weights.shape[0] == 64
    assert beta == 0.0
    P, _ = built(variant="full", depth=3, block_size=2, width=16)
    assert P.Q.blocks.shape == (3, 8, 2, 2)


def test_one_network_over_every_tensor_of_a_group_and_one_per_group():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    w1, b1, w2, b2 = model.parameters()
    opt = LODO([{"params": [w1, b1]}, {"params": [w2, b2], "lr": 0.5}], depth=2)
    nets = [P.Q for _, P in opt.preconditioners()]
    assert [net.n for net in nets] == [8, 3]
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.5]


def test_the_checkpoint_carries_the_permutations():
    """Permutations are drawn from the seed: an optimizer built with another seed takes them from the
    checkpoint and continues exactly."""
    H, centres = quadratic(8, seed=4)
    x = torch.zeros(8, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.3, meta_lr=1e-2, depth=4, block_size=2, seed=0)
    run_preset(opt, x, H, centres, 5)
    saved = opt.state_dict()
    y = x.detach().clone().requires_grad_(True)
    other = LODO([y], lr=0.3, meta_lr=1e-2, depth=4, block_size=2, seed=1)
    assert other.preconditioners()[0][1].Q.perms != opt.preconditioners()[0][1].Q.perms
    other.load_state_dict(saved)
    assert other.preconditioners()[0][1].Q.perms == opt.preconditioners()[0][1].Q.perms
    for t in range(5, 10):
        for p in (x, y):
            p.grad = gradient(H, p.detach(), centres[t])
        opt.step()
        other.step()
    assert torch.equal(x, y)


def test_same_seed_same_run_other_seed_other_network():
    def final(seed):
        H, centres = quadratic(6, seed=5)
        x = torch.zeros(6, dtype=f64, requires_grad=True)
        opt = LODO([x], lr=0.3, meta_lr=1e-2, depth=3, block_size=2, seed=seed)
        run_preset(opt, x, H, centres, 8)
        return x.detach(), pytree.tree_leaves(opt.preconditioners()[0][1])[0]

    (x0, b0), (x1, b1), (_, b2) = final(0), final(0), final(7)
    assert torch.equal(x0, x1) and torch.equal(b0, b1)
    assert not torch.equal(b0, b2)


def test_G_stays_symmetric_positive_semidefinite_while_learning():
    H, centres = quadratic(12, seed=6)
    x = torch.zeros(12, dtype=f64, requires_grad=True)
    opt = LODO([x], lr=0.5, meta_lr=5e-2, depth=4)
    run_preset(opt, x, H, centres, 40)
    ((_, P),) = opt.preconditioners()
    G = P.to_dense()
    assert (G - G.T).abs().max() <= 1e-14 * G.abs().max()
    assert torch.linalg.eigvalsh(G).min() >= -1e-12 * G.abs().max()
    assert (G - torch.eye(12, dtype=f64)).abs().max() > 1e-2  # it learned


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "'lr'"),
        (dict(meta_lr=-1e-3), "'meta_lr'"),
        (dict(beta=1.0), "'beta'"),
        (dict(beta=-0.1), "'beta'"),
        (dict(depth=0), "'depth'"),
        (dict(block_size=0), "'block_size'"),
        (dict(width=0), "'width'"),
        (dict(width=30, block_size=4), "'width' must be a multiple of block_size"),
        (dict(width=8, block_size=4), "'width' must be a multiple of block_size = 4 and at least n = 10"),
        (dict(variant="lbfgs"), "'variant'"),
        (dict(variant_mapping="tf"), "'variant_mapping'"),
        (dict(meta_optimizer="rmsprop"), "'meta_optimizer'"),
        (dict(variant="diagonal", depth=8), "'depth' is not read by variant 'diagonal'"),
        (dict(variant="global", block_size=2), "'block_size' is not read by variant 'global'"),
        (dict(variant="global", width=40), "'width' is not read by variant 'global'"),
        (dict(variant="residual", block_size=2), "'block_size' is not read by variant 'residual'"),
        (
            dict(variant="no_momentum", variant_mapping="code", block_size=2),
            r"'block_size' is not read by variant 'no_momentum' \(built as 'residual'",
        ),
        (dict(variant="no_momentum", beta=0.5), "variant 'no_momentum' has β = 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, match):
    x = torch.zeros(10, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        LODO([x], **kwargs)


def test_a_param_group_cannot_set_lodos_own_arguments():
    x = torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match="'beta'"):
        LODO([{"params": [x], "beta": 0.5}])


def test_residual_network_refuses_bad_parts():
    perms = ((0, 1, 2, 3),)
    with pytest.raises(ValueError, match=r"'weights' must have shape \(N, ñ\)"):
        pa.ResidualNetwork(torch.ones(4), perms, 2)
    with pytest.raises(ValueError, match="must hold N = 1 permutations"):
        pa.ResidualNetwork(torch.ones(1, 4), perms * 2, 2)
    with pytest.raises(ValueError, match=r"perms\[0\] must be a permutation of range\(4\)"):
        pa.ResidualNetwork(torch.ones(1, 4), ((0, 1, 2, 2),), 2)
    with pytest.raises(ValueError, match="'n' must be an int in"):
        pa.ResidualNetwork(torch.ones(1, 4), perms, 5)
    with pytest.raises(pa.NotInvertibleError):
        pa.ResidualNetwork(torch.ones(1, 4), perms, 2).solve(torch.ones(4))


def test_residual_family_refuses_a_narrow_width():
    x = torch.zeros(10, requires_grad=True)
    with pytest.raises(ValueError, match="'width' must be an int at least n = 10"):
        LODO([x], variant="residual", width=6)
    with pytest.raises(ValueError, match="'depth'"):
        residual_network_gram(depth=0)
