"""Bad input: every constructor, operator and algebra function rejects it with a message that names the
structure (or function), the argument and both shapes (QUALITY.md §1, fifth row).

Each case is one line of a table (call, exception type, regular expression the message must match).
"""

import pytest
import torch
from strategies import ALL_KINDS, dims, kind_cases, make

import precondalg as pa

f32, f64 = torch.float32, torch.float64


def t(*shape, dtype=f64):
    """A tensor of ones of the given shape."""
    return torch.ones(shape, dtype=dtype)


def dense(m, n, dtype=f64):
    """Dense(ones(m, n))."""
    return pa.Dense(t(m, n, dtype=dtype))


def diag(n, dtype=f64):
    """Diagonal(ones(n))."""
    return pa.Diagonal(t(n, dtype=dtype))


NET = pa.permutation_network(3, depth=2, block_size=2, generator=torch.Generator().manual_seed(0), dtype=f64)

CONSTRUCTOR_CASES = {
    # wrong shapes
    "scalar_alpha_not_0d": (
        lambda: pa.Scalar(t(2), 3),
        ValueError,
        r"Scalar: argument 'alpha' must have shape \(\) .*; got \(2,\)",
    ),
    "scalar_n_not_positive": (
        lambda: pa.Scalar(t(), 0),
        ValueError,
        r"Scalar: argument 'n' must be a positive int; got 0",
    ),
    "diagonal_2d": (
        lambda: pa.Diagonal(t(2, 2)),
        ValueError,
        r"Diagonal: argument 'd' must have shape \(n,\); got \(2, 2\)",
    ),
    "dense_1d": (
        lambda: pa.Dense(t(3)),
        ValueError,
        r"Dense: argument 'A' must have shape \(m, n\); got \(3,\)",
    ),
    "triangular_rect": (
        lambda: pa.Triangular(t(2, 3)),
        ValueError,
        r"Triangular: argument 'R' must have shape \(n, n\); got \(2, 3\)",
    ),
    "normalization_c": (
        lambda: pa.Normalization(t(3), t(3)),
        ValueError,
        r"Normalization: argument 'c' must have shape \(n-1,\) = \(2,\) for d of shape \(3,\); got \(3,\)",
    ),
    "low_rank_shapes": (
        lambda: pa.IdentityPlusLowRank(t(3, 2), t(3, 1)),
        ValueError,
        r"IdentityPlusLowRank: arguments 'U' and 'V' .*; got U \(3, 2\) and V \(3, 1\)",
    ),
    "low_rank_1d": (
        lambda: pa.IdentityPlusLowRank(t(3), t(3)),
        ValueError,
        r"IdentityPlusLowRank: argument 'U' must have shape \(n, r\); got \(3,\)",
    ),
    "network_3d": (
        lambda: pa.PermutationNetwork(t(2, 2, 2), ((0, 1),), 1),
        ValueError,
        r"PermutationNetwork: argument 'blocks' must have shape \(N, ñ/k, k, k\); got \(2, 2, 2\)",
    ),
    "network_blocks_not_square": (
        lambda: pa.PermutationNetwork(t(1, 2, 2, 3), ((0, 1, 2, 3),), 2),
        ValueError,
        r"PermutationNetwork: argument 'blocks' .* square k×k blocks; got \(1, 2, 2, 3\)",
    ),
    "network_perm_count": (
        lambda: pa.PermutationNetwork(t(2, 2, 2, 2), ((0, 1, 2, 3),), 2),
        ValueError,
        r"PermutationNetwork: argument 'perms' must hold N = 2 .* \(2, 2, 2, 2\)\); got 1",
    ),
    "network_not_a_permutation": (
        lambda: pa.PermutationNetwork(t(1, 2, 2, 2), ((0, 1, 1, 3),), 2),
        ValueError,
        r"PermutationNetwork: perms\[0\] must be a permutation of range\(4\)",
    ),
    "network_perm_length": (
        lambda: pa.PermutationNetwork(t(1, 2, 2, 2), ((0, 1, 2),), 2),
        ValueError,
        r"perms\[0\] must be a permutation of range\(4\) .*got a sequence of length 3",
    ),
    "network_n_too_large": (
        lambda: pa.PermutationNetwork(t(1, 2, 2, 2), ((0, 1, 2, 3),), 5),
        ValueError,
        r"PermutationNetwork: argument 'n' must be an int in \[1, 4\]; got 5",
    ),
    "network_width": (
        lambda: pa.permutation_network(5, depth=1, block_size=4, width=6),
        ValueError,
        r"permutation_network: 'width' must be a multiple of block_size = 4 and at least n = 5; got 6",
    ),
    "kronecker_sum_rect_term": (
        lambda: pa.KroneckerSum(diag(2), dense(2, 3)),
        ValueError,
        r"KroneckerSum: term 1 must be square; got shape \(2, 3\)",
    ),
    "product_nonconforming": (
        lambda: pa.Product(dense(2, 3), dense(2, 2)),
        ValueError,
        r"Product: factor 0 of shape \(2, 3\) cannot multiply factor 1 of shape \(2, 2\)",
    ),
    "sum_shapes": (
        lambda: pa.Sum(dense(2, 2), dense(3, 3)),
        ValueError,
        r"Sum: term 1 has shape \(3, 3\) but term 0 has shape \(2, 2\)",
    ),
    "inverse_rect": (
        lambda: pa.Inverse(dense(2, 3)),
        pa.NotInvertibleError,
        r"Dense has no solve: it is 2×3, not square",
    ),
    "eigenbasis_b_not_square": (
        lambda: pa.Eigenbasis(t(2, 3), t(3, 3), t(2, 3)),
        ValueError,
        r"Eigenbasis: argument 'B' must be square, shape \(m, m\); got \(2, 3\)",
    ),
    "eigenbasis_a_not_square": (
        lambda: pa.Eigenbasis(t(2, 2), t(3, 2), t(2, 3)),
        ValueError,
        r"Eigenbasis: argument 'A' must be square, shape \(n, n\); got \(3, 2\)",
    ),
    "eigenbasis_s_shape": (
        lambda: pa.Eigenbasis(t(2, 2), t(3, 3), t(3, 2)),
        ValueError,
        r"Eigenbasis: argument 'S' must have shape \(m, n\) = \(2, 3\) for B of shape \(2, 2\) and A of "
        r"shape \(3, 3\); got \(3, 2\)",
    ),
    "eigenbasis_s_1d": (
        lambda: pa.Eigenbasis(t(2, 2), t(3, 3), t(6)),
        ValueError,
        r"Eigenbasis: argument 'S' must have shape \(m, n\); got \(6,\)",
    ),
    "kronecker_empty": (
        lambda: pa.Kronecker(),
        ValueError,
        r"Kronecker: needs at least one factor; got none",
    ),
    "block_diagonal_empty": (
        lambda: pa.BlockDiagonal(),
        ValueError,
        r"BlockDiagonal: needs at least one block; got none",
    ),
    # non-floating leaves
    "diagonal_int": (
        lambda: pa.Diagonal(torch.arange(3)),
        TypeError,
        r"Diagonal: argument 'd' must be a floating-point tensor; got torch.int64",
    ),
    "dense_bool": (
        lambda: pa.Dense(torch.ones(2, 2, dtype=torch.bool)),
        TypeError,
        r"Dense: argument 'A' must be a floating-point tensor; got torch.bool",
    ),
    "network_int": (
        lambda: pa.PermutationNetwork(torch.ones(1, 2, 2, 2, dtype=torch.int32), ((0, 1, 2, 3),), 2),
        TypeError,
        r"PermutationNetwork: argument 'blocks' must be a floating-point tensor; got torch.int32",
    ),
    # lists instead of tensors
    "diagonal_list": (
        lambda: pa.Diagonal([1.0, 2.0]),
        TypeError,
        r"Diagonal: argument 'd' must be a torch.Tensor; got list",
    ),
    "triangular_list": (
        lambda: pa.Triangular([[1.0]]),
        TypeError,
        r"Triangular: argument 'R' must be a torch.Tensor; got list",
    ),
    "eigenbasis_list": (
        lambda: pa.Eigenbasis([[1.0]], t(1, 1), t(1, 1)),
        TypeError,
        r"Eigenbasis: argument 'B' must be a torch.Tensor; got list",
    ),
    "eigenbasis_int": (
        lambda: pa.Eigenbasis(t(1, 1), torch.ones(1, 1, dtype=torch.int64), t(1, 1)),
        TypeError,
        r"Eigenbasis: argument 'A' must be a floating-point tensor; got torch.int64",
    ),
    "scalar_float": (
        lambda: pa.Scalar(2.0, 3),
        TypeError,
        r"Scalar: argument 'alpha' must be a torch.Tensor; got float",
    ),
    "kronecker_tensor_factor": (
        lambda: pa.Kronecker(diag(2), t(2, 2)),
        TypeError,
        r"Kronecker: factor 1 must be a Structure \(wrap a tensor in Dense\(...\)\); got Tensor",
    ),
    "block_diagonal_list": (
        lambda: pa.BlockDiagonal([diag(2)]),
        TypeError,
        r"BlockDiagonal: block 0 must be a Structure; got list",
    ),
    # mixed dtypes between leaves
    "low_rank_dtypes": (
        lambda: pa.IdentityPlusLowRank(t(3, 1, dtype=f32), t(3, 1)),
        TypeError,
        r"IdentityPlusLowRank: 'V' has dtype torch.float64 but 'U' has dtype torch.float32",
    ),
    "normalization_dtypes": (
        lambda: pa.Normalization(t(3), t(2, dtype=f32)),
        TypeError,
        r"Normalization: 'c' has dtype torch.float32 but 'd' has dtype torch.float64",
    ),
    "eigenbasis_dtypes": (
        lambda: pa.Eigenbasis(t(2, 2), t(3, 3), t(2, 3, dtype=f32)),
        TypeError,
        r"Eigenbasis: 'S' has dtype torch.float32 but 'B' has dtype torch.float64",
    ),
    "kronecker_dtypes": (
        lambda: pa.Kronecker(diag(2), diag(2, f32)),
        TypeError,
        r"Kronecker: 'factor 1' has dtype torch.float32 but 'factor 0' has dtype torch.float64",
    ),
    "block_diagonal_dtypes": (
        lambda: pa.BlockDiagonal(diag(2, f32), diag(2)),
        TypeError,
        r"BlockDiagonal: 'block 1' has dtype torch.float64 but 'block 0' has dtype torch.float32",
    ),
    "kronecker_sum_dtypes": (
        lambda: pa.KroneckerSum(diag(2), diag(2, f32)),
        TypeError,
        r"KroneckerSum: 'term 1' has dtype",
    ),
    "product_dtypes": (
        lambda: pa.Product(diag(2), diag(2, f32)),
        TypeError,
        r"Product: 'factor 1' has dtype",
    ),
    "sum_dtypes": (lambda: pa.Sum(diag(2), diag(2, f32)), TypeError, r"Sum: 'term 1' has dtype"),
}

