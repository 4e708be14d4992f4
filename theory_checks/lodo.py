"""LODO (Liao 2023) theory checks: LODO-1 (G = α₀I at init, symmetric PSD) and LODO-2 (cost).

LODO's preconditioner is G(θ) = α₀ EᵀAᵀAE with A = B_N Π_N ⋯ B_1 Π_1 (Liao 2023, Eq. 2):
in precondalg ``scale(gram(A), α₀)`` for a `PermutationNetwork` A.  Mutants replace A's forward or
transpose kernel (`_mv` / `_rmv`) on one instance, so every other piece stays the real one.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import precondalg as pa
from theory_checks._numerics import E_RTOL, E_TOL, dense_of, generator, min_eig_rel, rel_err, sym_err
from theory_checks.registry import Measures, Outcome, check

Kernel = Callable[[pa.PermutationNetwork, torch.Tensor], torch.Tensor]
REAL_MV: Kernel = pa.PermutationNetwork._mv
REAL_RMV: Kernel = pa.PermutationNetwork._rmv
"""The library's kernels (A x and Aᵀ x): the defaults of LODO-1 and LODO-2."""
ALPHA0 = 0.5
"""α₀ used by LODO-1 (any positive value; the code's default is 1.0)."""
EDGE_CONFIGS = ((1, 1, 2), (1, 16, 4), (40, 16, 4), (40, 1, 2), (2, 16, 2), (20, 8, 4))
"""(n, N, k) corners of the ranges checked: n ∈ [1, 40], N ∈ [1, 16], k ∈ {2, 4}."""
COST_CONFIGS = ((1, 1, 2), (10, 4, 4), (40, 16, 4), (100, 16, 4))
"""(n, N, k) of LODO-2; (100, 16, 4) is the code's default depth and block at n = 100 (ñ = 204)."""


def with_kernels(A: pa.PermutationNetwork, mv: Kernel, rmv: Kernel) -> pa.PermutationNetwork:
    """A copy of A whose matvec kernels are `mv` (A x) and `rmv` (Aᵀ x), set on that instance only.

    With ``mv = PermutationNetwork._mv`` and ``rmv = PermutationNetwork._rmv`` (the defaults of the
    checks) the copy behaves exactly like A; `gram`, `scale` and ``@`` call the instance's kernels.
    """
    B = pa.PermutationNetwork(A.blocks, A.perms, A.n)
    object.__setattr__(B, "_mv", types.MethodType(mv, B))
    object.__setattr__(B, "_rmv", types.MethodType(rmv, B))
    return B


