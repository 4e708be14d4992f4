"""The methods the harness compares, each with its documented tuning grid, and how a user's own row joins.

A `Method` is a name, ``make(model, task, **hyperparameters) → optimizer`` and a grid (a list of
hyperparameter dicts).  Every built-in grid has `GRID_SIZE` = 5 points — a 5-point log grid of the
learning rate, the other hyperparameters at the values stated here — so that with the default budget
every method gets exactly the same number of tuning trials (a smaller ``--budget`` takes evenly spaced
points of every grid).

A user's row is passed by import path ``"package.module:attribute"``; the attribute is either a `Method`
(full control: its own grid) or a callable ``f(params, lr) → optimizer`` in torch.optim's style — e.g. a
function returning a `precondalg.optim.Preconditioned` — which is tuned over `LR_GRID` unless it carries
a ``grid`` attribute (a list of dicts of its keyword arguments).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from precondalg.experiments.tasks import TaskInstance
from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo

__all__ = [
    "GRID_SIZE",
    "LR_GRID",
    "METHODS",
    "Method",
    "apply_lr_grids",
    "load_method",
    "resolve_methods",
    "with_lr_grid",
]

GRID_SIZE = 5
LR_GRID = (0.1, 0.03, 0.01, 0.003, 0.001)
"""The learning-rate grid of momentum-based rows and of a user's callable without a grid."""
ADAPTIVE_GRID = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
"""The learning-rate grid of Adam and RMSprop (the APO paper's Adam grid)."""