ALGEBRA_CASES = {
    "compose_shapes": (
        lambda: pa.compose(dense(2, 3), diag(2)),
        ValueError,
        r"compose: cannot multiply Dense of shape \(2, 3\) by Diagonal of shape \(2, 2\)",
    ),
    "matmul_shapes": (
        lambda: dense(2, 3) @ dense(2, 3),
        ValueError,
        r"compose: cannot multiply Dense of shape \(2, 3\) by Dense of shape \(2, 3\)",
    ),
    "add_shapes": (
        lambda: pa.add(diag(2), dense(3, 3)),
        ValueError,
        r"add: cannot add Diagonal of shape \(2, 2\) and Dense of shape \(3, 3\)",
    ),
    "plus_shapes": (
        lambda: diag(2) + diag(3),
        ValueError,
        r"add: cannot add Diagonal of shape \(2, 2\) and Diagonal of shape \(3, 3\)",
    ),
    "compose_dtypes": (
        lambda: pa.compose(diag(2), diag(2, f32)),
        TypeError,
        r"compose: .*dtype torch.float32.*torch.float64",
    ),
    "compose_dtypes_dense": (lambda: dense(2, 2) @ dense(2, 2, f32), TypeError, r"compose: .*dtype"),
    "add_dtypes": (
        lambda: pa.add(diag(2), diag(2, f32)),
        TypeError,
        r"add: .*dtype torch.float32.*torch.float64",
    ),
    "block_diag_dtypes": (lambda: pa.block_diag(diag(2), diag(2, f32)), TypeError, r"block_diag: .*dtype"),
    "kron_dtypes": (lambda: pa.kron(diag(2), diag(2, f32)), TypeError, r"Kronecker: 'factor 1' has dtype"),
    "inverse_rect": (
        lambda: pa.inverse(dense(2, 3)),
        pa.NotInvertibleError,
        r"inverse: Dense of shape \(2, 3\) is not square",
    ),
    "inverse_network": (
        lambda: pa.inverse(NET),
        pa.NotInvertibleError,
        r"inverse: PermutationNetwork of shape \(8, 3\) is not square",
    ),
    "solve_network": (
        lambda: NET.solve(t(8)),
        pa.NotInvertibleError,
        r"PermutationNetwork.solve: the matrix is 8×3, not square",
    ),
    "solve_sum": (
        lambda: pa.Sum(diag(2), dense(2, 2)).solve(t(2)),
        pa.NotInvertibleError,
        r"Sum has no solve",
    ),
    "solve_kronecker_sum": (
        lambda: pa.KroneckerSum(diag(2), diag(3)).solve(t(6)),
        pa.NotInvertibleError,
        r"KroneckerSum has no solve",
    ),
    "solve_kronecker_rect": (
        lambda: pa.Kronecker(dense(2, 3), dense(3, 2)).solve(t(6)),
        pa.NotInvertibleError,
        r"Kronecker has no solve: factor 0 is 2×3, not square",
    ),
}


