"""Shared hypothesis strategies, instance builders and comparison helpers (THEORY.md §1.4).

Instances are built from an integer seed plus a few small knobs (a size, a dtype), never from
`hypothesis.extra.numpy` arrays: shrinking then moves toward small sizes and simple seeds, and every
instance is well formed and well conditioned by construction.  One builder per structure kind lives in
`KINDS`; nested kinds (Kronecker, BlockDiagonal, Product, Sum, ...) draw their parts from the same
table with the same random stream.

Conditioning of the invertible kinds (what the solve tolerances rely on):

- Scalar, Diagonal, Normalization: diagonal entries of magnitude in [1, 2] (off-diagonal c: N(0, 0.5²)).
- Triangular: diagonal magnitude in [1, 2], strictly upper entries N(0, (0.5/√n)²).
- Dense: U·diag(s)·Vᵀ with Haar-orthogonal U, V and s log-uniform in [1, 10] (condition number ≤ 10).
- IdentityPlusLowRank: U, V with spectral norm about 0.5, so ‖UVᵀ‖₂ ≲ 0.25.
- Eigenbasis: B, A of condition number ≤ √10 (as Dense) and S of magnitudes in [1, 2], so
  cond(K diag(S)² Kᵀ) ≤ cond(B)²·cond(A)²·4 ≤ 400.
- Composites (Product, Gram, ...) multiply at most two such condition numbers.

The comparisons use the actual condition number (computed in float64) where it matters, see
`assert_close`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

import precondalg as pa

DTYPES = (torch.float64, torch.float32)

# Tolerance factor, in units of the dtype's machine epsilon, relative to the magnitude scale of the
# compared quantity (and multiplied by the condition number for solves).  Instances have at most ~60
# rows, entries O(1) and at most four nested operations, so legitimate rounding stays below
# ~(n · depth)·eps ≤ 256·eps; any real bug (a wrong sign, a transposed factor, a missing term) gives
# an O(1) relative error, i.e. 10⁹× (float64) or 10²–10⁴× (float32) above this bound.
TOL_EPS = 256


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------
def seeds() -> st.SearchStrategy[int]:
    """Integer seeds for `np.random.default_rng` (THEORY.md §1.4)."""
    return st.integers(0, 2**32 - 1)


def dims(lo: int = 2, hi: int = 8) -> st.SearchStrategy[int]:
    """Matrix sizes in [lo, hi]; the structure tests use `dims(1, 7)` to include 1, 2 and primes."""
    return st.integers(lo, hi)


def spd(n: int, log_lo: float = -3.0, log_hi: float = 3.0) -> st.SearchStrategy[np.ndarray]:
    """Symmetric positive-definite n×n matrices with log-uniform eigenvalues (THEORY.md §1.4).

    Args:
        n: the size.
        log_lo: the smallest allowed log10 of an eigenvalue.
        log_hi: the largest allowed log10 of an eigenvalue.

    Returns:
        A strategy of float64 numpy arrays U·diag(λ)·Uᵀ, U Haar-orthogonal, λ ∈ [10^lo, 10^hi] with lo
        drawn from [log_lo, 0] and hi from [0, log_hi].
    """

    def build(seed: int, lo: float, hi: float) -> np.ndarray:
        rng = np.random.default_rng(seed)
        U = haar_orthogonal(rng, n)
        lam = 10.0 ** rng.uniform(lo, hi, size=n)
        return (U * lam) @ U.T

    return st.builds(build, seeds(), st.floats(log_lo, 0.0), st.floats(0.0, log_hi))


def pl_problem(n_lo: int = 2, n_hi: int = 8) -> st.SearchStrategy[Any]:
    """Drawn instances of the `pl_problem()` families of THEORY.md §1.4, built by FOP-1's own builders.

    The families are those of `theory_checks.fop_convergence.FAMILIES` (spd_quadratic,
    rank_deficient_lsq, x2_plus_3sin2), each built in float64 from a seed; THEORY.md's fourth family,
    l2_logistic, is not among them (its f* has no closed form, and FOP-1's ratios take f* = 0).

    Args:
        n_lo: the smallest dimension.
        n_hi: the largest dimension.

    Returns:
        A strategy of `theory_checks.fop_convergence.Problem` (f, L, μ, θ₀; f* = 0), the family drawn with
        `st.sampled_from`, the dimension with `dims(n_lo, n_hi)` and the instance from `seeds()`.
    """
    from theory_checks import fop_convergence
    from theory_checks.runner import check_environment

    def build(family: str, n: int, seed: int) -> Any:
        with check_environment():
            return fop_convergence.FAMILIES[family](n, fop_convergence.generator(seed))

    return st.builds(build, st.sampled_from(sorted(fop_convergence.FAMILIES)), dims(n_lo, n_hi), seeds())


def haar_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Haar-distributed n×n orthogonal matrix (QR of a Gaussian with the sign fix).

    Args:
        rng: the random generator.
        n: the size.

    Returns:
        A float64 numpy array.
    """
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
class Draw:
    """The random stream of one instance: a numpy Generator, the target dtype and a sign knob.

    Args:
        seed: integer seed of `np.random.default_rng`.
        dtype: dtype of every tensor built.
        positive: draw diagonal entries positive (the Lie-group tests' start), else random signs.
    """

    def __init__(self, seed: int, dtype: torch.dtype, positive: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.positive = positive

    def tensor(self, a: np.ndarray | float) -> torch.Tensor:
        """A numpy array (float64) as a tensor of the target dtype."""
        return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(self.dtype)

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        """Independent N(0, scale²) entries."""
        return self.tensor(scale * self.rng.standard_normal(shape))

    def magnitudes(self, *shape: int) -> torch.Tensor:
        """Entries of magnitude uniform in [1, 2], with random signs unless `positive`."""
        mag = self.rng.uniform(1.0, 2.0, size=shape)
        sign = 1.0 if self.positive else self.rng.choice([-1.0, 1.0], size=shape)
        return self.tensor(mag * sign)

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options: tuple[str, ...] | list[int]) -> str | int:
        """One of `options`, uniformly."""
        return options[int(self.rng.integers(len(options)))]

    def generator(self) -> torch.Generator:
        """A torch Generator seeded from this stream."""
        return torch.Generator().manual_seed(int(self.rng.integers(2**62)))

    def part(self, names: tuple[str, ...], n: int) -> pa.Structure:
        """A sub-structure of a kind drawn from `names`, of size hint n."""
        return KINDS[self.choice(names)].build(self, n)


def kron_dims(n: int) -> tuple[int, int]:
    """The factor sizes of the square Kronecker kinds of size n: (p, n/p), p the smallest prime factor.

    Deterministic in n, so that two Kronecker instances of one size always have conforming factors
    (a prime n gives an n×n and a 1×1 factor: an awkward size on purpose).
    """
    p = next((d for d in range(2, n + 1) if n % d == 0), 1)
    return (p, n // p)


def block_sizes(n: int) -> list[int]:
    """The block sizes of the square BlockDiagonal kinds of size n, deterministic in n (sum is n)."""
    if n <= 2:
        return [1] * n
    return [1, (n - 1) // 2, n - 1 - (n - 1) // 2]


def _scalar(draw: Draw, n: int) -> pa.Structure:
    return pa.Scalar(draw.magnitudes(), n)


def _diagonal(draw: Draw, n: int) -> pa.Structure:
    return pa.Diagonal(draw.magnitudes(n))


def _dense(draw: Draw, n: int) -> pa.Structure:
    s = 10.0 ** draw.rng.uniform(0.0, 1.0, size=n)
    U, V = haar_orthogonal(draw.rng, n), haar_orthogonal(draw.rng, n)
    return pa.Dense(draw.tensor((U * s) @ V.T))


def _well_conditioned(draw: Draw, n: int, log_cond: float) -> torch.Tensor:
    """U·diag(s)·Vᵀ with Haar-orthogonal U, V and s log-uniform in [1, 10^log_cond]."""
    s = 10.0 ** draw.rng.uniform(0.0, log_cond, size=n)
    U, V = haar_orthogonal(draw.rng, n), haar_orthogonal(draw.rng, n)
    return draw.tensor((U * s) @ V.T)


def _eigenbasis(draw: Draw, n: int) -> pa.Structure:
    # Any factorisation n = m·n', so that m = 1 and n' = 1 (and a prime n) occur.
    m = int(draw.choice([d for d in range(1, n + 1) if n % d == 0]))
    k = n // m
    B, A = _well_conditioned(draw, m, 0.5), _well_conditioned(draw, k, 0.5)
    return pa.Eigenbasis(B, A, draw.magnitudes(m, k))


def _triangular(draw: Draw, n: int) -> pa.Structure:
    R = draw.normal(n, n, scale=0.5 / math.sqrt(n))
    return pa.Triangular(R + torch.diag(draw.magnitudes(n) - R.diagonal()))


def _normalization(draw: Draw, n: int) -> pa.Structure:
    return pa.Normalization(draw.magnitudes(n), draw.normal(n - 1, scale=0.5))


def _low_rank(draw: Draw, n: int) -> pa.Structure:
    r = draw.integer(1, 3)
    s = 0.5 / (math.sqrt(n) + math.sqrt(r))
    return pa.IdentityPlusLowRank(draw.normal(n, r, scale=s), draw.normal(n, r, scale=s))


def _kronecker(draw: Draw, n: int) -> pa.Structure:
    return pa.Kronecker(*[draw.part(SIMPLE_GROUPS, d) for d in kron_dims(n)])


def _block_diagonal(draw: Draw, n: int) -> pa.Structure:
    return pa.BlockDiagonal(*[draw.part((*SIMPLE_GROUPS, "kronecker"), d) for d in block_sizes(n)])


def _product(draw: Draw, n: int) -> pa.Structure:
    return pa.Product(*[draw.part(SOLVABLE_PARTS, n) for _ in range(2)])


def _sum(draw: Draw, n: int) -> pa.Structure:
    return pa.Sum(*[draw.part((*SOLVABLE_PARTS, "permutation_gram"), n) for _ in range(2)])


def _transposed(draw: Draw, n: int) -> pa.Structure:
    return pa.Transposed(draw.part(("triangular", "normalization", "low_rank", "dense", "kronecker"), n))


def _inverse(draw: Draw, n: int) -> pa.Structure:
    return pa.Inverse(
        draw.part(("triangular", "normalization", "low_rank", "dense", "kronecker", "product"), n)
    )


def _gram(draw: Draw, n: int) -> pa.Structure:
    return pa.Gram(draw.part(("triangular", "normalization", "low_rank", "dense", "kronecker"), n))


def _kronecker_sum(draw: Draw, n: int) -> pa.Structure:
    return pa.KroneckerSum(*[draw.part((*SIMPLE_GROUPS, "low_rank"), d) for d in kron_dims(n)])


def _permutation_gram(draw: Draw, n: int) -> pa.Structure:
    return pa.Gram(draw.part(("permutation_network", "dense_rect"), n))


def _dense_rect(draw: Draw, n: int) -> pa.Structure:
    m = draw.choice([k for k in (n - 2, n - 1, n + 1, n + 2) if k >= 1])
    return pa.Dense(draw.normal(m, n, scale=1.0 / math.sqrt(n)))


def _kronecker_rect(draw: Draw, n: int) -> pa.Structure:
    c0, c1 = kron_dims(n)
    factors = [
        _dense_rect(draw, c0),
        draw.part(("dense_rect", "permutation_network", "low_rank", "diagonal"), c1),
    ]
    if draw.integer(0, 1):
        factors.append(pa.Dense(draw.normal(draw.integer(1, 3), 1)))
    return pa.Kronecker(*factors)


def _block_diagonal_rect(draw: Draw, n: int) -> pa.Structure:
    first, *rest = block_sizes(n)
    blocks = [_dense_rect(draw, first)]
    blocks += [draw.part(("dense_rect", "permutation_network", "triangular", "kronecker"), d) for d in rest]
    return pa.BlockDiagonal(*blocks)


def _permutation_network(draw: Draw, n: int) -> pa.Structure:
    net = pa.permutation_network(
        n,
        depth=draw.integer(1, 3),
        block_size=draw.integer(1, 3),
        generator=draw.generator(),
        dtype=draw.dtype,
    )
    if draw.integer(0, 1):  # leave LODO's orthogonal initialisation half of the time
        net = pa.PermutationNetwork(net.blocks + draw.normal(*net.blocks.shape, scale=0.3), net.perms, n)
    return net


def _residual_network(draw: Draw, n: int) -> pa.Structure:
    net = pa.residual_network(n, depth=draw.integer(1, 4), generator=draw.generator(), dtype=draw.dtype)
    return pa.ResidualNetwork(net.weights * 0.5, net.perms, n)  # keep I + D Π away from singular


@dataclasses.dataclass(frozen=True)
class Kind:
    """A family of random instances of one structure.

    Attributes:
        name: the kind's name (test ids).
        build: (Draw, n) → structure; square kinds are exactly n×n, the others have n columns.
        square: whether instances are n×n.
        solvable: whether `solve` works (and instances are well conditioned).
        group: whether `is_lie_group` holds.
    """

    name: str
    build: Callable[[Draw, int], pa.Structure]
    square: bool
    solvable: bool
    group: bool


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("scalar", _scalar, True, True, True),
        Kind("diagonal", _diagonal, True, True, True),
        Kind("dense", _dense, True, True, True),
        Kind("triangular", _triangular, True, True, True),
        Kind("normalization", _normalization, True, True, True),
        Kind("low_rank", _low_rank, True, True, False),
        Kind("kronecker", _kronecker, True, True, True),
        Kind("eigenbasis", _eigenbasis, True, True, False),
        Kind("block_diagonal", _block_diagonal, True, True, True),
        Kind("product", _product, True, True, False),
        Kind("transposed", _transposed, True, True, False),
        Kind("inverse", _inverse, True, True, False),
        Kind("gram", _gram, True, True, False),
        Kind("sum", _sum, True, False, False),
        Kind("kronecker_sum", _kronecker_sum, True, False, False),
        Kind("permutation_gram", _permutation_gram, True, False, False),
        Kind("dense_rect", _dense_rect, False, False, False),
        Kind("kronecker_rect", _kronecker_rect, False, False, False),
        Kind("block_diagonal_rect", _block_diagonal_rect, False, False, False),
        Kind("permutation_network", _permutation_network, False, False, False),
        Kind("residual_network", _residual_network, False, False, False),
    ]
}
SIMPLE_GROUPS = ("scalar", "diagonal", "dense", "triangular", "normalization")
SOLVABLE_PARTS = (*SIMPLE_GROUPS, "low_rank", "kronecker")
ALL_KINDS = tuple(KINDS)
SQUARE_KINDS = tuple(k for k, v in KINDS.items() if v.square)
SOLVABLE_KINDS = tuple(k for k, v in KINDS.items() if v.solvable)
UNSOLVABLE_KINDS = tuple(k for k, v in KINDS.items() if not v.solvable)
GROUP_KINDS = tuple(k for k, v in KINDS.items() if v.group)
NON_GROUP_KINDS = tuple(k for k, v in KINDS.items() if not v.group)


def make(kind: str, seed: int, n: int, dtype: torch.dtype, positive: bool = False) -> pa.Structure:
    """A random instance of `kind`.

    Args:
        kind: a key of `KINDS`.
        seed: the integer seed.
        n: the size (square kinds) or number of columns (the others).
        dtype: dtype of the leaves.
        positive: positive diagonal entries (Lie-group starts).

    Returns:
        The structure.
    """
    return KINDS[kind].build(Draw(seed, dtype, positive), n)


def random_tensor(seed: int, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A standard Gaussian tensor drawn from its own seed.

    Args:
        seed: the integer seed.
        *shape: its shape.
        dtype: its dtype.

    Returns:
        The tensor.
    """
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def jitter(A: pa.Structure, seed: int, scale: float = 0.05) -> pa.Structure:
    """A with scale·N(0, 1) noise added to every leaf: same type, static data and leaf shapes.

    Args:
        A: the structure.
        seed: the integer seed of the noise.
        scale: the noise level (small: invertible instances stay invertible).

    Returns:
        The perturbed structure (rebuilt by pytree unflattening).
    """
    gen = torch.Generator().manual_seed(seed)
    return pytree.tree_map(lambda x: x + scale * torch.randn(x.shape, generator=gen, dtype=x.dtype), A)


def as_float64(A: pa.Structure) -> pa.Structure:
    """The same structure with its leaves cast to float64 (exact for float32 leaves)."""
    return pytree.tree_map(lambda x: x.double(), A)


def dense64(A: pa.Structure) -> torch.Tensor:
    """The float64 dense reference of A: its own leaves, cast exactly, densified in float64."""
    return as_float64(A).to_dense()


def cond(M: torch.Tensor) -> float:
    """The 2-norm condition number of a dense square matrix, computed in float64."""
    return float(torch.linalg.cond(M.double())) if M.numel() else 1.0


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    scale: float | None = None,
    cond: float = 1.0,
    what: str = "",
) -> None:
    """Assert that `actual` equals the float64 reference `expected` up to rounding.

    The tolerance is `TOL_EPS · eps(actual.dtype) · cond · scale`, where scale is the magnitude of the
    computation (default: max(1, max|expected|); matvecs pass max(|A|·|X|), which bounds the partial
    sums) and cond the condition number where a solve is involved.

    Args:
        actual: the computed tensor (any floating dtype; its dtype sets eps).
        expected: the reference, usually float64.
        scale: the magnitude scale.
        cond: the condition number.
        what: a label for the failure message.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    exp = expected.double()
    if scale is None:
        scale = max(1.0, float(exp.abs().max())) if exp.numel() else 1.0
    tol = TOL_EPS * torch.finfo(actual.dtype).eps * cond * max(scale, 1.0)
    err = float((actual.double() - exp).abs().max()) if exp.numel() else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3g} > tolerance {tol:.3g} (dtype {actual.dtype})"


def matvec_scale(M: torch.Tensor, X: torch.Tensor) -> float:
    """max(|M|·|X|): bounds every partial sum of M @ X (the rounding scale of a product)."""
    return float((M.double().abs() @ X.double().abs()).max()) if M.numel() and X.numel() else 1.0


def leaf_count(A: pa.Structure) -> int:
    """The number of values stored in A's leaves."""
    return sum(x.numel() for x in pytree.tree_leaves(A))


def kind_cases(
    values: Sequence[Any], max_examples: int, *, argnames: str | tuple[str, ...] = "kind", **strategies: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator of a per-kind property test: pytest parameters × `DTYPES`, hypothesis draws the rest.

    Args:
        values: the pytest parameter values (kind names, or tuples for several `argnames`).
        max_examples: hypothesis examples per parameter combination.
        argnames: the parametrized argument name(s).
        **strategies: hypothesis strategies of the drawn arguments; `seed` defaults to `seeds()`.

    Returns:
        The decorator (deadline disabled: first calls pay torch's warm-up).
    """

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        fn = given(**{"seed": seeds(), **strategies})(fn)
        fn = settings(max_examples=max_examples, deadline=None)(fn)
        fn = pytest.mark.parametrize(argnames, values)(fn)
        return pytest.mark.parametrize("dtype", DTYPES, ids=str)(fn)

    return decorate
