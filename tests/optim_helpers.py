"""Shared helpers for the optimizer tests (QUALITY.md §2).

Tiny models (an MLP, and a CNN with a 3×3 and a 1×1 conv kernel so that `Spatial` is exercised),
synthetic batches that depend only on the step index (so that an interrupted run, a resumed run and a
run in another process see the same data), a run-k-steps helper, exact comparisons of parameters and
optimizer states, and `CONFIGS`: named optimizer configurations that the checkpoint tests build both
in this process and in a fresh one.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from precondalg import families
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Proximal
from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Preconditioned, Shampoo
from precondalg.placement import Concatenated

# One thread, as in conftest.py: the fresh-process resume script imports this module, and its run must
# sum in the same order as the pytest process's for a bit-for-bit comparison.
torch.set_num_threads(1)

# A fitter whose steps leave φ exactly where it is: the "meta learning rate 0" of the reductions.
FROZEN = TorchOptimizer(torch.optim.SGD, lr=0.0)

# Relative round-off bound of the float64 reductions: max |a − b| / max(1, max |a|).
TOL64 = 1e-13


class MLP(nn.Module):
    """Linear(5, 4) → tanh → Linear(4, 3): two weight matrices and two biases."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 5) -> (N, 3)."""
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(nn.Module):
    """Conv 3×3 (2→3) → tanh → conv 1×1 (3→2) → tanh → Linear(2·4·4, 3), for inputs (N, 2, 6, 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.pointwise = nn.Conv2d(3, 2, 1)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 2, 6, 6) -> (N, 3)."""
        h = torch.tanh(self.pointwise(torch.tanh(self.conv(x))))
        return self.head(h.flatten(1))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (5,), "cnn": (2, 6, 6)}