Maker = Callable[..., torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the comparison.

    Attributes:
        name: the name in tables and files.
        make: ``make(model, task, **hp)`` → the optimizer of ``model.parameters()``.
        grid: the hyperparameter points the tuning tries (each a dict of ``make``'s keywords).
        note: the fixed settings, in words (shown in the table's legend).
    """

    name: str
    make: Callable[..., torch.optim.Optimizer]
    grid: tuple[dict[str, Any], ...]
    note: str = ""

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError(f"Method {self.name!r}: the grid is empty")


def _lr_grid(values: tuple[float, ...]) -> tuple[dict[str, Any], ...]:
    return tuple({"lr": v} for v in values)


def _fsd(task: TaskInstance) -> tuple[str, float]:
    """APO's function-space discrepancy for the task: KL for classifiers, squared error otherwise; none
    (λ_FSD = 0) where the model has no data (a point model)."""
    if task.batches and task.batches[0][0] is None:
        return "squared", 0.0
    return ("kl" if task.classification else "squared"), 1.0


def _apo(model: nn.Module, task: TaskInstance, lr: float) -> torch.optim.Optimizer:
    fsd, lam = _fsd(task)
    return APO(
        model.parameters(), lr, model=model, loss_fn=task.loss_fn, fsd=fsd, lam_fsd=lam, seed=task.seed
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "SGD",
            lambda model, task, lr: torch.optim.SGD(model.parameters(), lr=lr),
            _lr_grid((1.0, 0.3, 0.1, 0.03, 0.01)),
        ),
        Method(
            "Momentum",
            lambda model, task, lr: torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
            _lr_grid(LR_GRID),
            "heavy ball μ = 0.9",
        ),
        Method(
            "Adam",
            lambda model, task, lr: torch.optim.Adam(model.parameters(), lr=lr),
            _lr_grid(ADAPTIVE_GRID),
        ),
        Method(
            "RMSprop",
            lambda model, task, lr: torch.optim.RMSprop(model.parameters(), lr=lr),
            _lr_grid(ADAPTIVE_GRID),
        ),
        Method(
            "LBFGS",
            lambda model, task, lr: torch.optim.LBFGS(model.parameters(), lr=lr, max_iter=1, history_size=10),
            _lr_grid((1.0, 0.3, 0.1, 0.03, 0.01)),
            "one iteration per step (max_iter = 1), history 10",
        ),
        Method(
            "FOP",
            lambda model, task, lr: FOP(model.parameters(), lr, momentum=0.9, hyper_lr=1e-4, seed=task.seed),
            _lr_grid(LR_GRID),
            "momentum 0.9, hyper_lr 1e-4 (the paper's), full-rank M",
        ),
        Method(
            "HD",
            lambda model, task, lr: HD(
                model.parameters(), lr, hyper_lr=1e-4, base="momentum", seed=task.seed
            ),
            _lr_grid(LR_GRID),
            "momentum 0.9, hyper_lr 1e-4, one rate per layer",
        ),
        Method(
            "PSGD",
            lambda model, task, lr: PSGD(
                model.parameters(), lr, preconditioner="kron", criterion="newton", seed=task.seed
            ),
            _lr_grid((0.3, 0.1, 0.03, 0.01, 0.003)),
            "Kronecker Q, Newton criterion (Hv by autograd), lr_precond 0.1",
        ),
        Method(
            "LODO",
            lambda model, task, lr: LODO(model.parameters(), lr=lr, seed=task.seed),
            _lr_grid((1.0, 0.3, 0.1, 0.03, 0.01)),
            "meta_lr 1e-3 (Adam), β 0.9, depth 16, block 4 (the code's defaults); lr = α₀",
        ),
        Method(
            "APO", _apo, _lr_grid(LR_GRID), "APO-Precond on momentum 0.9, meta every 10, λ_FSD 1, λ_WSD 0.1"
        ),
        Method(
            "Shampoo",
            lambda model, task, lr: Shampoo(model.parameters(), lr, epsilon=1e-4, update_every=10),
            _lr_grid((0.3, 0.1, 0.03, 0.01, 0.003)),
            "ε 1e-4, roots every 10 steps, no grafting",
        ),
        Method(
            "KFAC",
            lambda model, task, lr: KFAC(model.parameters(), lr, model=model, damping=1e-3, update_every=10),
            _lr_grid(LR_GRID),
            "damping 1e-3, EMA 0.95, inverses every 10 steps (empirical Fisher)",
        ),
    )
}
"""The built-in rows by name (``--methods``)."""


def _from_callable(name: str, fn: Callable[..., torch.optim.Optimizer]) -> Method:
    grid = getattr(fn, "grid", None)
    if grid is None:
        grid = _lr_grid(LR_GRID)
    elif not (isinstance(grid, (list, tuple)) and all(isinstance(g, dict) for g in grid)):
        raise TypeError(
            f"{name}: its 'grid' attribute must be a list of dicts of keyword arguments; got {grid!r}"
        )

    def make(model: nn.Module, task: TaskInstance, **hp: Any) -> torch.optim.Optimizer:
        return fn(model.parameters(), **hp)

    return Method(name, make, tuple(grid), f"user row {name}")


def load_method(path: str) -> Method:
    """The method at import path ``"module:attribute"`` (see the module docstring).

    Raises:
        ValueError: a path without ":" or a module or attribute that does not exist.
        TypeError: an attribute that is neither a `Method` nor callable.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"a user method is given as 'module:attribute' (e.g. 'mymethods:my_fop'); got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} of method {path!r}: {e}") from e
    if not hasattr(module, attribute):
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (method {path!r})")
    obj = getattr(module, attribute)
    if isinstance(obj, Method):
        return obj
    if callable(obj):
        return _from_callable(path, obj)
    raise TypeError(f"method {path!r} must be a Method or a callable f(params, lr); got {type(obj).__name__}")


def resolve_methods(names: list[str]) -> list[Method]:
    """Built-in names (case-insensitive) and import paths ("module:attribute"), in order.

    Raises:
        ValueError: an unknown name (the known ones are listed), or a name given twice.
    """
    by_lower = {k.lower(): m for k, m in METHODS.items()}
    out: list[Method] = []
    for name in names:
        if ":" in name:
            out.append(load_method(name))
        elif name.lower() in by_lower:
            out.append(by_lower[name.lower()])
        else:
            raise ValueError(
                f"unknown method {name!r}; built-in: {', '.join(METHODS)}, or 'module:attribute'"
            )
    seen = [m.name for m in out]
    if len(set(seen)) != len(seen):
        raise ValueError(f"a method is named twice in {seen}")
    return out


def with_lr_grid(method: Method, lrs: list[float]) -> Method:
    """`method` tuned over the learning rates `lrs` instead (a user grid): each point is its grid's first
    point with ``lr`` replaced, so the method's other settings stay as documented.

    Raises:
        ValueError: no learning rates, a non-positive one, or a method whose grid has no ``lr``.
    """
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"a learning-rate grid of {method.name!r} must be positive numbers; got {lrs}")
    if "lr" not in method.grid[0]:
        raise ValueError(f"method {method.name!r} has no 'lr' in its grid {list(method.grid)}")
    return dataclasses.replace(method, grid=tuple({**method.grid[0], "lr": float(lr)} for lr in lrs))


def apply_lr_grids(methods: list[Method], grids: dict[str, list[float]]) -> list[Method]:
    """Replace the learning-rate grids named in `grids` (method name, case-insensitive, or "all").

    Raises:
        ValueError: a name in `grids` that is neither "all" nor one of the methods.
    """
    names = {m.name.lower() for m in methods}
    unknown = [k for k in grids if k.lower() != "all" and k.lower() not in names]
    if unknown:
        raise ValueError(f"--grid names {unknown}, which are not compared ({[m.name for m in methods]})")
    lowered = {k.lower(): v for k, v in grids.items()}
    out = []
    for m in methods:
        lrs = lowered.get(m.name.lower(), lowered.get("all"))
        out.append(m if lrs is None else with_lr_grid(m, lrs))
    return out