def _x_cases():
    """Bad X in `A @ X`, `X @ A` and `A.solve(X)` for a 3×4 and a 4×4 Dense."""
    A, Sq = dense(3, 4), dense(4, 4)
    return {
        "matvec_shape": (
            lambda: A @ t(3),
            ValueError,
            r"Dense @ X: X must have shape \(4,\) or \(4, k\) for a 3×4 matrix; got \(3,\)",
        ),
        "matvec_3d": (lambda: A @ t(4, 1, 1), ValueError, r"Dense @ X: .* for a 3×4 matrix; got \(4, 1, 1\)"),
        "matvec_dtype": (
            lambda: A @ t(4, dtype=f32),
            TypeError,
            r"Dense @ X: X must have the structure's dtype torch.float64; got torch.float32",
        ),
        "matvec_list": (
            lambda: A @ [1.0, 2.0, 3.0, 4.0],
            TypeError,
            r"unsupported operand type\(s\) for @: 'Dense' and 'list'",
        ),
        "left_matvec_shape": (
            lambda: t(2, 4) @ A,
            ValueError,
            r"Dense @ \(left\) X: X must have shape \(3,\) or \(k, 3\) for a 3×4 matrix; got \(2, 4\)",
        ),
        "left_vector_shape": (
            lambda: t(4) @ A,
            ValueError,
            r"Dense @ \(left\) X: .* for a 3×4 matrix; got \(4,\)",
        ),
        "left_dtype": (
            lambda: t(2, 3, dtype=f32) @ A,
            TypeError,
            r"Dense @ \(left\) X: X must have the structure's dtype",
        ),
        "solve_shape": (
            lambda: Sq.solve(t(3, 2)),
            ValueError,
            r"Dense solve X: X must have shape \(4,\) or \(4, k\) for a 4×4 matrix; got \(3, 2\)",
        ),
        "solve_dtype": (
            lambda: Sq.solve(t(4, dtype=f32)),
            TypeError,
            r"Dense solve X: X must have the structure's dtype",
        ),
        "solve_list": (
            lambda: Sq.solve([1.0] * 4),
            TypeError,
            r"Dense solve X: X must be a torch.Tensor; got list",
        ),
        "solve_rect": (
            lambda: A.solve(t(3)),
            pa.NotInvertibleError,
            r"Dense.solve: the matrix is 3×4, not square",
        ),
    }


