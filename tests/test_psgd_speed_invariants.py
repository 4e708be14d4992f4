"""What keeps the Lie-group step of `Preconditioned` fast (issue 7), pinned by counts, not timings.

- A triangular factor fitted by `LieGroup` is read without a triu: its leaves are kept exactly upper
  triangular, so a closed-form step runs one triu per triangular factor (the projection of R) and none
  in Q h, Q⁻ᵀ v, the step (I − μR)Q or P @ g.
- The mark is sound: a `Triangular` rebuilt by unflattening (as torch.func transforms do) reads its R
  through triu, so a lower part never leaks into a product or a gradient.
- One finite-check primitive (the least and largest entries, `torch.aminmax`) catches NaN, +Inf and
  −Inf in every floating dtype, and ignores integer counters.
- A step known to be finite on the CPU runs no `torch.where` and no `aten::to` that changes nothing.
- A fitted factor is proposed as a new tensor and swapped in once known finite: no snapshot, no copy;
  PSGD's 2 in R takes no pass of its own over a factor.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import precondalg as pa
from precondalg._tensors import all_finite
from precondalg.optim import PSGD
from precondalg.structures import Triangular

F64 = torch.float64


class _Count(TorchDispatchMode):
    """Counts the aten operations dispatched inside the block, by name (e.g. "triu")."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.on_square: collections.Counter[str] = collections.Counter()
        """The operations with a square matrix among their arguments (a factor, in `_kron_mlp`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.ops[name] += 1
        if any(isinstance(a, torch.Tensor) and a.ndim == 2 and a.shape[0] == a.shape[1] for a in args):
            self.on_square[name] += 1
        return func(*args, **(kwargs or {}))


def _kron_mlp() -> tuple[torch.nn.Module, PSGD]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(F64)
    opt = PSGD(model.parameters(), 0.01, preconditioner="kron", criterion="fisher", lr_precond=0.1)
    return model, opt


def _closure(model: torch.nn.Module) -> callable:
    x = torch.randn(8, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    return lambda: model(x).square().mean()


def test_a_closed_form_kron_step_runs_one_triu_per_triangular_factor():
    model, opt = _kron_mlp()
    closure = _closure(model)
    opt.step(closure)
    factors = sum(
        isinstance(leaf, torch.Tensor) and leaf.ndim == 2
        for st in opt.state.values()
        for leaf in st.get("preconditioner", {}).get("phi", [])
    )
    assert factors == 6  # the weights: two triangular factors each; the biases: one each
    with _Count() as count:
        opt.step(closure)
    assert count.ops["triu"] == factors
    assert count.ops["where"] == 0 and count.ops["_to_copy"] == 0


def test_a_fitted_factor_is_swapped_in_without_a_snapshot_a_copy_or_a_pass_for_the_2():
    model, opt = _kron_mlp()  # square matrices: the factors only (the weights are 4×5 and 3×4)
    closure = _closure(model)
    opt.step(closure)
    with _Count() as count:
        opt.step(closure)
    assert count.on_square["set_"] == 6
    assert count.on_square["clone"] == count.on_square["copy_"] == 0
    assert count.on_square["mul"] == 6  # μ·(EQ) per factor; PSGD's 2 in R takes none


def test_fitted_triangular_leaves_stay_exactly_upper_triangular():
    model, opt = _kron_mlp()
    closure = _closure(model)
    for _ in range(3):
        opt.step(closure)
    leaves = [leaf for st in opt.state.values() for leaf in st.get("preconditioner", {}).get("phi", [])]
    squares = [leaf for leaf in leaves if leaf.ndim == 2]
    assert squares and all(torch.equal(leaf, leaf.triu()) for leaf in squares)


def test_an_unflattened_triangular_reads_its_leaf_through_triu():
    R = torch.arange(9.0, dtype=F64).reshape(3, 3)
    built = Triangular(R.clone())
    unflattened = pytree.tree_unflatten([R.clone()], pytree.tree_structure(built))  # a raw leaf
    x = torch.ones(3, dtype=F64)
    assert built.upper and not unflattened.upper
    torch.testing.assert_close(unflattened @ x, R.triu() @ x, rtol=0, atol=0)
    torch.testing.assert_close(x @ unflattened, x @ R.triu(), rtol=0, atol=0)
    grad = torch.func.grad(lambda T: (T @ x).sum())(built)
    assert torch.equal(grad.R, torch.ones(3, 3, dtype=F64).triu())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64, torch.complex64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_catches_every_non_finite_value(dtype, bad):
    good = torch.ones(4, 3, dtype=dtype)
    spoiled = good.clone()
    spoiled[2, 1] = bad
    counter = torch.tensor(7)
    assert bool(all_finite([good, counter, torch.zeros(0, dtype=dtype)]))
    assert not bool(all_finite([good, counter, spoiled]))
    assert bool(all_finite([counter])) and bool(all_finite([]))


def test_the_batched_max_abs_norms_are_each_parts_own():
    """Parts with one leaf each take one foreach abs/max for the whole block: the same values as
    `max_abs` part by part, including a 1×1 factor and a diagonal one."""
    gen = torch.Generator().manual_seed(0)
    Q = pa.structures.Kronecker(
        Triangular(torch.randn(3, 3, dtype=F64, generator=gen)),
        pa.structures.Diagonal(torch.randn(1, dtype=F64, generator=gen)),
        pa.structures.Diagonal(torch.randn(4, dtype=F64, generator=gen)),
    )
    R = pytree.tree_map(lambda leaf: torch.randn(leaf.shape, dtype=F64, generator=gen), Q)
    leaves, spec = pytree.tree_flatten(Q)
    fit = pa.fitters.LieGroup().build([leaf.clone() for leaf in leaves], spec)
    parts = [R.factors[0], R.factors[1], R.factors[2]]
    expected = torch.stack([pa.structures.max_abs(r) for r in parts])
    assert torch.equal(fit._norms(parts), expected)
