"""Base rules: what the parameter update does with the (preconditioned) direction (layer 5).

A rule is a pair of pure functions: ``init(p)`` makes its state (tensors only, all created at once, so
that a skipped step can keep the old state with `torch.where` and no host synchronisation), and
``update(d, state, group)`` returns the new state and the step s, the update being θ ← θ − lr·s.  The
formulas are torch.optim's, operation for operation, so that at P = I a preconditioned optimizer
reproduces torch.optim.SGD / SGD(momentum) / Adam / RMSprop to floating-point round-off (QUALITY.md
§2).  Hyperparameters are read from the param group: they can differ per group and be scheduled.
For `momentum`, s = b, or d + μb with Nesterov.

| rule | group keys | state | s |
| --- | --- | --- | --- |
| `sgd` | – | – | d |
| `momentum` (torch SGD) | momentum, dampening, nesterov | momentum_buffer b, flag | b₁ = d, b ← μb + (1−τ)d |
| `ema` (LODO, METHODS.md §3.2) | momentum | exp_avg m (m₀ = 0) | m ← βm + (1−β)d; s = m |
| `adam` (torch Adam) | betas, eps | step t (float64), exp_avg m, exp_avg_sq v | (m/(1−β₁ᵗ))/(√v/√(1−β₂ᵗ)+ε) |
| `rmsprop` (torch.optim.RMSprop) | alpha, eps | square_avg v | v ← αv + (1−α)d²; s = d/(√v + ε) |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BASE_RULES", "BaseRule", "base_rule"]

State = dict[str, torch.Tensor]
Group = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BaseRule:
    """A base rule: ``init(p) -> state`` and ``update(d, state, group) -> (state, s)``."""

    name: str
    init: Callable[[torch.Tensor], State]
    update: Callable[[torch.Tensor, State, Group], tuple[State, torch.Tensor]]


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
    "momentum": BaseRule("momentum", _momentum_init, _momentum),
    "ema": BaseRule("ema", _ema_init, _ema),
    "adam": BaseRule("adam", _adam_init, _adam),
    "rmsprop": BaseRule("rmsprop", _rmsprop_init, _rmsprop),
}


def base_rule(name: str) -> BaseRule:
    """The base rule called `name`.

    Raises:
        ValueError: unknown name.
    """
    if name not in BASE_RULES:
        raise ValueError(f"base: expected one of {sorted(BASE_RULES)}; got {name!r}")
    return BASE_RULES[name]