CASES = {**CONSTRUCTOR_CASES, **ALGEBRA_CASES, **_x_cases()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_with_a_precise_message(case):
    call, exc, pattern = CASES[case]
    with pytest.raises(exc, match=pattern):
        call()


@kind_cases(ALL_KINDS, 3, n=dims(1, 6))
def test_every_kind_rejects_bad_x(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    m, n_cols = A.shape
    name = type(A).__name__
    other = f32 if dtype == f64 else f64
    with pytest.raises(
        ValueError, match=rf"{name} @ X: .* for a {m}×{n_cols} matrix; got \({n_cols + 1}, 2\)"
    ):
        A @ torch.zeros(n_cols + 1, 2, dtype=dtype)
    with pytest.raises(
        TypeError, match=rf"{name} @ X: X must have the structure's dtype {dtype}; got {other}"
    ):
        A @ torch.zeros(n_cols, dtype=other)
    with pytest.raises(
        ValueError, match=rf"{name} @ \(left\) X: .* for a {m}×{n_cols} matrix; got \(2, {m + 1}\)"
    ):
        torch.zeros(2, m + 1, dtype=dtype) @ A
    with pytest.raises(ValueError, match=rf"compose: cannot multiply {name} of shape \({m}, {n_cols}\)"):
        A @ pa.Diagonal(torch.ones(n_cols + 1, dtype=dtype))
    with pytest.raises(ValueError, match=rf"add: cannot add {name} of shape \({m}, {n_cols}\)"):
        A + pa.Diagonal(torch.ones(m + 1, dtype=dtype))
    with pytest.raises(TypeError, match=r"compose: .*dtype"):
        A @ pa.Scalar(torch.ones((), dtype=other), n_cols)
