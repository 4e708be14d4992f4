"""torch.func transforms of functions of structures, against the dense computation.

QUALITY.md §1, fourth row: `grad`, `vjp`, `jvp` and `vmap` of A ↦ A x (hence of ‖A x‖²) and of
A ↦ A.solve(b) agree with the same computation on the dense matrix, and `grad` (and `vjp`) return the
same structure type.  The dense reference is a function of the same leaves, M(leaves) = to_dense(),
evaluated in float64: its derivatives are those of the dense computation pulled back to the leaves,
with no finite differences.
"""

import torch
import torch.utils._pytree as pytree
from strategies import (
    ALL_KINDS,
    SOLVABLE_KINDS,
    as_float64,
    assert_close,
    cond,
    dense64,
    dims,
    jitter,
    kind_cases,
    make,
    random_tensor,
)

CASES = [(kind, "matvec") for kind in ALL_KINDS] + [(kind, "solve") for kind in SOLVABLE_KINDS]
EXAMPLES = 5


def apply(op, A, x):
    """A @ x or A.solve(x) for a structure."""
    return A @ x if op == "matvec" else A.solve(x)


def dense_reference(op, A, x):
    """The float64 dense computation as a function of A's leaves, and those leaves.

    Returns:
        (f, leaves): f(leaves) = M x or M⁻¹ x with M = A(leaves).to_dense(), and A's leaves in float64.
    """
    leaves, spec = pytree.tree_flatten(as_float64(A))
    x64 = x.double()

    def f(leaves):
        M = pytree.tree_unflatten(leaves, spec).to_dense()
        return M @ x64 if op == "matvec" else torch.linalg.solve(M, x64)

    return f, leaves


def assert_leaves_close(actual, expected, cond_factor, what):
    """Compare a structure's leaves with reference leaves, on the scale of the largest reference entry."""
    got = pytree.tree_leaves(actual)
    assert len(got) == len(expected)
    scale = max([1.0] + [float(e.abs().max()) for e in expected if e.numel()])
    for g, e in zip(got, expected):
        assert_close(g, e, scale=scale, cond=cond_factor, what=what)


def same_tree(a, b):
    """Whether two pytrees have the same node types, static data and leaf shapes."""
    return pytree.tree_structure(a) == pytree.tree_structure(b) and all(
        x.shape == y.shape for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b))
    )


def condition(op, A):
    """The error amplification of op's derivatives: 1 for a matvec, cond(A)² for a solve."""
    return 1.0 if op == "matvec" else cond(dense64(A)) ** 2


@kind_cases(CASES, EXAMPLES, argnames=("kind", "op"), n=dims(1, 6))
def test_grad_vjp_jvp_match_dense(kind, op, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    x = random_tensor(seed, A.shape[1], dtype=dtype)
    f_ref, leaves = dense_reference(op, A, x)
    c = condition(op, A)

    # grad of ‖f(A)‖²: same structure type, leaves equal the dense gradient pulled back.
    g = torch.func.grad(lambda S: apply(op, S, x).square().sum())(A)
    assert type(g) is type(A) and same_tree(g, A)
    g_ref = torch.func.grad(lambda L: f_ref(L).square().sum())(leaves)
    assert_leaves_close(g, g_ref, c, f"grad of |{op}|^2")

    # vjp with a random cotangent.
    u = random_tensor(seed + 1, A.shape[0], dtype=dtype)
    out, pullback = torch.func.vjp(lambda S: apply(op, S, x), A)
    out_ref, pullback_ref = torch.func.vjp(f_ref, leaves)
    assert_close(out, out_ref, cond=c, what=f"{op} primal")
    (ct,) = pullback(u)
    assert type(ct) is type(A) and same_tree(ct, A)
    assert_leaves_close(ct, pullback_ref(u.double())[0], c, f"vjp of {op}")

    # jvp along a random tangent structure.
    T = jitter(A, seed + 2, scale=1.0)
    tangent = pytree.tree_map(lambda a, t: t - a, A, T)
    primal, tan = torch.func.jvp(lambda S: apply(op, S, x), (A,), (tangent,))
    primal_ref, tan_ref = torch.func.jvp(
        f_ref, (leaves,), ([t.double() for t in pytree.tree_leaves(tangent)],)
    )
    assert_close(primal, primal_ref, cond=c, what=f"jvp primal of {op}")
    assert_close(tan, tan_ref, cond=c, scale=max(1.0, float(tan_ref.abs().max())), what=f"jvp of {op}")


@kind_cases(CASES, EXAMPLES, argnames=("kind", "op"), n=dims(1, 6))
def test_vmap_over_stacked_structures_equals_loop(kind, op, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    batch = [jitter(A, seed + i) for i in range(3)]
    stacked = pytree.tree_map(lambda *xs: torch.stack(xs), *batch)
    X = random_tensor(seed, 3, A.shape[1], dtype=dtype)
    looped = torch.stack([apply(op, Ai, xi) for Ai, xi in zip(batch, X)])
    c = max(cond(dense64(Ai)) for Ai in batch) if op == "solve" else 1.0
    assert_close(
        torch.func.vmap(lambda S, x: apply(op, S, x))(stacked, X), looped.double(), cond=c, what="vmap"
    )
    # One structure, a batch of right-hand sides.
    assert_close(
        torch.func.vmap(lambda x: apply(op, A, x))(X),
        torch.stack([apply(op, A, x) for x in X]).double(),
        cond=c,
        what="vmap over x",
    )
    # Per-instance gradients: vmap of grad equals the loop of grads.
    grads = torch.func.vmap(torch.func.grad(lambda S, x: apply(op, S, x).square().sum()))(stacked, X)
    assert type(grads) is type(A)
    for i, (Ai, xi) in enumerate(zip(batch, X)):
        gi = torch.func.grad(lambda S, x=xi: apply(op, S, x).square().sum())(Ai)
        for leaf, ref in zip(pytree.tree_leaves(grads), pytree.tree_leaves(gi)):
            assert_close(leaf[i], ref.double(), cond=condition(op, Ai), what="vmap of grad")
