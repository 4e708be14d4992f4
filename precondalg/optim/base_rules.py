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
| `adagrad` | eps 1e-10 | sum v | v ← v + d²; s = d/(√v + ε) |

(momentum: b₁ = d on the first step, as torch.optim.SGD; adam: m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), t in
float64, as torch.optim.Adam.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from precondalg._checks import check_number

__all__ = [
    "BASE_RULES", "GRAFTS", "HYPERPARAMETERS", "BaseRule", "Graft", "base_rule", "check_hyperparameter",
]

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


def _adagrad_init(p: torch.Tensor) -> State:
    return {"sum": torch.zeros_like(p)}


def _adagrad(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    v = state["sum"].addcmul(d, d)
    return {"sum": v}, d / v.sqrt().add(group["eps"])


BASE_RULES: dict[str, BaseRule] = {
    "sgd": BaseRule("sgd", _sgd_init, _sgd),
    "momentum": BaseRule(
        "momentum", _momentum_init, _momentum, {"momentum": 0.9, "dampening": 0.0, "nesterov": False}
    ),
    "ema": BaseRule("ema", _ema_init, _ema, {"momentum": 0.9}),
    "adam": BaseRule("adam", _adam_init, _adam, {"betas": (0.9, 0.999), "eps": 1e-8}),
    "rmsprop": BaseRule("rmsprop", _rmsprop_init, _rmsprop, {"alpha": 0.99, "eps": 1e-8}),
    "adagrad": BaseRule("adagrad", _adagrad_init, _adagrad, {"eps": 1e-10}),
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


GRAFTS = ("sgd", "adagrad", "rmsprop", "adam")
"""The methods a `Graft` takes its step norm from."""
_GRAFT_BETA2 = {"rmsprop": 0.99, "adam": 0.999}


@dataclasses.dataclass(frozen=True)
class Graft:
    """Layer-wise grafting (Agarwal et al. 2020), as Distributed Shampoo defines it (its
    ``grafting_config``): each preconditioned block's direction d = P·u is rescaled to the norm of a
    diagonal method's step on the same u,

        d ← (‖s(u)‖ / (‖d‖ + 1e-16))·d,

    the norms taken over all the block's parameters, so P sets the direction and the grafted method
    the size.  s(u): "sgd" u; "adagrad" u/(√v + ε), v ← v + u²; "rmsprop" u/(√v + ε),
    v ← β₂v + (1 − β₂)u²; "adam" u/(√v̂ + ε), v̂ = v/(1 − β₂ᵗ) (Adam without first moment: Distributed
    Shampoo filters the gradient before both, here the base rule's momentum acts after).  Its state is
    kept per parameter under the keys "graft_…" (checkpointed, kept on a skipped step).

    Attributes:
        rule: "sgd", "adagrad", "rmsprop" or "adam".
        beta2: β₂ for "rmsprop" (default 0.99) and "adam" (0.999), Distributed Shampoo's defaults;
            must stay None for "sgd" and "adagrad".
        epsilon: ε (Distributed Shampoo's default 1e-10); unused by "sgd".

    Raises:
        ValueError: an unknown rule, β₂ for a rule without one or out of [0, 1), negative ε.
    """

    rule: str = "adam"
    beta2: float | None = None
    epsilon: float = 1e-10

    def __post_init__(self) -> None:
        if self.rule not in GRAFTS:
            raise ValueError(f"Graft: 'rule' must be one of {list(GRAFTS)}; got {self.rule!r}")
        if self.beta2 is not None:
            if self.rule not in _GRAFT_BETA2:
                raise ValueError(f"Graft: 'beta2' is read by rules 'rmsprop' and 'adam', not {self.rule!r}")
            check_number("Graft", "beta2", self.beta2, 0.0, 1.0, hi_open=True)
        check_number("Graft", "epsilon", self.epsilon, 0.0)

    @property
    def base(self) -> BaseRule:
        """The base rule whose step is s(u)."""
        return BASE_RULES[self.rule]

    @property
    def group(self) -> Group:
        """The hyperparameters `base` reads."""
        beta2 = self.beta2 if self.beta2 is not None else _GRAFT_BETA2.get(self.rule)
        return {
            "sgd": {},
            "adagrad": {"eps": self.epsilon},
            "rmsprop": {"alpha": beta2, "eps": self.epsilon},
            "adam": {"betas": (0.0, beta2), "eps": self.epsilon},
        }[self.rule]
