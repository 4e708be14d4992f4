"""`Preconditioned`: the generic learned-preconditioner optimizer (layer 5).

One step, for each block of parameters (ARCHITECTURE.md, "one optimizer step, as data flows"):

    g  ← placement.view(grads + weight_decay·θ)            the block's gradient, (n, k)
    ∇φ ← objective.meta_grad(φ, form, g, cache)              e.g. the hypergradient VJP
    φ  ← fitter(φ, ∇φ)                                        e.g. Adam on φ's leaves
    position "gradient":  s ← base(unview(P_φ g));  u ← g     P before the base rule (FOP, APO)
    position "direction": s ← P_φ view(base(g));    u ← view(base(g))   P after it (HD, LODO)
    θ  ← θ − lr·s;  cache ← (u, lr)

Non-finite numbers: with ``nonfinite="skip"`` (the default) a step whose gradients hold a NaN or an Inf,
or whose new parameters or preconditioner would, leaves every parameter, base-rule state and
preconditioner leaf exactly as it was and adds one to the block's ``skipped`` counter; a meta-step whose
meta-gradient, new preconditioner or fitter state would be non-finite is undone the same way (the
parameter step then uses the kept preconditioner) and counted in ``meta_skipped``.  This is decided on
the device (`torch.where`), without a host synchronisation.  A sync-free skip cannot un-create state,
so state that a skipped step creates is set to its fresh value instead: a wrapped torch
meta-optimizer's new state goes back to zeros (Adam's fresh state: exact; an optimizer whose fresh
state is not zeros keeps a trace), and a skipped *first* step leaves the hypergradient cache at u = 0
instead of empty (the next meta-gradient is then zero; with Adam its step count then runs one ahead).
tests/test_optim_bad_numbers.py pins both.  Otherwise a skipped step changes nothing at all.
``nonfinite="raise"`` raises `FloatingPointError` instead (host synchronisations: one per step for the
gradients, one per meta-step).

Dtypes: a parameter keeps its dtype; the preconditioner φ (and the placed gradient it multiplies) is
kept in the parameter's dtype for float32/float64 parameters and in float32 for float16/bfloat16 ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.utils._pytree as pytree

from precondalg.families import Family
from precondalg.fitters import Fit, Fitter, TorchOptimizer
from precondalg.objectives import BlockContext, Evaluation, Hypergradient, Objective
from precondalg.optim.base_rules import base_rule
from precondalg.placement import Placement, default_placement
from precondalg.structures import NotInvertibleError

__all__ = ["Preconditioned"]

PlacementChoice = Placement | Callable[[tuple[int, ...]], Placement | None] | None
StructureChoice = Family | Callable[[tuple[int, ...]], Family]
_POSITIONS = ("gradient", "direction")
_NONFINITE = ("skip", "raise")


@dataclasses.dataclass
class _Block:
    """Parameters preconditioned together (not part of the state: rebuilt from the constructor)."""

    params: list[torch.Tensor]
    placement: Placement | None
    family: Family | None = None
    spec: pytree.TreeSpec | None = None
    fitter: Fit | None = None


@dataclasses.dataclass
class _Plan:
    """One block's step in progress (see `Preconditioned._plan`)."""

    group: dict[str, Any]
    block: _Block
    active: list[bool]
    grads: list[torch.Tensor]
    shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    X: torch.Tensor | None = None
    u: torch.Tensor | None = None
    states: list[dict[str, Any]] | None = None
    context: BlockContext | None = None


def _precond_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _initial_phi(block: _Block, generator: torch.Generator) -> Any:
    """The block family's φ₀ for the block's dimensions, in the preconditioner's dtype (see the module
    docstring) on the block's device."""
    anchor = block.params[0]
    like = torch.empty((), dtype=_precond_dtype(anchor), device=anchor.device)
    return block.family.init(block.placement.dims([tuple(p.shape) for p in block.params]), like, generator)


def _all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One device boolean: every entry of every tensor is finite (no host synchronisation)."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def _check_range(name: str, value: float, lo: float, hi: float | None = None, hi_open: bool = True) -> None:
    # Written so that NaN fails every comparison and is refused.
    ok = value >= lo and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        upper = "" if hi is None else (f" and < {hi}" if hi_open else f" and <= {hi}")
        raise ValueError(f"Preconditioned: '{name}' must be >= {lo}{upper}; got {value!r}")


