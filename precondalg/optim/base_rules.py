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

The optimizer applies a rule to all the parameters of a param group at once through
`BaseRule.updates`: the built-in rules have an ``update_many`` made of `torch._foreach_*` operations
(the same formulas, a few dispatches for the whole group, as torch.optim's foreach implementations); a
rule of one's own without it is applied parameter by parameter.
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
Updated = tuple[list[State], list[torch.Tensor]]
Many = Callable[[list[torch.Tensor], list[State], Group], Updated]


@dataclasses.dataclass(frozen=True)
class BaseRule:
    """A base rule: ``init(p) -> state`` and ``update(d, state, group) -> (state, s)``.

    Attributes:
        name: the rule's name ("sgd", "momentum", ...).
        init: makes the state of one parameter (tensors only).
        update: the new state and the step s from the direction d.
        hyperparameters: the param-group keys the rule reads (besides lr and weight_decay), with their
            defaults.
        update_many: optional: `update` for many parameters at once, ``(ds, states, group) -> (states,
            steps)``, with the same numbers (the built-in rules: `torch._foreach_*` operations, a few
            dispatches for all the parameters instead of a few per parameter).
    """

    name: str
    init: Callable[[torch.Tensor], State]
    update: Callable[[torch.Tensor, State, Group], tuple[State, torch.Tensor]]
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    update_many: Many | None = None

    def updates(self, ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
        """`update` for every (d, state) pair: through `update_many` where the rule has it (and the
        directions share a device)."""
        if self.update_many is not None and len(ds) > 1 and len({d.device for d in ds}) == 1:
            return self.update_many(ds, states, group)
        pairs = [self.update(d, state, group) for d, state in zip(ds, states)]
        return [new for new, _ in pairs], [step for _, step in pairs]


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


def _key(states: list[State], key: str) -> list[torch.Tensor]:
    return [state[key] for state in states]


def _scalars(values: list[torch.Tensor], dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """0-d tensors in the given dtypes, each cast once (the common case, one dtype: one cast)."""
    if len(set(dtypes)) == 1:
        return list(torch.stack(values).to(dtypes[0]).unbind())
    return [v.to(dtype) for v, dtype in zip(values, dtypes)]


def _momentum_many(ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
    mu, tau = group["momentum"], group["dampening"]
    bufs = torch._foreach_mul(_key(states, "momentum_buffer"), mu)
    torch._foreach_add_(bufs, ds, alpha=1 - tau)
    bufs = [torch.where(state["started"], b, d) for b, d, state in zip(bufs, ds, states)]
    steps = torch._foreach_add(ds, bufs, alpha=mu) if group["nesterov"] else bufs
    started = [torch.ones_like(state["started"]) for state in states]
    return [{"momentum_buffer": b, "started": f} for b, f in zip(bufs, started)], steps


def _ema_many(ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
    beta = group["momentum"]
    ms = torch._foreach_mul(_key(states, "exp_avg"), beta)
    torch._foreach_add_(ms, ds, alpha=1 - beta)
    return [{"exp_avg": m} for m in ms], ms


def _adam_many(ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
    beta1, beta2 = group["betas"]
    ts = torch.stack(_key(states, "step")) + 1
    dtypes = [d.dtype for d in ds]
    bias1 = _scalars(list((1 - beta1**ts).unbind()), dtypes)
    bias2_sqrt = _scalars(list((1 - beta2**ts).sqrt().unbind()), dtypes)
    ms = torch._foreach_lerp(_key(states, "exp_avg"), ds, 1 - beta1)
    vs = torch._foreach_mul(_key(states, "exp_avg_sq"), beta2)
    torch._foreach_addcmul_(vs, ds, ds, value=1 - beta2)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_div_(denoms, bias2_sqrt)
    torch._foreach_add_(denoms, group["eps"])
    steps = torch._foreach_div(ms, bias1)
    torch._foreach_div_(steps, denoms)
    new = [{"step": t, "exp_avg": m, "exp_avg_sq": v} for t, m, v in zip(ts.unbind(), ms, vs)]
    return new, steps


def _rmsprop_init(p: torch.Tensor) -> State:
    return {"square_avg": torch.zeros_like(p)}


def _rmsprop(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    alpha = group["alpha"]
    v = state["square_avg"].mul(alpha).addcmul(d, d, value=1 - alpha)
    return {"square_avg": v}, d / v.sqrt().add(group["eps"])


def _rmsprop_many(ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
    alpha = group["alpha"]
    vs = torch._foreach_mul(_key(states, "square_avg"), alpha)
    torch._foreach_addcmul_(vs, ds, ds, value=1 - alpha)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_add_(denoms, group["eps"])
    return [{"square_avg": v} for v in vs], torch._foreach_div(ds, denoms)


def _adagrad_init(p: torch.Tensor) -> State:
    return {"sum": torch.zeros_like(p)}


def _adagrad(d: torch.Tensor, state: State, group: Group) -> tuple[State, torch.Tensor]:
    v = state["sum"].addcmul(d, d)
    return {"sum": v}, d / v.sqrt().add(group["eps"])


def _adagrad_many(ds: list[torch.Tensor], states: list[State], group: Group) -> Updated:
    vs = torch._foreach_addcmul(_key(states, "sum"), ds, ds)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_add_(denoms, group["eps"])
    return [{"sum": v} for v in vs], torch._foreach_div(ds, denoms)


BASE_RULES: dict[str, BaseRule] = {
    "sgd": BaseRule("sgd", _sgd_init, _sgd),
    "momentum": BaseRule(
        "momentum",
        _momentum_init,
        _momentum,
        {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
        _momentum_many,
    ),
    "ema": BaseRule("ema", _ema_init, _ema, {"momentum": 0.9}, _ema_many),
    "adam": BaseRule("adam", _adam_init, _adam, {"betas": (0.9, 0.999), "eps": 1e-8}, _adam_many),
    "rmsprop": BaseRule("rmsprop", _rmsprop_init, _rmsprop, {"alpha": 0.99, "eps": 1e-8}, _rmsprop_many),
    "adagrad": BaseRule("adagrad", _adagrad_init, _adagrad, {"eps": 1e-10}, _adagrad_many),
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
