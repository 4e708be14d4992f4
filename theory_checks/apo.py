"""APO (Bae 2022) theory checks: APO-7, the structured preconditioner of Eqs. 9–10, and APO-8, the
meta-gradient of the proximal objective through the one-step unroll.

The paper writes P = (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ with column-major vec and W ∈ R^{m×n}
(Bae 2022, Eq. 9).  precondalg's `Kronecker` is row-major, so the same operator on ``G.flatten()`` is
``K diag(S.flatten())² Kᵀ`` with ``K = Kronecker(Dense(B), Dense(A))``: the library's class
`precondalg.structures.Eigenbasis` (B, A, S), which APO-7 checks.  The mutants are compositions of
`Kronecker`, `Diagonal` and `gram` that get the convention or the square wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import precondalg as pa
from theory_checks._apo import Recorder
from theory_checks._numerics import (
    E_ATOL,
    E_RTOL,
    E_TOL,
    central_diff,
    dense_of,
    generator,
    min_eig_rel,
    rel_err,
)
from theory_checks.registry import Measures, Outcome, check

Builder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], pa.Structure]
SHAPES = ((1, 1), (1, 4), (3, 1), (2, 3), (3, 2), (4, 4))
"""(m, n) shapes of W checked by APO-7 (m, n ∈ [1, 4], corners included)."""


def structured_preconditioner(A: torch.Tensor, B: torch.Tensor, S: torch.Tensor) -> pa.Structure:
    """APO's Eq. 9 preconditioner in precondalg's row-major form, (B ⊗ A) diag(vec_r S)² (B ⊗ A)ᵀ: the
    library's `Eigenbasis`.

    Args:
        A: (n, n) input-side factor.
        B: (m, m) output-side factor.
        S: (m, n) scales.

    Returns:
        An mn×mn `Eigenbasis` acting on ``G.flatten()`` for G of shape (m, n).
    """
    return pa.Eigenbasis(B, A, S)


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
        "Identities for P = (A⊗B) diag(vec S)² (A⊗B)ᵀ as a precondalg structure, 6 shapes: P vec(G) equals "
        "the fast form B[(BᵀGA)⊙S⊙S]Aᵀ and the paper's column-major form, P is PSD, cost() declares "
        "m²+n²+mn stored values, and P = I at A=I, B=I, S=1."
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
    """APO-7 (Bae 2022, Eqs. 9–10): properties of APO's structured preconditioner.

    For each (m, n), random A, B, G and S with mixed signs: ``P @ G.flatten()`` of the library's
    structure against Eq. 10 and against the paper's column-major dense form of Eq. 9; λ_min of the
    dense P (operator on basis vectors); ``cost().stored``; and the identity initialisation.
    """
    gen, out = generator(seed), Measures()
    fast_err, dense_err, lam, count_err, init_err = 0.0, 0.0, float("inf"), 0, 0.0
    for m, n in shapes:
        A, B = torch.randn(n, n, generator=gen), torch.randn(m, m, generator=gen)
        S, G = torch.randn(m, n, generator=gen), torch.randn(m, n, generator=gen)
        P = preconditioner(A, B, S)
        applied = (P @ G.flatten()).reshape(m, n)
        fast_err = max(fast_err, rel_err(applied, fast_form(A, B, S, G)))
        dense_err = max(dense_err, rel_err(applied, column_major_form(A, B, S, G)))
        lam = min(lam, min_eig_rel(dense_of(P)))
        count_err = max(count_err, abs(P.cost().stored - (m * m + n * n + m * n)))
        identity = preconditioner(torch.eye(n), torch.eye(m), torch.ones(m, n))
        init_err = max(init_err, rel_err(dense_of(identity), torch.eye(m * n)))
    out.at_most("max rel. error, P @ vec(G) vs Eq. 10 fast form", fast_err, E_RTOL)
    out.at_most("max rel. error, P @ vec(G) vs Eq. 9's column-major kron form", dense_err, E_RTOL)
    out.at_least("min λ_min(P)/‖P‖", lam, -E_ATOL)
    out.equal("max |cost().stored − (m²+n²+mn)|", count_err, 0)
    out.at_most("max rel. error, identity init vs I", init_err, E_RTOL)
    out.details["shapes (m, n)"] = [list(s) for s in shapes]
    return out.outcome()


# ----- APO-8: the meta-gradient through the one-step unroll -----

_SIZES = (3, 4, 2)
"""The tanh MLP of APO-8: 3 inputs, 4 hidden units, 2 outputs, no biases (20 parameters)."""


def _mlp(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The APO-8 model written directly in the flat parameters u (independent of torch.nn)."""
    n_in, n_hidden, n_out = _SIZES
    W1 = u[: n_hidden * n_in].reshape(n_hidden, n_in)
    W2 = u[n_hidden * n_in :].reshape(n_out, n_hidden)
    return torch.tanh(x @ W1.mT) @ W2.mT


