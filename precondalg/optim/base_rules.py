"""Base rules: what the parameter update does with the (preconditioned) direction (layer 5).

A rule is a pair of pure functions and the hyperparameters it reads: ``init(p)`` makes its state
(tensors only, all created at once, so that a skipped step can keep the old state with `torch.where`
and no host synchronisation), and
``update(d, state, group)`` returns the new state and the step s, the update being θ ← θ − lr·s.  The
formulas are torch.optim's, operation for operation, so that at P = I a preconditioned optimizer
reproduces torch.optim.SGD / SGD(momentum) / Adam / RMSprop to floating-point round-off.
Hyperparameters are read from the param group: they can differ per group and be scheduled.  A param
group holds exactly the hyperparameters its rule reads (besides ``lr`` and ``weight_decay``), as the
torch optimizer the rule mirrors does, so that torch's schedulers find what they look for (OneCycleLR
cycles ``momentum`` of the "momentum" rule and ``betas`` of "adam").  For `momentum`, s = b, or
d + μb with Nesterov.

| rule | group keys (defaults) | state | s |
| --- | --- | --- | --- |
| `sgd` | – | – | d |
| `momentum` (SGD) | momentum 0.9, dampening 0, nesterov False | momentum_buffer b, flag | b ← μb + (1−τ)d |
| `ema` (LODO) | momentum 0.9 | exp_avg m (m₀ = 0) | m ← βm + (1−β)d; s = m |
| `adam` | betas (0.9, 0.999), eps 1e-8 | step t, exp_avg m, exp_avg_sq v | m̂/(√v̂ + ε) |
| `rmsprop` | alpha 0.99, eps 1e-8 | square_avg v | v ← αv + (1−α)d²; s = d/(√v + ε) |

(momentum: b₁ = d on the first step, as torch.optim.SGD; adam: m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), t in
float64, as torch.optim.Adam.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from precondalg._checks import check_number

__all__ = ["BASE_RULES", "HYPERPARAMETERS", "BaseRule", "base_rule", "check_hyperparameter"]

State = dict[str, torch.Tensor]
Group = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BaseRule:
    """A base rule: ``init(p) -> state`` and ``update(d, state, group) -> (state, s)``.

    Attributes:
        name: the rule's name ("sgd", "momentum", ...).
        init: makes the state of one parameter (tensors only).
        update: the new state and the step s from the direction d.
        hyperparameters: the param-group keys the rule reads (besides lr and weight_decay), with their
            defaults.
    """

    name: str
    init: Callable[[torch.Tensor], State]
    update: Callable[[torch.Tensor, State, Group], tuple[State, torch.Tensor]]
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)


def _sgd_init(p: torch.Tensor) -> State:
    return {}  # a named function, not a lambda: the optimizer holds its rule and must pickle


def _sgd(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    return state, d


def _momentum_init(p: torch.Tensor) -> State:
    return {
        "momentum_buffer": torch.zeros_like(p),
        "started": torch.zeros((), dtype=torch.bool, device=p.device),
    }


def _momentum(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    mu, tau = group["momentum"], group["dampening"]
    buf = torch.where(state["started"], state["momentum_buffer"].mul(mu).add(d, alpha=1 - tau), d)
    step = d.add(buf, alpha=mu) if group["nesterov"] else buf
    return {"momentum_buffer": buf, "started": torch.ones_like(state["started"])}, step


def _ema_init(p: torch.Tensor) -> State:
    return {"exp_avg": torch.zeros_like(p)}


def _ema(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    beta = group["momentum"]
    m = state["exp_avg"].mul(beta).add(d, alpha=1 - beta)
    return {"exp_avg": m}, m


def _adam_init(p: torch.Tensor) -> State:
    return {
        "step": torch.zeros((), dtype=torch.float64, device=p.device),
        "exp_avg": torch.zeros_like(p),
        "exp_avg_sq": torch.zeros_like(p),
    }


def _adam(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    beta1, beta2 = group["betas"]
    t = state["step"] + 1
    m = state["exp_avg"].lerp(d, 1 - beta1)
    v = state["exp_avg_sq"].mul(beta2).addcmul(d, d, value=1 - beta2)
    bias1 = (1 - beta1**t).to(d.dtype)
    bias2_sqrt = (1 - beta2**t).sqrt().to(d.dtype)
    denom = (v.sqrt() / bias2_sqrt).add(group["eps"])
    return {"step": t, "exp_avg": m, "exp_avg_sq": v}, (m / bias1) / denom


def _rmsprop_init(p: torch.Tensor) -> State:
    return {"square_avg": torch.zeros_like(p)}


def _rmsprop(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    alpha = group["alpha"]
    v = state["square_avg"].mul(alpha).addcmul(d, d, value=1 - alpha)
    return {"square_avg": v}, d / v.sqrt().add(group["eps"])


BASE_RULES: dict[str, BaseRule] = {
    "sgd": BaseRule("sgd", _sgd_init, _sgd),
    "momentum": BaseRule(
        "momentum", _momentum_init, _momentum, {"momentum": 0.9, "dampening": 0.0, "nesterov": False}
    ),
    "ema": BaseRule("ema", _ema_init, _ema, {"momentum": 0.9}),
    "adam": BaseRule("adam", _adam_init, _adam, {"betas": (0.9, 0.999), "eps": 1e-8}),
    "rmsprop": BaseRule("rmsprop", _rmsprop_init, _rmsprop, {"alpha": 0.99, "eps": 1e-8}),
}
"""The base rules by name: what ``Preconditioned(base=...)`` accepts."""

HYPERPARAMETERS: frozenset[str] = frozenset(k for rule in BASE_RULES.values() for k in rule.hyperparameters)
"""Every param-group key some base rule reads (besides lr and weight_decay)."""


def base_rule(name: str) -> BaseRule:
    """The base rule called `name`.

    Raises:
        ValueError: unknown name.
    """
    if name not in BASE_RULES:
        raise ValueError(f"base: expected one of {sorted(BASE_RULES)}; got {name!r}")
    return BASE_RULES[name]


def check_hyperparameter(owner: str, name: str, value: Any) -> None:
    """Check one param-group hyperparameter (lr, weight_decay or a base rule's key) for its range.

    Raises:
        TypeError: not a number (or not a bool, for nesterov; not a pair, for betas).
        ValueError: out of range.
    """
    if name == "betas":
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"{owner}: 'betas' must be a pair (β₁, β₂); got {value!r}")
        for i, beta in enumerate(value):
            check_number(owner, f"betas[{i}]", beta, 0.0, 1.0, hi_open=True)
    elif name == "nesterov":
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: 'nesterov' must be a bool; got {value!r} ({type(value).__name__})")
    elif name == "momentum":
        check_number(owner, name, value, 0.0, 1.0, hi_open=True)
    elif name in ("dampening", "alpha"):
        check_number(owner, name, value, 0.0, 1.0)
    else:  # lr, weight_decay, eps
        check_number(owner, name, value, 0.0)
