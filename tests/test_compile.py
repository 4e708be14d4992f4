"""torch.compile: what works today, pinned (docs/concepts/compile.md says the same in prose).

(a) Every structure, built by its public constructor inside a `torch.compile`d function (fullgraph),
    gives what eager gives: ``A @ x``, ``x @ A``, ``to_dense()`` and, where it exists, ``solve``.
    Dynamo rebuilds a structure around `torch.fx.Proxy` fields when it meets a tensor in ``A @ x``,
    and the recorded graph calls the constructor again with FakeTensors, FunctionalTensors and real
    tensors (by keyword, ``Kronecker(factors=...)``); before the fix this failed inside `check_tensor`.
(b) Real bad input is still refused, inside compiled functions and traced graphs too.
(c) A compiled model (``torch.compile(model)``) with each objective, eager ``opt.step``: equal to the
    eager-model run; `Newton(hvp="autograd")` fails with aot_autograd's double-backward error.
(d) ``torch.compile(opt.step)`` runs (with graph breaks) and equals the eager step.

Backend: "aot_eager" (Dynamo + AOT autograd, the parts that trace our code and that refuse double
backward; no Inductor code generation, which is slow to compile and irrelevant to what is pinned here).
It runs the same aten kernels as eager, so the structure results are compared exactly.  Every run is in
float64; tolerances are stated where they are not zero.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.utils._pytree as pytree
from strategies import ALL_KINDS, SOLVABLE_KINDS, make
from torch._dynamo.backends.debugging import aot_eager

import precondalg as pa
from precondalg.objectives import Fisher, Hypergradient, Newton, Proximal
from precondalg.structures.permutation import _cached_index

f64 = torch.float64
_VARIADIC = (pa.BlockDiagonal, pa.Kronecker, pa.KroneckerSum, pa.Product, pa.Sum)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (no cache entries or recompile counts carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def rebuild(A):
    """A structure built again by its public constructors, recursively (what user code would write)."""
    if isinstance(A, tuple):
        return tuple(rebuild(a) for a in A)
    if not isinstance(A, pa.Structure):
        return A
    fields = {f.name: rebuild(getattr(A, f.name)) for f in dataclasses.fields(A)}
    if isinstance(A, _VARIADIC):
        (parts,) = fields.values()
        return type(A)(*parts)
    return type(A)(**fields)


def apply_all(A, x, y, solvable):
    """What a structure is used for, as a list of tensors."""
    out = [A @ x, y @ A, A.to_dense()]
    return out + [A.solve(x)] if solvable else out


def assert_same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert torch.equal(g, e), (g - e).abs().max()


# ----------------------------------------------------------------------------------------------
# (a) structures built inside compiled functions
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_structure_built_in_compiled_function_equals_eager(kind):
    A = make(kind, 0, 4, f64)
    leaves, spec = pytree.tree_flatten(A)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(A.shape[1], 2, generator=g, dtype=f64)
    y = torch.randn(3, A.shape[0], generator=g, dtype=f64)

    def f(leaves, x, y):
        return apply_all(rebuild(pytree.tree_unflatten(leaves, spec)), x, y, kind in SOLVABLE_KINDS)

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(leaves, x, y)
    expected = f(leaves, x, y)  # eager, after the compile
    assert len(expected) == 3 + (kind in SOLVABLE_KINDS)
    assert_same(got, expected)


@pytest.mark.parametrize("kind", ["triangular", "normalization", "low_rank", "kronecker", "product"])
def test_structure_built_with_dynamic_shapes(kind):
    """Symbolic shapes (SymInts) reach the constructors' shape checks; two sizes, one compile."""
    f = torch.compile(
        lambda leaves, spec, x: rebuild(pytree.tree_unflatten(leaves, spec)) @ x,
        fullgraph=True,
        backend="aot_eager",
        dynamic=True,
    )
    for n in (4, 6):
        A = make(kind, 0, n, f64)
        leaves, spec = pytree.tree_flatten(A)
        x = torch.ones(n, dtype=f64)
        assert torch.equal(f(leaves, spec, x), A @ x)