def _squared(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).square().sum(-1).mean()


def _proximal_q(
    u: torch.Tensor,
    theta: torch.Tensor,
    batch: tuple,
    fsd_inputs: torch.Tensor,
    lam_fsd: float,
    lam_wsd: float,
) -> torch.Tensor:
    """APO Eq. 8 at the lookahead u, written out: J_B(u) + λ_F·½‖f(B′,u) − f(B′,θ)‖²/|B′| + λ_W/2‖u − θ‖²."""
    x, y = batch
    fsd = 0.5 * (_mlp(u, fsd_inputs) - _mlp(theta, fsd_inputs).detach()).square().sum() / fsd_inputs.shape[0]
    return _squared(_mlp(u, x), y) + lam_fsd * fsd + 0.5 * lam_wsd * (u - theta).square().sum()


def _meta_gradient_by_optimizer(
    family: pa.families.Family,
    base: str,
    position: str,
    theta: torch.Tensor,
    batch: tuple,
    fsd_batch: torch.Tensor,
    lam_fsd: float,
    lam_wsd: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One `Preconditioned` step with the `Proximal` objective, plain SGD (lr 1) on φ and base lr 0:
    returns ∂Q/∂φ = φ₀ − φ₁ and the vector the preconditioner was applied to (g or the base direction)."""
    n_in, n_hidden, n_out = _SIZES
    model = torch.nn.Sequential(
        torch.nn.Linear(n_in, n_hidden, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(n_hidden, n_out, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(theta[: n_hidden * n_in].reshape(n_hidden, n_in))
        model[2].weight.copy_(theta[n_hidden * n_in :].reshape(n_out, n_hidden))
    objective = Recorder(
        pa.objectives.Proximal(model, _squared, fsd="squared", lam_fsd=lam_fsd, lam_wsd=lam_wsd)
    )
    opt = pa.optim.Preconditioned(
        model.parameters(),
        lr=0.0,
        structure=family,
        placement=pa.placement.Concatenated(),
        objective=objective,
        fitter=pa.fitters.TorchOptimizer(torch.optim.SGD, lr=1.0),
        base=base,
        position=position,
    )
    phi0 = [leaf.clone() for leaf in next(iter(opt.state.values()))["preconditioner"]["phi"]]
    x, y = batch
    _squared(model(x), y).backward()
    opt.step(batch=batch, fsd_batch=fsd_batch)
    pre = next(iter(opt.state.values()))["preconditioner"]
    ((block,), _) = objective.seen[0]
    return phi0[0] - pre["phi"][0], block.lookahead.reshape(-1)


def _routes_as_configured(batch: tuple, fsd_batch: torch.Tensor) -> tuple[tuple, torch.Tensor]:
    return batch, fsd_batch


def _fsd_on_b(batch: tuple, fsd_batch: torch.Tensor) -> tuple[tuple, torch.Tensor]:
    """Mutant: the FSD evaluated on the training batch B instead of B′."""
    return batch, batch[0]


def _loss_on_b_prime(batch: tuple, fsd_batch: torch.Tensor) -> tuple[tuple, torch.Tensor]:
    """Mutant: the loss term on another batch (Wu et al.'s meta-objective, App. D Eq. 13)."""
    x, y = batch
    return (x.flip(0) + 0.5, y.flip(0)), fsd_batch


@check(
    id="APO-8",
    paper="APO Eq. 8 and footnote 1 (Bae 2022)",
    statement=(
        "Closed form: the Proximal objective's meta-gradient, as Preconditioned takes it through the "
        "one-step unroll u = θ − P g, is ∂Q/∂P = −[∇J_B(u) + λ_F∇FSD(u) + λ_W(u − θ)]gᵀ (also vs central "
        "differences) and ∂Q/∂η = −[∇J_B(u) + λ_F∇FSD(u)]ᵀg + λ_Wη‖g‖², with the base optimizer's "
        "(Adam's) state held fixed."
    ),
    tolerance=f"{E_TOL} vs the closed form; 1e-7 vs central differences",
    provenance="DERIVED",
    mutants={
        "FSD computed on batch B rather than B′": {"route": _fsd_on_b},
        "loss term on a different batch": {"route": _loss_on_b_prime},
    },
)
def apo_8(
    route: Callable[[tuple, torch.Tensor], tuple[tuple, torch.Tensor]] = _routes_as_configured,
    lam_fsd: float = 0.7,
    lam_wsd: float = 0.3,
    seed: int = 8,
) -> Outcome:
    """APO-8 (Bae 2022, Eq. 8 and footnote 1): the `Proximal` objective's meta-gradient, taken by
    `Preconditioned`.

    A dense P (P = φ, n = 20 parameters of a tanh MLP) and a learning rate (P = ηI) are fitted by one
    plain-SGD step of lr 1, so φ₀ − φ₁ is ∂Q/∂φ; it is compared with the closed forms built from
    ∇_uQ of an independent implementation of Eq. 8, and (dense P) with central differences of that
    implementation.  With base Adam at position "direction", g is replaced by Adam's direction d: the
    optimizer state is a constant of the unroll (footnote 1).
    """
    gen, out = generator(seed), Measures()
    n = sum(a * b for a, b in zip(_SIZES, _SIZES[1:]))
    theta = torch.randn(n, generator=gen)
    batch = (torch.randn(8, _SIZES[0], generator=gen), torch.randn(8, _SIZES[-1], generator=gen))
    fsd_batch = torch.randn(5, _SIZES[0], generator=gen)
    P0 = torch.eye(n) + 0.1 * torch.randn(n, n, generator=gen)
    loss_batch, fsd_inputs = route(batch, fsd_batch)

    def q_of(P: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return _proximal_q(theta - P @ g, theta, batch, fsd_batch, lam_fsd, lam_wsd)

    def grad_u(u0: torch.Tensor, lam_f: float, lam_w: float) -> torch.Tensor:
        u = u0.clone().requires_grad_()
        with torch.enable_grad():
            (g_u,) = torch.autograd.grad(_proximal_q(u, theta, batch, fsd_batch, lam_f, lam_w), u)
        return g_u

    dense = pa.families.Family(init=lambda dims, like, gen_: pa.Dense(P0.clone()))
    errors = {}
    for base, position in (("sgd", "gradient"), ("adam", "direction")):
        meta, g = _meta_gradient_by_optimizer(
            dense, base, position, theta, loss_batch, fsd_inputs, lam_fsd, lam_wsd
        )
        closed = -torch.outer(grad_u(theta - P0 @ g, lam_fsd, lam_wsd), g)
        errors[base] = rel_err(meta, closed)
        if base == "sgd":
            fd = central_diff(lambda P, g=g: q_of(P, g), P0, 1e-6)
            out.at_most("rel. error, ∂Q/∂P vs central differences (base SGD)", rel_err(meta, fd), 1e-7)
    out.at_most("rel. error, ∂Q/∂P vs closed form (base SGD)", errors["sgd"], E_RTOL)
    out.at_most(
        "rel. error, ∂Q/∂P vs closed form with Adam's direction (state fixed)", errors["adam"], E_RTOL
    )

    eta = 0.05
    scalar = pa.families.scalar(eta)
    meta_eta, g = _meta_gradient_by_optimizer(
        scalar, "sgd", "gradient", theta, loss_batch, fsd_inputs, lam_fsd, 0.0
    )
    u = theta - eta * g
    closed_eta = -grad_u(u, lam_fsd, 0.0) @ g  # λ_W = 0: the loss and FSD terms alone
    meta_w, _ = _meta_gradient_by_optimizer(
        scalar, "sgd", "gradient", theta, loss_batch, fsd_inputs, 0.0, lam_wsd
    )
    closed_w = -grad_u(u, 0.0, 0.0) @ g + lam_wsd * eta * g.square().sum()
    out.at_most("rel. error, ∂Q/∂η vs −[∇J_B + λ_F∇FSD]ᵀg (λ_W = 0)", rel_err(meta_eta, closed_eta), E_RTOL)
    out.at_most("rel. error, ∂Q/∂η vs −∇J_Bᵀg + λ_Wη‖g‖² (λ_F = 0)", rel_err(meta_w, closed_w), E_RTOL)
    return out.outcome()