class Preconditioned(torch.optim.Optimizer):
    """A learned structured preconditioner, as a `torch.optim.Optimizer`: the five choices of
    ARCHITECTURE.md — structure × placement × objective × fitter × base rule.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        lr: base learning rate α (schedulers change it).
        structure: the learned structure family (`precondalg.families`: φ's init and P_φ), or a callable
            ``shape -> Family`` choosing one per parameter shape (the block's first parameter).
        placement: a `Placement` for every parameter, a callable ``shape -> Placement | None`` (None:
            the parameter is not preconditioned and gets the base rule alone), or None for no
            preconditioning at all.  Default: `precondalg.placement.default_placement`.
        objective: the meta-objective (default: the online `Hypergradient`).
        fitter: how φ moves (`precondalg.fitters`; default: Adam with lr 1e-4 on φ's leaves, FOP's
            choice; `LieGroup` for PSGD).
        base: "sgd", "momentum", "ema", "adam" or "rmsprop" (`precondalg.optim.base_rules`).
        position: "gradient" (P before the base rule) or "direction" (P after it).
        momentum: μ for "momentum", β for "ema" (in [0, 1)).
        dampening: torch.optim.SGD's dampening for "momentum".
        nesterov: Nesterov momentum for "momentum".
        betas: Adam's (β₁, β₂).
        eps: Adam's / RMSprop's ε.
        alpha: RMSprop's smoothing constant.
        weight_decay: L2 penalty added to the gradient (torch.optim convention).
        nonfinite: "skip" or "raise" (see the module docstring).
        seed: seed of the optimizer's generator (random initialisations of φ, the PSGD criteria's v);
            its state is part of the checkpoint.

    Raises:
        ValueError: a hyperparameter out of range, an unknown base rule, position or policy.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        structure: StructureChoice,
        placement: PlacementChoice = default_placement,
        objective: Objective | None = None,
        fitter: Fitter | None = None,
        base: str = "sgd",
        position: str = "gradient",
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        alpha: float = 0.99,
        weight_decay: float = 0.0,
        nonfinite: str = "skip",
        seed: int = 0,
    ) -> None:
        if not (isinstance(structure, Family) or callable(structure)):
            raise TypeError(
                "Preconditioned: 'structure' must be a precondalg.families.Family or a callable "
                f"shape -> Family; got {type(structure).__name__}"
            )
        if position not in _POSITIONS:
            raise ValueError(f"Preconditioned: 'position' must be one of {_POSITIONS}; got {position!r}")
        if nonfinite not in _NONFINITE:
            raise ValueError(f"Preconditioned: 'nonfinite' must be one of {_NONFINITE}; got {nonfinite!r}")
        self._base = base_rule(base)
        self._structure = structure
        self._placement = placement
        self._objective = objective if objective is not None else Hypergradient()
        self._fitter = fitter if fitter is not None else TorchOptimizer(torch.optim.Adam, lr=1e-4)
        self._position = position
        self._nonfinite = nonfinite
        self._generator = torch.Generator().manual_seed(seed)
        self._blocks: list[list[_Block]] = []
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            betas=betas,
            eps=eps,
            alpha=alpha,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    # ----- param groups and blocks -----
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch.optim convention); validates its hyperparameters and builds its
        blocks and their initial preconditioners."""
        self._validate({**self.defaults, **param_group})
        super().add_param_group(param_group)
        try:
            self._blocks.append(self._make_blocks(self.param_groups[-1]))
        except Exception:
            self.param_groups.pop()  # a group without its blocks would never be stepped
            raise

    @staticmethod
    def _validate(group: dict[str, Any]) -> None:
        _check_range("lr", group["lr"], 0.0)
        _check_range("momentum", group["momentum"], 0.0, 1.0)
        _check_range("dampening", group["dampening"], 0.0, 1.0, hi_open=False)
        _check_range("betas[0]", group["betas"][0], 0.0, 1.0)
        _check_range("betas[1]", group["betas"][1], 0.0, 1.0)
        _check_range("eps", group["eps"], 0.0)
        _check_range("alpha", group["alpha"], 0.0, 1.0, hi_open=False)
        _check_range("weight_decay", group["weight_decay"], 0.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Preconditioned: 'nesterov' needs momentum > 0 and dampening = 0; got "
                f"momentum {group['momentum']!r}, dampening {group['dampening']!r}"
            )

    def _placement_of(self, p: torch.Tensor) -> Placement | None:
        choice = self._placement
        if choice is None or isinstance(choice, Placement):
            return choice
        return choice(tuple(p.shape))

    def _make_blocks(self, group: dict[str, Any]) -> list[_Block]:
        blocks: list[_Block] = []
        joint: dict[Placement, list[torch.Tensor]] = {}
        for p in group["params"]:
            placement = self._placement_of(p)
            if placement is not None and placement.concatenates:
                joint.setdefault(placement, []).append(p)
            else:
                blocks.append(_Block([p], placement))
        blocks.extend(_Block(ps, placement) for placement, ps in joint.items())
        for block in blocks:
            for p in block.params:
                self.state[p].update(self._base.init(p))
            if block.placement is not None:
                self._init_block(block)
        return blocks

    def _family_of(self, p: torch.Tensor) -> Family:
        family = self._structure if isinstance(self._structure, Family) else self._structure(tuple(p.shape))
        if not isinstance(family, Family):
            raise TypeError(
                f"Preconditioned: 'structure' returned {type(family).__name__} for a parameter of "
                f"shape {tuple(p.shape)}; expected a precondalg.families.Family"
            )
        return family

    def _init_block(self, block: _Block) -> None:
        anchor = block.params[0]
        block.family = self._family_of(anchor)
        phi = _initial_phi(block, self._generator)
        self._check_operations(block, phi)
        leaves, block.spec = pytree.tree_flatten(phi)
        leaves = [leaf.detach().clone() for leaf in leaves]
        block.fitter = self._fitter.build(leaves, block.spec)
        self.state[anchor]["preconditioner"] = {
            "phi": leaves,
            "cache": {},
            "skipped": torch.zeros((), dtype=torch.int64, device=anchor.device),
            "meta_skipped": torch.zeros((), dtype=torch.int64, device=anchor.device),
        }

    def _check_operations(self, block: _Block, phi: Any) -> None:
        """Refuse, at construction, a structure lacking an operation the objective needs."""
        P = block.family.form(phi)
        for operation in self._objective.requires:
            probe = torch.zeros(P.shape[1], 1, dtype=P.dtype, device=P.device)
            try:
                getattr(P, operation)(probe)
            except NotInvertibleError as err:
                shapes = [tuple(p.shape) for p in block.params]
                raise ValueError(
                    f"Preconditioned: objective {type(self._objective).__name__} needs the preconditioner's "
                    f"'{operation}', which {type(P).__name__} (for parameters of shapes {shapes}) does not "
                    f"have: {err}"
                ) from err

    def preconditioners(self) -> list[tuple[list[torch.Tensor], Any]]:
        """Every block's parameters and its current preconditioner P_φ (a structure), for inspection."""
        out = []
        for blocks in self._blocks:
            for block in blocks:
                if block.placement is not None:
                    out.append((block.params, block.family.form(self._phi(block))))
        return out

    def _phi(self, block: _Block) -> Any:
        return pytree.tree_unflatten(self.state[block.params[0]]["preconditioner"]["phi"], block.spec)

    # ----- copies and checkpoints -----
    def __getstate__(self) -> dict[str, Any]:
        """torch.optim keeps only defaults, state and param_groups; the five choices and the blocks
        (with their meta-optimizers) must travel too, for deepcopy and pickling.  Tree specs do not
        (torch deprecates pickling them): `__setstate__` rebuilds them."""
        mine = {k: v for k, v in self.__dict__.items() if k.startswith("_")}
        mine["_blocks"] = [[dataclasses.replace(b, spec=None) for b in blocks] for blocks in self._blocks]
        return {**super().__getstate__(), **mine}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for block in self._all_blocks():
            block.spec = self._spec(block)

    def _spec(self, block: _Block) -> pytree.TreeSpec:
        """The tree spec of the block's φ, from a throw-away initialisation."""
        return pytree.tree_structure(_initial_phi(block, torch.Generator()))

    # ----- checkpoints -----
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict; each block's state also holds its fitter's state, and the
        top-level key "generator" the state of the optimizer's random generator."""
        packed = super().state_dict()
        index = {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        for block in self._all_blocks():
            i = index[block.params[0]]
            entry = packed["state"][i]
            packed["state"][i] = {
                **entry,
                "preconditioner": {**entry["preconditioner"], "fitter": block.fitter.state_dict()},
            }
        return {**packed, "generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; restores φ's leaves (in the documented dtype), the cache, the skip counter
        and each block's meta-optimizer, so that a resumed run equals the uninterrupted one bit for bit."""
        state_dict = dict(state_dict)
        self._generator.set_state(state_dict.pop("generator"))
        # torch.optim casts every state tensor to its parameter's dtype, the preconditioner's too: lossy
        # for bfloat16/float16 parameters (φ, the cache and the fitter's state are float32) and it turns
        # the int64 skip counter into a float.  Keep the preconditioner's state as it was saved.
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        saved_pre = {i: s["preconditioner"] for i, s in state_dict["state"].items() if "preconditioner" in s}
        super().load_state_dict(state_dict)
        pre_of = {
            id(p): saved_pre[i]
            for p, i in zip((p for group in self.param_groups for p in group["params"]), saved_ids)
            if i in saved_pre
        }
        # torch.optim casts every state tensor to its parameter's dtype; the base rule's own init
        # says which dtypes its state has (e.g. a bool flag, a float64 step count).
        for group in self.param_groups:
            for p in group["params"]:
                for key, template in self._base.init(p).items():
                    self.state[p][key] = self.state[p][key].to(template.dtype)
        for block in self._all_blocks():
            anchor = block.params[0]
            if id(anchor) not in pre_of:
                raise ValueError(
                    "Preconditioned.load_state_dict: the state dict holds no preconditioner for the block of "
                    f"parameters of shapes {[tuple(p.shape) for p in block.params]}; it must come from an "
                    "optimizer with the same structure and placement"
                )
            pre = pytree.tree_map(
                lambda v, device=anchor.device: v.to(device, copy=True) if isinstance(v, torch.Tensor) else v,
                pre_of[id(anchor)],
            )
            self.state[anchor]["preconditioner"] = pre
            dtype = _precond_dtype(anchor)
            pre["phi"] = [leaf.to(dtype) for leaf in pre["phi"]]
            if "u" in pre["cache"]:
                pre["cache"]["u"] = pre["cache"]["u"].to(dtype)
            block.fitter = self._fitter.build(pre["phi"], block.spec)
            block.fitter.load_state_dict(pre.pop("fitter"))

    def _all_blocks(self) -> list[_Block]:
        return [b for blocks in self._blocks for b in blocks if b.placement is not None]

    # ----- the step -----
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **inputs: Any) -> Any:
        """One optimizer step (see the module docstring).

        Args:
            closure: re-evaluates the model and returns the loss: optional for `Hypergradient`
                (required with ``mode="unroll"``), `Fisher` and `Proximal` (it calls backward, as in
                torch.optim); required by `Newton`'s "autograd" and "finite_difference" modes, whose
                closure returns the loss without calling backward.
            **inputs: what the objective takes per step (``batch`` and ``fsd_batch`` for `Proximal`,
                ``batch`` for ``Newton(hvp="torch.func")``).

        Returns:
            The closure's loss, or None.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        evaluation = self._objective.evaluate(params, closure, self._generator, **inputs)
        ok = self._grads_finite()
        if self._nonfinite == "raise" and not bool(ok):
            raise FloatingPointError("Preconditioned.step: a gradient holds NaN or Inf; nothing was updated")
        plans = [
            self._plan(group, block, evaluation)
            for group, blocks in zip(self.param_groups, self._blocks, strict=True)
            for block in blocks
            if any(p.grad is not None for p in block.params)
        ]
        learned = [plan for plan in plans if plan.context is not None]
        metas = self._objective.meta_grads([plan.context for plan in learned], evaluation) if learned else []
        for plan, meta in zip(learned, metas):
            if meta is not None:
                self._fit(
                    plan.block,
                    self.state[plan.block.params[0]]["preconditioner"]["phi"],
                    pytree.tree_leaves(meta),
                    ok,
                )
        for plan in plans:
            self._finish(plan, ok)
        return evaluation.loss

    def _grads_finite(self) -> torch.Tensor:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        return _all_finite(grads) if grads else torch.tensor(True)

    def _decayed_grads(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        wd = group["weight_decay"]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        return [g.add(p, alpha=wd) if wd else g for g, p in zip(grads, params)]

    def _base_steps(
        self, group: dict[str, Any], params: list[torch.Tensor], directions: list[torch.Tensor]
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        states, steps = [], []
        for p, d in zip(params, directions):
            base_state = {k: v for k, v in self.state[p].items() if k != "preconditioner"}
            new_state, s = self._base.update(d, base_state, group)
            states.append(new_state)
            steps.append(s)
        return states, steps

    def _plan(self, group: dict[str, Any], block: _Block, evaluation: Evaluation) -> _Plan:
        """Everything of a block's step that does not depend on φ's update: gradients, their placed
        view, the objective's context, and for position "direction" the base rule's step."""
        params = block.params
        plan = _Plan(group, block, [p.grad is not None for p in params], self._decayed_grads(group, params))
        if block.placement is None:
            return plan
        anchor = params[0]
        pre = self.state[anchor]["preconditioner"]
        dtype = _precond_dtype(anchor)
        plan.shapes = [tuple(p.shape) for p in params]
        plan.X = block.placement.view([g.to(dtype) for g in plan.grads])
        if self._position == "direction":
            plan.states, base_steps = self._base_steps(group, params, plan.grads)
            plan.u = block.placement.view([s.to(dtype) for s in base_steps])
        else:
            plan.u = plan.X
        extras = {
            name: block.placement.view([of.to(dtype) for p, of in zip(params, evaluation.of(name, params))])
            for name in evaluation.per_param
        }
        plan.context = BlockContext(
            self._phi(block),
            block.family.hyper_form or block.family.form,
            plan.X,
            pre["cache"],
            extras,
            params=params,
            lookahead=plan.u,
            unview=functools.partial(block.placement.unview, shapes=plan.shapes),
            view=lambda tensors: block.placement.view([t.to(dtype) for t in tensors]),
            lr=group["lr"],
            form_vjp=block.family.hyper_vjp,
        )
        return plan

    def _finish(self, plan: _Plan, ok: torch.Tensor) -> None:
        """Apply P_φ (φ already fitted), the base rule, and commit where `ok`."""
        group, block, params = plan.group, plan.block, plan.block.params
        if block.placement is None:
            states, steps = self._base_steps(group, params, plan.grads)
            news = [p - group["lr"] * s for p, s in zip(params, steps)]
            self._commit(params, plan.active, states, news, ok & _all_finite(news))
            return
        pre = self.state[params[0]]["preconditioner"]
        P = block.family.form(self._phi(block))
        if self._position == "gradient":
            directions = [
                d.to(p.dtype) for d, p in zip(block.placement.unview(P @ plan.X, plan.shapes), params)
            ]
            states, steps = self._base_steps(group, params, directions)
        else:
            states = plan.states
            steps = [s.to(p.dtype) for s, p in zip(block.placement.unview(P @ plan.u, plan.shapes), params)]
        news = [p - group["lr"] * s for p, s in zip(params, steps)]
        block_ok = ok & _all_finite(news)
        self._commit(params, plan.active, states, news, block_ok)
        previous = pre["cache"]["u"] if "u" in pre["cache"] else torch.zeros_like(plan.u)
        pre["cache"] = {"u": torch.where(block_ok, plan.u, previous), "lr": group["lr"]}
        pre["skipped"] += (~block_ok).long()

    def _commit(
        self,
        params: list[torch.Tensor],
        active: list[bool],
        states: list[dict[str, Any]],
        news: list[torch.Tensor],
        ok: torch.Tensor,
    ) -> None:
        """The new parameters θ − lr·s and base-rule states, for parameters with a gradient, where `ok`
        (else everything stays)."""
        for p, is_active, new_state, new in zip(params, active, states, news):
            if not is_active:
                continue
            state = self.state[p]
            torch.where(ok, new, p, out=p)
            for key, value in new_state.items():
                state[key] = torch.where(ok, value, state[key])

    def _fit(
        self, block: _Block, leaves: list[torch.Tensor], grads: list[torch.Tensor], ok: torch.Tensor
    ) -> None:
        """The fitter's step on φ's leaves, undone exactly where not `ok` (see the module docstring)."""
        kept = leaves + block.fitter.tensors()
        saved = [t.clone() for t in kept]
        safe = [torch.where(ok, g, torch.zeros_like(g)) for g in grads]
        block.fitter.step(safe)
        after = block.fitter.tensors()
        fine = ok & _all_finite(leaves + after)
        for t, s in zip(kept, saved):
            torch.where(fine, t, s, out=t)
        known = {id(t) for t in kept}
        for t in after:  # state the step created: back to zeros, a torch optimizer's fresh state
            if id(t) not in known:
                torch.where(fine, t, torch.zeros_like(t), out=t)
        self.state[block.params[0]]["preconditioner"]["meta_skipped"] += (ok & ~fine).long()
        if self._nonfinite == "raise" and not bool(ok <= fine):
            raise FloatingPointError(
                "Preconditioned.step: the meta-gradient or the fitted preconditioner holds NaN or Inf for "
                f"parameters of shapes {[tuple(p.shape) for p in block.params]}; the preconditioner was kept"
            )