def make_model(kind: str = "mlp", dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A freshly initialised tiny model.

    Args:
        kind: "mlp" or "cnn".
        dtype: the parameters' dtype.
        seed: the seed of its initialisation.

    Returns:
        The model, its parameters in `dtype`.
    """
    torch.manual_seed(seed)
    model = MODELS[kind]().to(dtype)
    for p in model.parameters():  # the builders of presets that need the module (K-FAC) find it here
        _OWNERS[id(p)] = weakref.ref(model)
    return model


_OWNERS: dict[int, weakref.ref] = {}
"""id of a `make_model` parameter → its model (an id is not reused while the model, which holds the
parameter, lives; a dead model's entry resolves to None)."""


def model_of(params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], nn.Module]:
    """The parameters as a list and the `make_model` model that owns them."""
    params = list(params)
    owners = {_OWNERS.get(id(p), lambda: None)() for p in params}
    model = owners.pop() if len(owners) == 1 else None
    assert model is not None and all(any(p is q for q in model.parameters()) for p in params), (
        "the parameters must all come from one make_model model"
    )
    return params, model


def batch(kind: str, step: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic regression batch of a step: inputs (8, *INPUT_SHAPES[kind]) and targets (8, 3).

    Args:
        kind: "mlp" or "cnn".
        step: the step index; the batch depends on it (and on nothing else).
        dtype: the batch's dtype.

    Returns:
        (x, y).
    """
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, *INPUT_SHAPES[kind], generator=gen, dtype=torch.float64)
    y = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def loss_at(model: nn.Module, kind: str, step: int) -> torch.Tensor:
    """The mean squared error of `model` on the batch of `step` (in the model's dtype)."""
    dtype = next(model.parameters()).dtype
    x, y = batch(kind, step, dtype)
    return ((model(x) - y) ** 2).mean()


def backward_at(model: nn.Module, kind: str, step: int) -> torch.Tensor:
    """Set the model's gradients (set to None first) to those of the loss of `step`; returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = loss_at(model, kind, step)
    loss.backward()
    return loss


def run(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    kind: str,
    steps: int,
    start: int = 0,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Train for `steps` steps on the batches `start`, …, `start + steps − 1`.

    Args:
        model: the model the optimizer updates.
        opt: the optimizer.
        kind: the model's kind (selects the batches).
        steps: the number of steps.
        start: the first batch index (a resumed run passes the interruption step).
        after_step: called with the step index after each optimizer step (e.g. a scheduler).
    """
    for t in range(start, start + steps):
        opt.zero_grad()
        backward_at(model, kind, t)
        opt.step(**step_inputs(opt, model, kind, t))
        if after_step is not None:
            after_step(t)


def step_inputs(opt: torch.optim.Optimizer, model: nn.Module, kind: str, t: int) -> dict[str, Any]:
    """The keyword inputs of step t: for the proximal objective (APO) the batch of the gradient and
    another batch's inputs for the FSD; none otherwise."""
    if not isinstance(getattr(opt, "objective", None), Proximal):
        return {}
    dtype = next(model.parameters()).dtype
    return {"batch": batch(kind, t, dtype), "fsd_batch": batch(kind, 500 + t, dtype)[0]}


def ema_sgd(params: Iterable[torch.Tensor], lr: float, beta: float) -> torch.optim.SGD:
    """The "ema" base rule in torch.optim terms: SGD(momentum=β, dampening=β) with a zero initial
    buffer, so that m ← βm + (1−β)d from m₀ = 0 (torch's own first step would set m₁ = d).

    Args:
        params: the parameters.
        lr: the learning rate.
        beta: β.

    Returns:
        The torch.optim.SGD optimizer.
    """
    opt = torch.optim.SGD(params, lr=lr, momentum=beta, dampening=beta)
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


def clone_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of the parameters (from a model's ``parameters()`` or a list)."""
    return [p.detach().clone() for p in params]


def rel_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """max |a − b| / max(1, max |a|) over lists of tensors of equal shapes, in float64."""
    assert len(a) == len(b), f"{len(a)} tensors against {len(b)}"
    diff = scale = 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape, f"shapes {tuple(x.shape)} and {tuple(y.shape)}"
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        diff = max(diff, (x - y).abs().max().item() if x.numel() else 0.0)
        scale = max(scale, x.abs().max().item() if x.numel() else 0.0)
    return diff / max(1.0, scale)


def assert_close(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], tol: float = TOL64) -> None:
    """Assert that two lists of tensors agree to `tol` relative to their scale (see `rel_diff`)."""
    err = rel_diff(a, b)
    assert err <= tol, f"relative difference {err:.3e} > {tol:.1e}"


def assert_equal(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    """Assert that two lists of tensors are equal bit for bit (same dtypes, `torch.equal`)."""
    assert len(a) == len(b), f"{len(a)} tensors against {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype, f"tensor {i}: dtype {x.dtype} against {y.dtype}"
        assert torch.equal(x, y), f"tensor {i} differs: max abs diff {(x.double() - y.double()).abs().max()}"


def snapshot(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A deep copy of the optimizer's state dict (torch.optim's own is not a snapshot)."""
    return copy.deepcopy(opt.state_dict())


def without(tree: Any, key: str) -> Any:
    """A copy of a nested dict/list tree with every dict entry called `key` removed."""
    if isinstance(tree, dict):
        return {k: without(v, key) for k, v in tree.items() if k != key}
    if isinstance(tree, (list, tuple)):
        return type(tree)(without(v, key) for v in tree)
    return tree


def assert_trees_equal(a: Any, b: Any) -> None:
    """Assert that two state-dict trees have the same structure, equal non-tensor leaves and tensor
    leaves equal bit for bit (same dtypes)."""
    leaves_a, spec_a = pytree.tree_flatten(a)
    leaves_b, spec_b = pytree.tree_flatten(b)
    assert spec_a == spec_b, f"state trees differ in structure:\n{spec_a}\n{spec_b}"
    for i, (x, y) in enumerate(zip(leaves_a, leaves_b)):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype, f"leaf {i}: {x!r} against {y!r}"
            assert torch.equal(x, y), f"state leaf {i} differs"
        else:
            assert x == y, f"state leaf {i}: {x!r} != {y!r}"


def preconditioner_leaves(opt: Preconditioned) -> list[torch.Tensor]:
    """Copies of the leaves of every block's current preconditioner P_φ, in block order."""
    return [leaf.detach().clone() for _, P in opt.preconditioners() for leaf in pytree.tree_leaves(P)]


# ----------------------------------------------------------------------------------------------
# Named configurations: (model kind, builder(params, seed) -> optimizer).  Every one has a nonzero
# meta learning rate, so that φ and the meta-optimizer's state change along the run.
# ----------------------------------------------------------------------------------------------
Builder = Callable[[Iterable[torch.Tensor], int], torch.optim.Optimizer]


def _generic(**kwargs: Any) -> Builder:
    def build(params: Iterable[torch.Tensor], seed: int) -> torch.optim.Optimizer:
        kwargs.setdefault("structure", families.dense_gram())
        kwargs.setdefault("fitter", TorchOptimizer(torch.optim.Adam, lr=1e-2))
        return Preconditioned(params, 0.05, seed=seed, **kwargs)

    return build


CONFIGS: dict[str, tuple[str, Builder]] = {
    "generic-sgd": ("mlp", _generic(base="sgd")),
    "generic-momentum-nesterov": ("mlp", _generic(base="momentum", momentum=0.9, nesterov=True)),
    "generic-ema-direction": ("mlp", _generic(base="ema", momentum=0.8, position="direction")),
    "generic-adam-wd": ("mlp", _generic(base="adam", weight_decay=0.01)),
    "generic-rmsprop": ("cnn", _generic(base="rmsprop")),
    "generic-lowrank-concatenated": (
        "mlp",
        _generic(
            structure=families.low_rank_gram(2, 0.1), placement=Concatenated(), base="momentum", momentum=0.5
        ),
    ),
    "fop-full": ("mlp", lambda ps, seed: FOP(ps, 0.05, hyper_lr=1e-2, seed=seed)),
    "fop-lowrank": (
        "mlp",
        lambda ps, seed: FOP(ps, 0.05, hyper_lr=1e-2, rank=2, low_rank_std=0.1, seed=seed),
    ),
    "fop-normalized": ("mlp", lambda ps, seed: FOP(ps, 0.05, hyper_lr=1e-2, normalized=True, seed=seed)),
    "fop-conv": ("cnn", lambda ps, seed: FOP(ps, 0.05, hyper_lr=1e-2, seed=seed)),
}
for _g in ("global", "layer", "parameter"):
    for _b, _h in (("sgd", "sgd"), ("momentum", "adam"), ("adam", "sgd")):
        CONFIGS[f"hd-{_g}-{_b}"] = (
            "mlp",
            lambda ps, seed, g=_g, b=_b, h=_h: HD(
                ps, 0.05, 1e-3 if h == "adam" else 1e-2, g, b, hyper_optimizer=h, seed=seed
            ),
        )
# PSGD (criterion "fisher": it steps from .grad, as `run` does): every preconditioner, with the update
# draws, momentum, clipping, the on-the-fly Q₀ and both normalisers in play.
_PSGD_FISHER = dict(criterion="fisher", damping=1e-3, lr_precond=0.2)


def decaying_probability(steps: int) -> float:
    """An update-probability schedule 1/(1 + t) (a module-level function: it pickles)."""
    return 1 / (1 + steps)


def _psgd(preconditioner: str, **kwargs: Any) -> Builder:
    def build(params: Iterable[torch.Tensor], seed: int) -> torch.optim.Optimizer:
        return PSGD(params, 0.05, preconditioner=preconditioner, **_PSGD_FISHER, **kwargs, seed=seed)

    return build


CONFIGS |= {
    "psgd-kron": ("mlp", _psgd("kron", update_probability=0.5, momentum=0.9, clip=1.0)),
    "psgd-kron-cnn": ("cnn", _psgd("kron", init_scale=1.0)),
    "psgd-triangular-lipschitz": ("mlp", _psgd("triangular", normalizer="lipschitz")),
    "psgd-dense": ("mlp", _psgd("dense")),
    "psgd-diag": ("mlp", _psgd("diag", update_probability=decaying_probability)),
    "psgd-scan-cnn": ("cnn", _psgd("scan")),
    "psgd-scaw": ("mlp", _psgd("scaw")),
    "psgd-lra": ("mlp", _psgd("lra", rank=3, update_probability=0.7)),
}
# LODO: small networks (the checkpoint and conventions matrices build every configuration several times);
# the permutations are drawn from the seed, so a fresh optimizer with another seed must take them from the
# checkpoint.
CONFIGS |= {
    "lodo-full": ("mlp", lambda ps, seed: LODO(ps, 0.1, meta_lr=1e-2, depth=4, block_size=2, seed=seed)),
    "lodo-full-sgd-cnn": (
        "cnn", lambda ps, seed: LODO(ps, 0.1, meta_lr=1e-3, depth=3, meta_optimizer="sgd", seed=seed)
    ),
    "lodo-diagonal": ("mlp", lambda ps, seed: LODO(ps, 0.1, meta_lr=1e-2, variant="diagonal", seed=seed)),
    "lodo-global": ("mlp", lambda ps, seed: LODO(ps, 0.1, meta_lr=1e-2, variant="global", seed=seed)),
    "lodo-residual": (
        "mlp", lambda ps, seed: LODO(ps, 0.1, meta_lr=1e-2, variant="residual", depth=5, seed=seed)
    ),
    "lodo-no-momentum-code": (
        "mlp",
        lambda ps, seed: LODO(
            ps, 0.1, meta_lr=1e-2, variant="no_momentum", variant_mapping="code", seed=seed
        ),
    ),
}
# Shampoo and K-FAC: statistics fitted in closed form; refits every few steps so that both the refit and
# the steps between refits are in every run; K-FAC on both models (Linear and Conv2d hooks).
def _kfac(**kwargs: Any) -> Builder:
    def build(params: Iterable[torch.Tensor], seed: int) -> torch.optim.Optimizer:
        params, model = model_of(params)
        return KFAC(params, 0.05, model=model, damping=1e-2, update_every=3, seed=seed, **kwargs)

    return build


CONFIGS |= {
    "shampoo": ("mlp", lambda ps, seed: Shampoo(ps, 0.05, epsilon=1e-4, update_every=3, seed=seed)),
    "shampoo-ema-adam-graft-cnn": (
        "cnn",
        lambda ps, seed: Shampoo(
            ps, 0.05, beta2=0.9, epsilon=1e-4, grafting="adam", momentum=0.9, seed=seed
        ),
    ),
    "shampoo-newton-wd": (
        "mlp", lambda ps, seed: Shampoo(ps, 0.05, epsilon=1e-3, root="newton", weight_decay=0.01, seed=seed)
    ),
    "kfac": ("mlp", _kfac()),
    "kfac-momentum-cnn": ("cnn", _kfac(momentum=0.9, weight_decay=1e-3)),
}


# APO: both modes, meta-updates every 3 steps (a meta step and plain steps in every run); the
# proximal objective reads the model and the batches `run` passes.
def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


def _apo(mode: str, **kwargs: Any) -> Builder:
    def build(params: Iterable[torch.Tensor], seed: int) -> torch.optim.Optimizer:
        params, model = model_of(params)
        return APO(
            params, 0.05, model=model, loss_fn=_mse, mode=mode, fsd="squared", meta_every=3, meta_lr=1e-2,
            seed=seed, **kwargs,
        )

    return build


CONFIGS |= {
    "apo-lr": ("mlp", _apo("lr", base="adam")),
    "apo-precond": ("mlp", _apo("precond", warmup=2)),
    "apo-precond-cnn": ("cnn", _apo("precond", base="sgd", lam_wsd=1.0)),
}