def test_scalar_dimension_may_be_a_symint():
    f = torch.compile(
        lambda a, x: pa.Scalar(a, x.shape[0]) @ x, fullgraph=True, backend="aot_eager", dynamic=True
    )
    for n in (3, 5):
        x = torch.arange(float(n), dtype=f64)
        assert torch.equal(f(torch.tensor(2.0, dtype=f64), x), 2 * x)


def test_permutation_index_cache_is_not_poisoned_by_tracing():
    """A PermutationNetwork caches its gather indices; a FakeTensor cached while tracing used to break
    every later eager call ("Please convert all Tensors to FakeTensors first")."""
    net = pa.permutation_network(
        3, depth=2, block_size=2, generator=torch.Generator().manual_seed(0), dtype=f64
    )
    x = torch.arange(3.0, dtype=f64)
    _cached_index.cache_clear()
    f = torch.compile(lambda b, x: pa.PermutationNetwork(b, net.perms, 3) @ x, backend="aot_eager")
    got = f(net.blocks, x)
    assert _cached_index.cache_info().currsize == 0  # nothing cached while tracing
    assert torch.equal(got, net @ x)  # eager, after the compile
    assert _cached_index.cache_info().currsize == 2
    assert torch.equal(net @ x, net.to_dense() @ x)