def _transpose_kernel(*, inverse_perms: bool, transpose_blocks: bool) -> Kernel:
    """A transpose-half kernel with the permutation and block conventions chosen (for mutants)."""

    def rmv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
        k, Y = self.blocks.shape[-1], X
        for B, perm in zip(reversed(self.blocks), reversed(self.perms)):
            W = B.mT if transpose_blocks else B
            Y = (W @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
            index = torch.tensor(perm)
            Y = Y[torch.argsort(index) if inverse_perms else index]
        return Y[: self.n]

    return rmv


def _dense_layer_mv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Mutant forward kernel: each block-diagonal layer materialised as a dense ñ×ñ matrix."""
    Y = F.pad(X, (0, 0, 0, self.width - self.n))
    for B, perm in zip(self.blocks, self.perms):
        Y = torch.block_diag(*B) @ Y[torch.tensor(perm)]
    return Y


def _dense_layer_rmv(self: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Mutant transpose kernel: dense ñ×ñ layers, inverse permutations."""
    Y = X
    for B, perm in zip(reversed(self.blocks), reversed(self.perms)):
        Y = (torch.block_diag(*B).mT @ Y)[torch.argsort(torch.tensor(perm))]
    return Y[: self.n]


def explicit_G(A: pa.PermutationNetwork, alpha0: float) -> torch.Tensor:
    """α₀ EᵀKᵀKE built from explicit matrices: permutation matrices (Π x)_j = x_{π(j)}, dense
    block-diagonal B_i, and the zero-padding E = [Iₙ; 0] (Liao 2023, Eq. 2), independent of the kernels."""
    width = A.width
    eye = torch.eye(width)
    K = eye
    for B, perm in zip(A.blocks, A.perms):
        K = torch.block_diag(*B) @ eye[list(perm)] @ K
    KE = K[:, : A.n]
    return alpha0 * KE.mT @ KE


def _configs(gen: torch.Generator, draws: int) -> list[tuple[int, int, int]]:
    """EDGE_CONFIGS plus `draws` random (n, N, k) with n ∈ [1, 40], N ∈ [1, 16], k ∈ {2, 4}."""
    n = torch.randint(1, 41, (draws,), generator=gen).tolist()
    N = torch.randint(1, 17, (draws,), generator=gen).tolist()
    k = (2 * torch.randint(1, 3, (draws,), generator=gen)).tolist()
    return [*EDGE_CONFIGS, *zip(n, N, k)]


@check(
    id="LODO-1",
    paper="LODO Eq. 2 + code (Liao 2023)",
    statement=(
        "Identities and PSD for G = α₀·gram(A), A a PermutationNetwork, over 18 (n, N, k): G = α₀I at the "
        "orthogonal init; with random blocks G is symmetric PSD and equals α₀EᵀKᵀKE built from explicit "
        "permutation and block-diagonal matrices."
    ),
    tolerance=f"{E_TOL}; λ_min >= -1e-10‖G‖",
    provenance="PAPER+CODE",
    mutants={
        "transpose half with forward permutations": {
            "rmv": _transpose_kernel(inverse_perms=False, transpose_blocks=True)
        },
        "x @ W on both halves": {"rmv": _transpose_kernel(inverse_perms=True, transpose_blocks=False)},
    },
)
def lodo_1(mv: Kernel = REAL_MV, rmv: Kernel = REAL_RMV, seed: int = 1) -> Outcome:
    """LODO-1 (Liao 2023, Eq. 2 and the official code): init identity, symmetry, PSD and the algebraic
    form, over 18 (n, N, k).

    The dense G is α₀·gram(A) applied to the basis vectors (both kernels); at init also
    ``gram(A).to_dense()`` (forward kernel only).  Random blocks are N(0, 1/k), keeping the perms.
    """
    gen, out = generator(seed), Measures()
    init_err, asym, lam, form_err = 0.0, 0.0, float("inf"), 0.0
    configs = _configs(gen, draws=12)
    for n, N, k in configs:
        A0 = with_kernels(pa.permutation_network(n, N, k, generator=gen), mv, rmv)
        G0 = pa.scale(pa.gram(A0), ALPHA0)
        alpha_I = ALPHA0 * torch.eye(n)
        init_err = max(init_err, rel_err(dense_of(G0), alpha_I), rel_err(G0.to_dense(), alpha_I))
        blocks = torch.randn(A0.blocks.shape, generator=gen) / k**0.5
        A = with_kernels(pa.PermutationNetwork(blocks, A0.perms, n), mv, rmv)
        G = dense_of(pa.scale(pa.gram(A), ALPHA0))
        asym, lam = max(asym, sym_err(G)), min(lam, min_eig_rel(G))
        form_err = max(form_err, rel_err(G, explicit_G(A, ALPHA0)))
    out.at_most("max rel. error, α₀·gram(A) at orthogonal init vs α₀I", init_err, E_RTOL)
    out.at_most("max asymmetry of G, random blocks", asym, E_RTOL)
    out.at_least("min λ_min(G)/‖G‖, random blocks", lam, -1e-10)
    out.at_most("max rel. error, operator G vs explicit EᵀKᵀKE", form_err, E_RTOL)
    out.details["configs (n, N, k)"] = [list(c) for c in configs]
    return out.outcome()


def _count_multiply_adds(G: pa.Structure, x: torch.Tensor) -> int:
    """Multiply-adds of ``G @ x`` counted by torch's FlopCounterMode (2 flops per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        G @ x
    return counter.get_total_flops() // 2


@check(
    id="LODO-2",
    paper="LODO §3 cost claim (Liao 2023)",
    statement=(
        "Cost count: one G x with G = gram(A) costs 2·N·ñ·k multiply-adds (O(ñkN)), counted by "
        "FlopCounterMode for 4 (n, N, k), as gram(A).cost() declares."
    ),
    tolerance="exact: multiply-add count (FlopCounterMode); E: rel. error <= 1e-10",
    provenance="PAPER",
    mutants={"dense ñ×ñ layers (2Nñ² multiply-adds)": {"mv": _dense_layer_mv, "rmv": _dense_layer_rmv}},
)
def lodo_2(mv: Kernel = REAL_MV, rmv: Kernel = REAL_RMV, seed: int = 2) -> Outcome:
    """LODO-2 (Liao 2023, §3 cost claim): counted multiply-adds of one G x equal 2Nñk and
    ``gram(A).cost().matvec``."""
    gen, out = generator(seed), Measures()
    rows, count_err, cost_err, value_err = [], 0, 0, 0.0
    for n, N, k in COST_CONFIGS:
        A = with_kernels(pa.permutation_network(n, N, k, generator=gen), mv, rmv)
        G, x = pa.gram(A), torch.randn(n, generator=gen)
        counted, formula, declared = _count_multiply_adds(G, x), 2 * N * A.width * k, G.cost().matvec
        count_err, cost_err = max(count_err, abs(counted - formula)), max(cost_err, abs(declared - counted))
        value_err = max(value_err, rel_err(G @ x, x))
        rows.append({"n": n, "N": N, "k": k, "width": A.width, "counted": counted, "2Nñk": formula})
    out.equal("max |counted multiply-adds − 2Nñk|", count_err, 0)
    out.equal("max |gram(A).cost().matvec − counted|", cost_err, 0)
    out.at_most("max rel. error, G x vs x at the orthogonal init", value_err, E_RTOL)
    out.details["counts"] = rows
    return out.outcome()