# ----------------------------------------------------------------------------------------------
# (b) real bad input is still refused
# ----------------------------------------------------------------------------------------------
BAD = {
    "diagonal_2d": (
        lambda: pa.Diagonal(torch.ones(2, 2, dtype=f64)).to_dense(),
        ValueError,
        "Diagonal: argument 'd' must have shape (n,); got (2, 2)",
    ),
    "diagonal_int": (
        lambda: pa.Diagonal(torch.ones(2, dtype=torch.int64)).to_dense(),
        TypeError,
        "Diagonal: argument 'd' must be a floating-point tensor; got torch.int64",
    ),
    "low_rank_shapes": (
        lambda: pa.IdentityPlusLowRank(torch.ones(3, 2, dtype=f64), torch.ones(3, 1, dtype=f64)).to_dense(),
        ValueError,
        "IdentityPlusLowRank: arguments 'U' and 'V' must have the same shape (n, r); "
        "got U (3, 2) and V (3, 1)",
    ),
    "kronecker_tensor_factor": (
        lambda: pa.Kronecker(pa.Dense(torch.eye(2, dtype=f64)), torch.eye(2, dtype=f64)).to_dense(),
        TypeError,
        "Kronecker: factor 1 must be a Structure (wrap a tensor in Dense(...)); got Tensor",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_refused_inside_compiled_function(case):
    """Same exception, same message, in eager and inside torch.compile (Dynamo runs the checks on the
    real tensors' metadata; the graph break on the raise falls back to eager, which raises)."""
    call, exc, message = BAD[case]
    with pytest.raises(exc, match=re.escape(message)):
        call()
    with pytest.raises(exc, match=re.escape(message)):
        torch.compile(call, backend="aot_eager")()


def test_fullgraph_compile_reports_the_same_message():
    call, _, message = BAD["diagonal_2d"]
    with pytest.raises(torch._dynamo.exc.Unsupported, match=re.escape(message)):
        torch.compile(call, fullgraph=True, backend="aot_eager")()


def test_fx_traced_graph_validates_real_values_when_run():
    """Under torch.fx.symbolic_trace the constructor sees Proxies and only records itself; running the
    graph constructs with the real tensors, which are validated as in eager."""
    gm = torch.fx.symbolic_trace(lambda d, x: pa.Diagonal(d) @ x)
    assert "Diagonal" in gm.code
    d = torch.tensor([1.0, 2.0], dtype=f64)
    assert torch.equal(gm(d, torch.ones(2, dtype=f64)), d)
    with pytest.raises(
        ValueError, match=re.escape("Diagonal: argument 'd' must have shape (n,); got (2, 2)")
    ):
        gm(torch.ones(2, 2, dtype=f64), torch.ones(2, dtype=f64))


def test_variadic_constructors_accept_their_field_by_keyword():
    """torch.fx records a structure argument as ``cls(**fields)``: ``Kronecker(factors=(A, B))`` is
    ``Kronecker(A, B)``, validated the same way."""
    A, B = pa.Dense(torch.eye(2, dtype=f64)), pa.Diagonal(torch.tensor([1.0, 2.0, 3.0], dtype=f64))
    assert torch.equal(pa.Kronecker(factors=(A, B)).to_dense(), pa.Kronecker(A, B).to_dense())
    assert pa.BlockDiagonal(blocks=(A, B)).shape == (5, 5)
    with pytest.raises(TypeError, match=re.escape("Kronecker: factor 1 must be a Structure")):
        pa.Kronecker(factors=(A, torch.eye(2)))
    with pytest.raises(ValueError, match=re.escape("Product: factor 0 of shape (2, 2) cannot multiply")):
        pa.Product(factors=(A, B))


# ----------------------------------------------------------------------------------------------
# (c) a compiled model with each objective
# ----------------------------------------------------------------------------------------------
def squared_error(out, y):
    # Written out rather than F.mse_loss: torch 2.13's forward-over-reverse of mse_loss raises
    # "ZeroTensors are immutable" (torch.func.jvp of torch.func.grad), compiled or not.
    return ((out - y) ** 2).mean()


_g = torch.Generator().manual_seed(1)
X, Y, X_FSD = (torch.randn(8, k, generator=_g, dtype=f64) for k in (4, 2, 4))


class Counting:
    """A torch.compile backend: aot_eager, counting how often a compiled graph runs."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gm, example_inputs):
        compiled = aot_eager(gm, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run


def run_model(case, backend=None, steps=3, warm=False):
    """Three steps of Preconditioned(dense_gram) on a small MLP; the model compiled with `backend`
    (None: eager), after an ordinary backward through it if `warm`.  Returns the parameters and the
    preconditioners (dense)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(f64)
    model = net if backend is None else torch.compile(net, backend=backend)
    fitter = pa.fitters.LieGroup()
    if case in ("online", "unroll"):
        objective, fitter = Hypergradient(mode=case), pa.fitters.TorchOptimizer(torch.optim.SGD, lr=0.1)
    elif case == "fisher":
        objective = Fisher()
    elif case == "proximal":  # the module itself, not the OptimizedModule (see the docs)
        objective = Proximal(getattr(model, "_orig_mod", model), squared_error, lam_fsd=0.5, lam_wsd=0.1)
        fitter = pa.fitters.TorchOptimizer(torch.optim.SGD, lr=0.1)
    elif case == "proximal_compiled_module":
        objective = Proximal(model, squared_error, lam_fsd=0.5, lam_wsd=0.1)
        fitter = pa.fitters.TorchOptimizer(torch.optim.SGD, lr=0.1)
    elif case == "newton_torch_func":
        objective = Newton(hvp="torch.func", model=getattr(model, "_orig_mod", model), loss_fn=squared_error)
    else:
        objective = Newton(hvp=case.removeprefix("newton_"))
    opt = pa.optim.Preconditioned(
        model.parameters(), 0.1, structure=pa.families.dense_gram(), objective=objective, fitter=fitter
    )

    def backward_closure():  # torch.optim's convention
        loss = squared_error(model(X), Y)
        loss.backward()
        return loss

    if warm:  # an ordinary forward and backward through the model first
        squared_error(model(X), Y).backward()
    for _ in range(steps):
        opt.zero_grad()
        if case == "newton_torch_func":
            opt.step(batch=(X, Y))
        elif case.startswith("newton"):
            opt.step(lambda: squared_error(model(X), Y))  # PSGD's convention: no backward
        elif case in ("unroll", "fisher"):
            opt.step(backward_closure)
        else:
            squared_error(model(X), Y).backward()
            if case.startswith("proximal"):
                opt.step(batch=(X, Y), fsd_batch=X_FSD)
            else:
                opt.step()
    return [p.detach().clone() for p in net.parameters()], [P.to_dense() for _, P in opt.preconditioners()]


# case: (tolerance, compiled-graph runs in 3 steps).  Tolerance 1e-12 (float64, entries O(1)): the
# compiled graph runs the same kernels, so only a reordered reduction could differ (~1e-16); finite
# differences divide gradient differences by δ = √eps ≈ 1.5e-8, which scales any rounding by ~7e7,
# hence 1e-7.  A wrong result differs by about |P − I| ≥ 1e-3 (asserted), far above both.
MODEL_CASES = {
    "online": (1e-12, 3),  # one forward per step
    "unroll": (1e-12, 6),  # the closure, then once more at the lookahead
    "fisher": (1e-12, 3),
    "proximal": (1e-12, 3),  # the meta-loss runs the module through torch.func: eager, by design
    "newton_finite_difference": (1e-7, 6),  # two closure evaluations per step
    "newton_torch_func": (1e-12, 0),  # the model is only evaluated inside torch.func.jvp: eager
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_compiled_model_equals_eager_model(case):
    tol, runs = MODEL_CASES[case]
    params, Ps = run_model(case)
    backend = Counting()
    params_c, Ps_c = run_model(case, backend)
    assert backend.calls == runs
    assert max((P - torch.eye(P.shape[0], dtype=f64)).abs().max() for P in Ps) > 1e-3  # P was learned
    for a, b in zip(params_c + Ps_c, params + Ps):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_proximal_with_the_compiled_module_works_but_decompiles_it():
    """Proximal(OptimizedModule, ...) gives the same run, but torch.compile refuses to trace inside
    torch.func transforms and then skips the compiled frame for good: from the first meta-step on the
    model runs eagerly (2 compiled runs in 3 steps: the first forward, and the recompiled plain call
    for the FSD targets).  Hence the docs' advice to pass the uncompiled module."""
    params, Ps = run_model("proximal")
    backend = Counting()
    params_c, Ps_c = run_model("proximal_compiled_module", backend)
    assert backend.calls == 2
    for a, b in zip(params_c + Ps_c, params + Ps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "after_a_backward"])
def test_newton_autograd_fails_with_a_compiled_model(warm):
    """Double backward through an aot_autograd graph is not supported by torch 2.13 (every backend but
    "eager" goes through aot_autograd: "aot_eager", "inductor").  On a model whose first call is the
    Newton closure, the second differentiation raises; on a model that already ran an ordinary
    backward, its compiled backward donates buffers and the first differentiation (create_graph=True)
    raises.  Either way the optimizer says what to do, and keeps torch's message."""
    expected = (
        "non-empty donated buffers" if warm else "aot_autograd does not currently support double backward"
    )
    with pytest.raises(RuntimeError, match=expected) as info:
        run_model("newton_autograd", "aot_eager", steps=1, warm=warm)
    assert "use Newton(hvp='finite_difference') with the same closure" in str(info.value)


def test_newton_autograd_works_with_the_dynamo_only_backend():
    """backend="eager" (Dynamo graph capture, no aot_autograd) keeps double backward working."""
    params, Ps = run_model("newton_autograd")
    params_c, Ps_c = run_model("newton_autograd", "eager")
    for a, b in zip(params_c + Ps_c, params + Ps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# (d) torch.compile(opt.step)
# ----------------------------------------------------------------------------------------------
def run_step(preset, compiled, steps=3):
    """Three steps of a preset on a small MLP, with a compiled or an eager ``opt.step``.  Returns the
    parameters and preconditioners (dense), before and after."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(f64)
    if preset.startswith("HD-"):
        granularity = preset.removeprefix("HD-")
        opt = pa.optim.HD(model.parameters(), lr=0.1, hyper_lr=1e-3, granularity=granularity)
    elif preset == "FOP":
        opt = pa.optim.FOP(model.parameters(), lr=0.1, hyper_lr=1e-2)
    else:
        opt = pa.optim.Preconditioned(
            model.parameters(),
            0.1,
            structure=pa.families.dense_gram(),
            objective=Fisher(),
            fitter=pa.fitters.LieGroup(),
        )

    def state():
        return [p.detach().clone() for p in model.parameters()] + [
            P.to_dense() for _, P in opt.preconditioners()
        ]

    step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
    start = state()
    for _ in range(steps):
        opt.zero_grad()
        squared_error(model(X), Y).backward()
        step()
    return start, state()


@pytest.mark.parametrize(
    "preset",
    [
        pytest.param("HD-parameter", marks=pytest.mark.slow),  # 8 s; HD-layer and HD-global stay
        "HD-layer",
        "HD-global",
        pytest.param("FOP", marks=pytest.mark.slow),
        pytest.param("PSGD-Fisher", marks=pytest.mark.slow),
    ],
)
def test_compiled_optimizer_step_equals_eager_step(preset):
    """It runs (with graph breaks, none of them in the structures' validation) and gives the eager
    result, parameters and preconditioners.

    HD (SGD on the learning rates) and Fisher with the Lie-group fitter: exactly.  HD's per-layer and
    global rates are 0-d float64 leaves, whose in-place update torch.compile used to lose (the learned
    rates stayed at α₀): the fitter hands them to the torch optimizer as 1-element views.  FOP fits M with
    torch.optim.Adam, whose compiled step computes the bias corrections 1 − βᵗ from its float32 step
    counter (eager: Python floats), a relative difference of ~1e-5 in each meta-step; it is compared
    relative to how far each tensor moved (rtol 1e-4; a wrong step is off by O(1) of that).
    """
    start, eager = run_step(preset, compiled=False)
    _, compiled = run_step(preset, compiled=True)
    rtol = 1e-4 if preset == "FOP" else 0.0
    for c, e, s in zip(compiled, eager, start):
        moved = (e - s).abs().max()
        assert moved > 1e-6  # every parameter and every preconditioner was updated
        assert (c - e).abs().max() <= rtol * moved


def test_a_zero_dimensional_float64_parameter_moves_under_a_compiled_step():
    """A 0-d float64 parameter (a temperature) moves under a compiled step exactly as in eager mode
    (torch.compile drops in-place updates of 0-d float64 optimizer *state*, see HD above; parameters
    are not affected, and this pins it)."""
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        temperature = torch.nn.Parameter(torch.tensor(1.0, dtype=f64))
        weight = torch.nn.Parameter(torch.ones(2, 3, dtype=f64))
        opt = pa.optim.Preconditioned(
            [temperature, weight],
            0.01,
            structure=pa.families.dense_gram(),
            placement=pa.optim.by_ndim({2: pa.placement.InputSide()}),
            fitter=pa.fitters.TorchOptimizer(torch.optim.SGD, lr=1e-2),
            base="momentum",
        )
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for _ in range(3):
            opt.zero_grad()
            ((weight * temperature).sum() - 1).square().backward()
            step()
        results.append((temperature.detach().clone(), weight.detach().clone()))
    (t_eager, w_eager), (t_compiled, w_compiled) = results
    assert abs(t_eager.item() - 1.0) > 1e-3, "the eager run did not move the temperature"
    assert torch.equal(t_compiled, t_eager) and torch.equal(w_compiled, w_eager)
