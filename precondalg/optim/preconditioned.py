"""`Preconditioned`: the generic learned-preconditioner optimizer (layer 5).

One step, for each block of parameters:

    g  ← placement.view(grads + weight_decay·θ)            the block's gradient, (n, k)
    ∇φ ← objective.meta_grad(φ, form, g, cache)              e.g. the hypergradient VJP
    φ  ← fitter(φ, ∇φ)                                        e.g. Adam on φ's leaves
      (statistics fitting: the objective answers `Statistics` — second moments — and the `ClosedForm`
       fitter averages them and sets φ in closed form, e.g. Shampoo's and K-FAC's roots)
    position "gradient":  s ← base(unview(P_φ g));  u ← g     P before the base rule (FOP, APO)
    position "direction": s ← P_φ view(base(g));    u ← view(base(g))   P after it (HD, LODO)
    θ  ← θ − lr·s;  cache ← (u, lr)

Non-finite numbers: with ``nonfinite="skip"`` (the default) a step whose gradients hold a NaN or an Inf,
or whose new parameters or preconditioner would, leaves every parameter, base-rule state and
preconditioner leaf exactly as it was and adds one to the block's ``skipped`` counter; a meta-step whose
meta-gradient, new preconditioner or fitter state would be non-finite is undone the same way (the
parameter step then uses the kept preconditioner) and counted in ``meta_skipped``.  This is decided on
the device (`torch.where`), without a host synchronisation.  The counters are read back after the step
(at once on the CPU; on a GPU through a non-blocking copy read one step later) and a `SkippedStepWarning`
with the counts is issued after the first skip and then at most every `WARN_EVERY` steps while skips
continue, so that a run whose steps keep being skipped never goes unnoticed.  A sync-free skip cannot
un-create state, so state that a skipped step creates is set to its fresh value instead: a wrapped torch
meta-optimizer's new state goes back to zeros (Adam's fresh state: exact; an optimizer whose fresh state
is not zeros keeps a trace), and a skipped *first* step leaves the hypergradient cache at u = 0 instead
of empty (the next meta-gradient is then zero; with Adam its step count then runs one ahead).
``nonfinite="raise"`` raises `FloatingPointError` instead, and then nothing at all is updated: a
preconditioner already fitted in that step is put back (host synchronisations: one for the gradients,
one per meta-step and one per block's new parameters).

Dtypes: a parameter keeps its dtype.  For float32 and float64 parameters everything (φ, the base rule's
state, the step) is in the parameter's dtype.  For float16 and bfloat16 parameters the preconditioner φ,
the placed gradient, the base rule's state (Adam's moments, momentum buffers) and the whole step are
computed in float32, and the new parameter is rounded once to its dtype: a float16 Adam whose ε or
squared gradients underflow cannot turn every step into a division by zero.  ``precond_dtype=torch.bfloat16``
stores φ (and a torch meta-optimizer's moments) in bfloat16 between steps; the step widens them, computes
in the compute dtype and rounds the fitted values back (`precondalg.optim._storage`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.utils._pytree as pytree

from precondalg._checks import check_choice, check_number, unset
from precondalg._checks import given as was_given
from precondalg._tensors import all_finite, finite_each, full, full_many, is_sharded, shard_like
from precondalg._torch_compat import writable
from precondalg.families import Family
from precondalg.fitters import Fit, Fitter, TorchOptimizer, replace
from precondalg.objectives import (
    BlockContext,
    Evaluation,
    Hypergradient,
    Objective,
    RelativeGradient,
    Statistics,
)
from precondalg.optim._checkpoint import VERSION, describe, differences, static_contexts, with_contexts
from precondalg.optim._distributed import average, average_answers, check_replicas, group_of, is_group
from precondalg.optim._storage import PRECOND_DTYPES, ROUNDINGS, Widened, round_to, stored_tensors
from precondalg.optim._watch import SkipWatch, blocks_text, callers_level
from precondalg.optim.base_rules import (
    BASE_RULES,
    HYPERPARAMETERS,
    BaseRule,
    Graft,
    base_rule,
    check_hyperparameter,
)
from precondalg.optim.choices import call_choice, check_choices
from precondalg.placement import Placement, default_placement
from precondalg.structures import (
    Eigenbasis,
    NotInvertibleError,
    Structure,
    Triangular,
    scale,
    scale_group,
    simple_parts,
)

__all__ = ["Preconditioned", "optimizer_generator"]

PlacementChoice = Placement | Callable[[tuple[int, ...]], Placement | None] | None
StructureChoice = Family | Callable[[tuple[int, ...]], Family]
_POSITIONS = ("gradient", "direction")
_CHOICES = (
    "structure", "placement", "objective", "fitter", "base", "position", "nonfinite", "seed",
    "update_probability", "clip", "auto_scale", "graft", "warmup", "compile", "precond_dtype",
    "precond_rounding",
)
"""Keys a param group cannot hold: choices made once for the whole optimizer (and a preset's own
construction arguments, `Preconditioned(preset_arguments=...)`)."""
_NONFINITE = ("skip", "raise")


@dataclasses.dataclass
class _Block:
    """Parameters preconditioned together (not part of the state: rebuilt from the constructor)."""

    params: list[torch.Tensor]
    placement: Placement | None
    family: Family | None = None
    spec: pytree.TreeSpec | None = None
    fitter: Fit | None = None
    formed: tuple[Any, Any] | None = None
    """(φ, P_φ) for the fit's own φ (`Fit.phi`) when P_φ holds only φ's live leaves, else (φ, None)."""

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in self.params]


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
    sources: list[torch.Tensor] | None = None
    """For position "direction": the base rule's steps (per parameter) P is applied to."""
    states: list[dict[str, Any]] | None = None
    context: BlockContext | None = None


def _compute_dtype(p: torch.Tensor) -> torch.dtype:
    """The dtype of φ, the base rule's state and the step for parameter p (see the module docstring)."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _in_compute_dtype(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to(_compute_dtype(p))


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`: t itself when it already is (``Tensor.to`` would return it too, but through a
    dispatched operation: this runs for every tensor of every step)."""
    return t if t.dtype == dtype else t.to(dtype)


def _gathered(
    steps: list[tuple[dict[str, Any], _Block, list[torch.Tensor], Any]], evaluation: Evaluation, fitting: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`full` for the tensors the step's plans view (`Preconditioned._plan`: the gradients, the base
    rule's steps, the objective's per-parameter tensors, θ under weight decay), with the sharded ones of
    every block gathered together beforehand (`full_many`: one ``all_gather`` per mesh and dtype, not
    one per tensor). Nothing is gathered where no preconditioned parameter is sharded."""
    tensors = []
    for group, block, grads, base in steps:
        if block.placement is None or not any(is_sharded(p) for p in block.params):
            continue
        tensors += [*grads, *(base[1] if base is not None else ())]
        if fitting:
            tensors += [t for name in evaluation.per_param for t in evaluation.of(name, block.params)]
            tensors += block.params if group["weight_decay"] else ()
    wholes = {id(t): (t, w) for t, w in zip(tensors, full_many(tensors)) if w is not t}
    if not wholes:
        return full

    def whole(t: torch.Tensor) -> torch.Tensor:
        kept = wholes.get(id(t))  # the key's tensor is kept with its whole: its id is not reused
        return kept[1] if kept is not None and kept[0] is t else full(t)

    return whole


def _contiguous(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors, each in its own contiguous memory: a placement's unview gives transposes (InputSide)
    and column slices (Layer), on which the base rule's `torch._foreach_*` operations and the
    finiteness check run several times slower than on contiguous tensors (on the CPU, a foreach lerp on
    four transposed 1024×1024 tensors took 6.6× the contiguous one's time), so one copy pays."""
    return [t if t.is_contiguous() else t.contiguous() for t in tensors]


def _initial_phi(block: _Block, generator: torch.Generator) -> Any:
    """The block family's φ₀ for the block's dimensions, in the compute dtype on the block's device."""
    anchor = block.params[0]
    like = torch.empty((), dtype=_compute_dtype(anchor), device=anchor.device)
    return block.family.init(block.placement.dims(block.shapes), like, generator)


_STREAM = 0x5EED_0F_0971_3A11
"""Mixed into every optimizer seed (see `optimizer_generator`)."""
_ROUNDING_STREAM = 0x5EED_0F_B0F1_6A7E
"""Mixed into the seed of the stochastic rounding's own generator (``precond_dtype``): a stream apart
from the optimizer's, so that storing φ narrow changes none of its other draws."""


def optimizer_generator(seed: int) -> torch.Generator:
    """The optimizer's own CPU generator for `seed` (its random initialisations, the PSGD criteria's v,
    the update draws).  The seed is mixed with a constant, so that ``seed=s`` never replays the stream
    of ``torch.manual_seed(s)``: a closure whose data noise comes from the global generator, seeded with
    the same number, would otherwise draw the same numbers as v (and Fisher's h = g + λv could even
    cancel against them).

    Examples:
        >>> plain = torch.Generator().manual_seed(0)
        >>> torch.equal(torch.randn(3, generator=optimizer_generator(0)), torch.randn(3, generator=plain))
        False
    """
    return torch.Generator().manual_seed(seed ^ _STREAM)


Flag = torch.Tensor | bool
"""A device boolean, or True where it is known to be true on the host (the step then branches instead
of selecting with `torch.where`: the same bits, with fewer operations)."""


def _and(ok: Flag, flag: torch.Tensor) -> torch.Tensor:
    """ok & flag, without an operation when ok is True."""
    return flag if ok is True else ok & flag


class Preconditioned(torch.optim.Optimizer):
    """A learned structured preconditioner, as a `torch.optim.Optimizer`: five independent choices —
    structure × placement × objective × fitter × base rule.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        lr: base learning rate α (schedulers change it).
        structure: the learned structure family (`precondalg.families`: φ's init and P_φ), or a callable
            ``shape -> Family`` choosing one per parameter shape (the block's first parameter; use
            `by_ndim` for one that pickles).
        placement: a `Placement` for every parameter, a callable ``shape -> Placement | None`` (None:
            the parameter is not preconditioned and gets the base rule alone; use `by_ndim` for one
            that pickles), or None for no preconditioning at all.  Default:
            `precondalg.placement.default_placement`.
        objective: the meta-objective (default: the online `Hypergradient`).
        fitter: how φ moves (`precondalg.fitters`; default: Adam with lr 1e-4 on φ's leaves, FOP's
            choice; `LieGroup` for PSGD).
        base: "sgd", "momentum", "ema", "adam", "rmsprop" or "adagrad" (`precondalg.optim.base_rules`), or a
            `BaseRule` of one's own.
        position: "gradient" (P before the base rule) or "direction" (P after it).
        momentum: μ for "momentum", β for "ema" (in [0, 1); default 0.9).  Only for those bases.
        dampening: torch.optim.SGD's dampening, for "momentum" only (default 0).
        nesterov: Nesterov momentum, for "momentum" only (default False).
        betas: Adam's (β₁, β₂), for "adam" only (default (0.9, 0.999)).
        eps: Adam's / RMSprop's ε, for "adam" and "rmsprop" only (default 1e-8).
        alpha: RMSprop's smoothing constant, for "rmsprop" only (default 0.99).
        weight_decay: L2 penalty added to the gradient (torch.optim convention).
        update_probability: the probability that a step fits the preconditioners (P is applied every
            step), or a callable ``steps_taken -> probability`` (e.g. an anneal from 1 to 0.03;
            steps_taken counts the calls of `step` that reached a parameter, a skipped one included,
            a raising one not: `steps`, saved in the checkpoint).  The
            draw comes from the optimizer's generator (checkpointed); at 1 nothing is drawn.  A step
            that does not fit runs only the objective's `evaluate_gradients` (for PSGD: no v, no
            Hessian-vector product), which amortises an expensive fit.
        clip: Ω: clip the whole step direction, θ ← θ − lr·s/max(1, ‖s‖/Ω), with ‖s‖ the 2-norm over
            every parameter of the optimizer (PSGD's preconditioned-gradient clipping, Li 2019 §4.4:
            ‖Δθ‖ ≤ lr·Ω).  None: no clipping.
        warmup: the number of first steps (calls of `step` that reached a parameter, as counted for
            `update_probability`) in which P is fitted but not applied: the base rule alone (APO-Precond's
            warm-up, Bae et al. 2022 §5). A `Graft`'s accumulators start when P is first applied. Refused
            with an objective that reads the last applied step (`Objective.reads_cache`: Hypergradient).
        graft: a `Graft`: rescale each preconditioned block's direction P·u to the norm of a diagonal
            method's step on u (layer-wise grafting, as Distributed Shampoo does); None: none.
            Blocks without a placement are not grafted (they take the base rule alone).
        auto_scale: scale each block's φ₀ (a group element) by the objective's ``initial_scale`` of
            its first usable (v, h) pair (psgd_torch's on-the-fly Q₀; PSGD criteria only).  A block
            whose pair gives no finite positive scale (an all-zero or non-finite gradient) waits for the
            next fitted step.  The first step always fits.
        nonfinite: "skip" or "raise" (see the module docstring).
        seed: seed of the optimizer's generator (random initialisations of φ, the PSGD criteria's v,
            the update draws; `optimizer_generator`: never torch.manual_seed(seed)'s stream); its state is
            part of the checkpoint.
        compile: True to compile the step's tensor work (everything after the objective's evaluation:
            the gradients' check, the meta-gradients, the fit, P's application, the base rule and the
            sync-free commit) with `torch.compile`, or a dict of `torch.compile` keyword arguments (e.g.
            ``{"backend": "aot_eager"}``, ``{"mode": "max-autotune"}``).  The first steps compile (seconds
            to a minute; a fitted and an unfitted step compile separately); the result equals the eager
            step to round-off.  The evaluation (the closure, the PSGD criteria's draws) stays eager.
            Needs ``nonfinite="skip"``.
        precond_dtype: None (φ and its fitter's state in the compute dtype, below) or torch.bfloat16:
            φ's leaves with at least one dimension and the moments of a torch meta-optimizer on them
            (not step counts, 0-d leaves or other 0-d state, and not `ClosedForm`'s statistics, whose
            small eigenvalues bfloat16 loses: see `Fit.storable`) are stored in bfloat16 between steps,
            half the bytes of float32: the optimizer's persistent state and its checkpoints.  A step
            widens them to the compute dtype for its arithmetic, so its peak memory is that of a step
            without the option.  Values the step did not write (φ on a step that does not fit, the
            roots between a closed form's refits) go back exactly; new values are rounded to bfloat16
            by `precond_rounding`, and those of a fit that sets φ anew (`Fit.recomputes`: Shampoo's and
            K-FAC's roots) to nearest.  A checkpoint holds the stored values and loads into either
            setting.
        precond_rounding: "stochastic" (default; unbiased, Gupta et al. 2015: a meta-step below
            bfloat16's spacing, 2⁻⁸ relative, still moves φ in expectation; the dither's offsets come
            from a generator of its own, seeded from `seed` and saved in the checkpoint, so the option
            changes none of the optimizer's other draws, runs are reproducible and resume exactly; see
            `precondalg.optim._storage.round_to`) or "nearest" (small meta-steps are lost).  Only with
            `precond_dtype`.
        process_group: the ranks that train this model together on different data (data parallelism:
            `torch.nn.parallel.DistributedDataParallel`): "auto" (default: torch.distributed's default
            group when it is initialised with more than one process, at each step), a process group,
            or None (this process alone).  What the objective computes from the local batch beyond the
            gradients a ``backward`` produced (`Evaluation.local`: PSGD Newton's Hessian-vector
            products, gradients taken from a returned loss; `Objective.local_answers`: K-FAC's layer
            statistics, APO's lookahead) is averaged across the group before the fit, so every rank
            fits and applies the same preconditioner, that of one process on the concatenated batch
            (equal per-rank batches, batch-mean losses).  The first step (and the first after
            `load_state_dict`) checks that the ranks hold the same parameters and generator states
            (a ValueError otherwise).
        name: the method's name, shown in checkpoint errors (presets pass theirs, e.g. "FOP").
        preset_arguments: a preset's own construction arguments (e.g. PSGD's "lr_precond"): like the
            five choices, one value for the whole optimizer, so a param group holding one is refused.

    A param group holds exactly the hyperparameters its base rule reads (as the torch optimizer the
    rule mirrors does), so a base-rule hyperparameter given for a base that does not read it is an
    error, not silently ignored.

    Raises:
        TypeError: a choice of the wrong kind (a class where an instance is expected, a torch optimizer
            class as the fitter, ...) or a hyperparameter that is not a number.
        ValueError: a hyperparameter out of range or not read by the base rule; an unknown base rule,
            position or policy; a structure whose size does not fit the placement, or lacking an
            operation the objective needs.
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
        momentum: float | None = None,
        dampening: float | None = None,
        nesterov: bool | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        alpha: float | None = None,
        weight_decay: float = 0.0,
        update_probability: float | Callable[[int], float] = 1.0,
        clip: float | None = None,
        graft: Graft | None = None,
        warmup: int = 0,
        auto_scale: bool = False,
        nonfinite: str = "skip",
        seed: int = 0,
        compile: bool | dict[str, Any] = False,
        precond_dtype: torch.dtype | None = None,
        precond_rounding: str = unset("stochastic"),
        process_group: Any = "auto",
        name: str = "Preconditioned",
        preset_arguments: tuple[str, ...] = (),
    ) -> None:
        check_choices(structure, placement, objective, fitter)
        if graft is not None and not isinstance(graft, Graft):
            raise TypeError(
                "Preconditioned: 'graft' must be a precondalg.optim.Graft (e.g. graft=Graft('adam')) or "
                f"None; got {graft!r}"
            )
        if not callable(update_probability):
            check_number("Preconditioned", "update_probability", update_probability, 0.0, 1.0)
        if clip is not None:
            check_number("Preconditioned", "clip", clip, 0.0, lo_open=True)
        if not isinstance(auto_scale, bool):
            raise TypeError(f"Preconditioned: 'auto_scale' must be True or False; got {auto_scale!r}")
        if not isinstance(base, (str, BaseRule)):
            raise TypeError(
                f"Preconditioned: 'base' must be one of {sorted(BASE_RULES)} or a BaseRule; got {base!r}"
            )
        check_choice("Preconditioned", "position", position, _POSITIONS)
        check_number("Preconditioned", "warmup", warmup, 0, integer=True)
        check_choice("Preconditioned", "nonfinite", nonfinite, _NONFINITE)
        check_number("Preconditioned", "seed", seed, integer=True)
        if not (process_group is None or process_group == "auto" or is_group(process_group)):
            raise TypeError(
                "Preconditioned: 'process_group' must be \"auto\", None or a torch.distributed process "
                f"group; got {process_group!r} ({type(process_group).__name__})"
            )
        self._process_group = process_group
        self._replicas_checked = False
        self._ranks: Any = None  # the step's process group (`group_of`), or None
        self._compile = _compile_options(compile, nonfinite)
        if precond_dtype is not None and not isinstance(precond_dtype, torch.dtype):
            raise TypeError(
                f"Preconditioned: 'precond_dtype' must be None or a torch.dtype (torch.bfloat16); got "
                f"{precond_dtype!r} ({type(precond_dtype).__name__})"
            )
        if precond_dtype is not None and precond_dtype not in PRECOND_DTYPES:
            raise ValueError(
                f"Preconditioned: 'precond_dtype' must be None (the compute dtype) or one of "
                f"{list(PRECOND_DTYPES)}; got {precond_dtype!r}"
            )
        check_choice("Preconditioned", "precond_rounding", str(precond_rounding), ROUNDINGS)
        if precond_dtype is None and was_given(precond_rounding):
            raise ValueError(
                f"Preconditioned: precond_rounding={precond_rounding!r} rounds the narrow storage of "
                "precond_dtype, which is None (nothing is rounded); give precond_dtype=torch.bfloat16 or "
                "leave precond_rounding out"
            )
        self._precond_dtype = precond_dtype
        self._stochastic = precond_dtype is not None and str(precond_rounding) == "stochastic"
        self._rounding = torch.Generator().manual_seed(seed ^ _ROUNDING_STREAM) if self._stochastic else None
        self._compiled: Callable[..., None] | None = None
        self._base = base if isinstance(base, BaseRule) else base_rule(base)
        self._base_keys = tuple(self._base.init(torch.zeros(1)))  # the names of the rule's state
        self._graft = graft
        self._warmup = int(warmup)
        given = dict(
            momentum=momentum, dampening=dampening, nesterov=nesterov, betas=betas, eps=eps, alpha=alpha
        )
        for key, value in given.items():
            if value is not None and key not in self._base.hyperparameters:
                raise ValueError(_unused_message(key, self._base))
        self._structure = structure
        self._placement = placement
        self._objective = objective if objective is not None else Hypergradient()
        if self._warmup and self._objective.reads_cache:
            raise ValueError(
                f"Preconditioned: warmup={warmup} with objective {type(self._objective).__name__}, whose "
                "meta-gradient goes through the last step P was applied in; during a warm-up P is not "
                "applied. Use warmup=0, or an objective that evaluates its own lookahead (Proximal)"
            )
        if auto_scale and not hasattr(self._objective, "initial_scale"):
            raise ValueError(
                "Preconditioned: 'auto_scale' sets Q₀'s scale from the objective's first (v, h) pair, "
                f"which only the PSGD criteria (Newton, Fisher) provide; got objective "
                f"{type(self._objective).__name__}"
            )
        self._fitter = fitter if fitter is not None else TorchOptimizer(torch.optim.Adam, lr=1e-4)
        self._check_fitting()
        self._update_probability = update_probability
        self._clip = None if clip is None else float(clip)
        self._auto_scale = auto_scale
        self._steps = 0
        self._position = position
        self._nonfinite = nonfinite
        self._name = str(name)
        self._preset_arguments = tuple(preset_arguments)
        self._generator = optimizer_generator(seed)
        self._blocks: list[list[_Block]] = []
        self._watch = SkipWatch(self._name)
        rule_defaults = {
            k: (v if given.get(k) is None else given[k]) for k, v in self._base.hyperparameters.items()
        }
        super().__init__(params, {"lr": lr, **rule_defaults, "weight_decay": weight_decay})
        if self._placement is not None and not any(b.placement for blocks in self._blocks for b in blocks):
            n = sum(len(group["params"]) for group in self.param_groups)
            raise ValueError(
                f"{self._name}: placement {self._placement!r} covers none of the {n} parameters, so nothing "
                "would be preconditioned (the base rule alone would run); expected a placement that covers "
                "some of them (e.g. Layer(model) needs the model's own nn.Linear/nn.Conv2d parameters), or "
                "placement=None for the base rule"
            )

    def __repr__(self) -> str:
        return f"{self._name} ({super().__repr__()})"

    @property
    def steps(self) -> int:
        """The steps taken: the calls of `step` that reached a parameter, a skipped one included, a
        raising one not (what a callable ``update_probability`` reads; saved in the checkpoint)."""
        return self._steps

    @property
    def objective(self) -> Objective:
        """The objective (e.g. to call `LayerStatistics.remove_hooks`)."""
        return self._objective

    def _graft_init(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """The `Graft`'s fresh state for a preconditioned parameter ("graft_…" keys; none without one)."""
        if self._graft is None:
            return {}
        return {f"graft_{k}": v for k, v in self._graft.base.init(_in_compute_dtype(p)).items()}

    def _grafted(
        self, params: list[torch.Tensor], sources: list[torch.Tensor], directions: list[torch.Tensor]
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        """The `Graft`: its new states ("graft_…") and the directions rescaled to the norm of its steps
        on `sources` (the vectors P was applied to), both norms over the whole block."""
        graft = self._graft
        states, steps = [], []
        for p, u in zip(params, sources):
            state = self.state[p]
            old = {k[len("graft_"):]: v for k, v in state.items() if k.startswith("graft_")}
            new, step = graft.base.update(u, old, graft.group)
            states.append({f"graft_{k}": v for k, v in new.items()})
            steps.append(step)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in steps]))
        mine = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in directions]))
        factor = norm / (mine + 1e-16)
        return states, [d * factor for d in directions]

    def _check_fitting(self) -> None:
        """Refuse an objective and a fitter that do not speak the same kind: statistics for a closed-form
        fitter, gradients for a fitter that steps."""
        objective, fitter = type(self._objective).__name__, type(self._fitter).__name__
        if self._fitter.takes_statistics and not self._objective.gives_statistics:
            raise ValueError(
                f"Preconditioned: fitter {fitter} sets φ in closed form from statistics, which objective "
                f"{objective} does not give; use GradientStatistics(), LayerStatistics(model), Fisher() or "
                "Newton(), or a fitter that steps on the meta-gradient (TorchOptimizer, LieGroup)"
            )
        if not self._fitter.takes_statistics and not self._objective.gives_gradients:
            raise ValueError(
                f"Preconditioned: objective {objective} gives statistics for a closed-form fit, not a "
                f"gradient for fitter {fitter} to step on; use fitter=ClosedForm(...)"
            )

    # ----- param groups and blocks -----
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch.optim convention); validates its hyperparameters and builds its
        blocks and their initial preconditioners.

        Raises:
            ValueError: a hyperparameter out of range, or one the base rule does not read.
        """
        self._validate({**self.defaults, **param_group})
        super().add_param_group(param_group)
        try:
            self._blocks.append(self._make_blocks(self.param_groups[-1]))
        except Exception:
            self.param_groups.pop()  # a group without its blocks would never be stepped
            raise

    def _validate(self, group: dict[str, Any]) -> None:
        known = {"params", "lr", "weight_decay", *HYPERPARAMETERS, *self._base.hyperparameters}
        for key in group:
            if key in _CHOICES or key in self._preset_arguments:
                by_shape = "choose per parameter shape with a callable such as by_ndim, or "
                per_shape = "" if key in self._preset_arguments else by_shape
                raise ValueError(
                    f"{self._name}: a param group cannot choose '{key}' (it is one choice for the whole "
                    f"optimizer; {per_shape}build one optimizer per group)"
                )
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.85) if key not in known else []
            if close:
                raise ValueError(
                    f"Preconditioned: unknown param-group key '{key}'; did you mean '{close[0]}'?"
                )
        for key, value in group.items():
            if key in HYPERPARAMETERS and key not in self._base.hyperparameters:
                raise ValueError(_unused_message(key, self._base))
            if key in ("lr", "weight_decay") or key in HYPERPARAMETERS:
                check_hyperparameter("Preconditioned", key, value)
        if group.get("nesterov") and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Preconditioned: 'nesterov' needs momentum > 0 and dampening = 0; got "
                f"momentum {group['momentum']!r}, dampening {group['dampening']!r}"
            )

    def _placement_of(self, p: torch.Tensor) -> Placement | None:
        choice = self._placement
        if choice is None:
            return None
        if isinstance(choice, Placement):
            return choice if choice.covers(p) else None
        placement = call_choice("placement", choice, tuple(p.shape))
        if not (placement is None or isinstance(placement, Placement)):
            raise TypeError(
                f"Preconditioned: 'placement' returned {type(placement).__name__} for a parameter of shape "
                f"{tuple(p.shape)}; expected a precondalg.placement.Placement or None"
            )
        return placement if placement is None or placement.covers(p) else None

    def _make_blocks(self, group: dict[str, Any]) -> list[_Block]:
        blocks: list[_Block] = []
        joint: dict[tuple[Placement, Any], list[torch.Tensor]] = {}
        for p in group["params"]:
            placement = self._placement_of(p)
            key = None if placement is None else placement.block_key(p)
            if key is not None:
                joint.setdefault((placement, key), []).append(p)
            else:
                blocks.append(_Block([p], placement))
        for (placement, _), ps in joint.items():
            kinds = sorted({(str(p.dtype), str(p.device)) for p in ps})
            if len(kinds) > 1:
                raise ValueError(
                    f"{self._name}: placement {placement!r} puts several parameters of a param group into "
                    f"one block, so they must share one dtype and device; got {kinds}. Put each kind in its "
                    "own param group"
                )
        blocks.extend(_Block(ps, placement) for (placement, _), ps in joint.items())
        for block in blocks:
            for p in block.params:
                self.state[p].update(self._base.init(_in_compute_dtype(p)))
                if block.placement is not None:
                    self.state[p].update(self._graft_init(p))
            anchor = block.params[0]
            self.state[anchor]["skipped"] = torch.zeros((), dtype=torch.int64, device=anchor.device)
            if block.placement is not None:
                self._init_block(block)
        return blocks

    def _family_of(self, p: torch.Tensor) -> Family:
        if isinstance(self._structure, Family):
            return self._structure
        family = call_choice("structure", self._structure, tuple(p.shape))
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
        self._check_phi(block, phi)
        P = block.family.form(phi)
        self._check_size(block, P)
        self._check_operations(block, P)
        self._objective.check_block(block.params, block.placement)
        if self._fitter.takes_statistics:
            self._check_closed_form(block, phi)
        if self._auto_scale:
            try:
                scale_group(phi, 1.0)
            except TypeError as err:
                raise ValueError(
                    f"Preconditioned: 'auto_scale' scales φ₀ as a group element; structure {block.family!r} "
                    f"made {type(phi).__name__} for the parameter(s) of shape(s) {block.shapes}: {err}"
                ) from err
        leaves, block.spec = pytree.tree_flatten(phi)
        leaves = [leaf.detach().clone() for leaf in leaves]
        block.fitter = self._fitter.build(leaves, block.spec)
        self.state[anchor]["preconditioner"] = {
            "phi": leaves,
            "static": static_contexts(block.spec),
            "cache": {},
            "meta_skipped": torch.zeros((), dtype=torch.int64, device=anchor.device),
        }
        if self._auto_scale:
            self.state[anchor]["preconditioner"]["scale_pending"] = torch.ones(
                (), dtype=torch.bool, device=anchor.device
            )
        self._store(block)

    def _stored(self, block: _Block, fitting: bool = True) -> list[torch.Tensor]:
        """The block's tensors that ``precond_dtype`` stores narrow: φ's leaves, and when `fitting` the
        fitter's state that may be (`Fit.storable`; a step that does not fit reads only φ)."""
        leaves = self.state[block.params[0]]["preconditioner"]["phi"]
        return stored_tensors(leaves, block.fitter.storable() if fitting else [])

    def _store(self, block: _Block) -> None:
        """Round the block's stored tensors to ``precond_dtype`` (to nearest; at construction and load)."""
        if self._precond_dtype is not None:
            for t in self._stored(block):
                t.data = round_to(t.data, self._precond_dtype)

    def _widen(self, fitting: bool) -> list[Widened] | None:
        """With ``precond_dtype``: every block's stored tensors widened for this step's arithmetic."""
        if self._precond_dtype is None:
            return None
        return [Widened(self._stored(b, fitting), _compute_dtype(b.params[0])) for b in self._all_blocks()]

    def _narrow(self, widened: list[Widened] | None, fitting: bool) -> None:
        """With ``precond_dtype``: the stored tensors narrowed again after the step (`Widened.narrow`;
        stochastic rounding draws its offsets from its own generator; a fit that sets φ anew,
        `Fit.recomputes`, is rounded to nearest)."""
        if widened is None:
            return
        for block, w in zip(self._all_blocks(), widened, strict=True):
            generator = None if block.fitter.recomputes else self._rounding
            w.narrow(self._stored(block, fitting), self._precond_dtype, generator)

    def _check_phi(self, block: _Block, phi: Any) -> None:
        """Refuse, at construction, a φ₀ that is not a structure in the block's compute dtype and device."""
        anchor = block.params[0]
        want = (_compute_dtype(anchor), anchor.device)
        if not isinstance(phi, Structure):
            raise TypeError(
                f"Preconditioned: structure {block.family!r} made φ₀ of type {type(phi).__name__} for the "
                f"parameter(s) of shape(s) {block.shapes}; its init must return a precondalg structure"
            )
        if (phi.dtype, phi.device) != want:
            raise TypeError(
                f"Preconditioned: structure {block.family!r} made φ₀ in {phi.dtype} on {phi.device} for the "
                f"parameter(s) of shape(s) {block.shapes}; expected {want[0]} on {want[1]}: build it with "
                "init's `like` argument (like.dtype, like.device)"
            )

    def _check_size(self, block: _Block, P: Structure) -> None:
        """Refuse, at construction, a preconditioner whose size does not fit the placement's view."""
        dims = block.placement.dims(block.shapes)
        try:
            block.placement.check(P, dims)
        except ValueError as err:
            raise ValueError(
                f"Preconditioned: for the parameter(s) of shape(s) {block.shapes}, placement "
                f"{block.placement!r} has dims {dims}, but structure {block.family!r} made {describe(P)}: "
                f"{err}"
            ) from err

    def _check_closed_form(self, block: _Block, phi: Structure) -> None:
        """Refuse, at construction, a structure a closed-form fitter cannot set: one whose family does not
        say how P depends on φ, or a triangular part of a family with P = φ."""
        eigenbasis = any(isinstance(part, Eigenbasis) for part in simple_parts(phi))
        if eigenbasis and not self._objective.sets_eigenbasis:
            raise ValueError(
                f"Preconditioned: objective {type(self._objective).__name__} gives no statistics that set an "
                "Eigenbasis in closed form; LayerStatistics(model) does (EKFAC's eigenbasis form)"
            )
        power = block.family.power
        if power not in (1, 2) or (
            power == 1 and any(isinstance(part, Triangular) for part in simple_parts(phi))
        ):
            raise ValueError(
                f"Preconditioned: fitter {type(self._fitter).__name__} sets φ in closed form from a target "
                f"P, which needs P = φ (families scalar, diagonal, dense, kronecker) or P = φᵀφ (the *_gram "
                f"families of square parts); structure {block.family!r} (for the parameter(s) of shape(s) "
                f"{block.shapes}) is neither"
            )

    def _check_operations(self, block: _Block, P: Structure) -> None:
        """Refuse, at construction, a structure lacking an operation the objective needs."""
        for operation in self._objective.requires:
            probe = torch.zeros(P.shape[1], 1, dtype=P.dtype, device=P.device)
            try:
                getattr(P, operation)(probe)
            except NotInvertibleError as err:
                raise ValueError(
                    f"Preconditioned: objective {type(self._objective).__name__} needs the preconditioner's "
                    f"'{operation}', which {type(P).__name__} (for parameters of shapes {block.shapes}) does "
                    f"not have: {err}"
                ) from err

    def preconditioners(self) -> list[tuple[list[torch.Tensor], Any]]:
        """Every block's parameters and its current preconditioner P_φ (a structure, in the compute
        dtype: under ``precond_dtype`` formed from a widened copy of φ), for inspection."""
        return [
            (block.params, block.family.form(pytree.tree_map(
                functools.partial(_cast, dtype=_compute_dtype(block.params[0])), self._phi(block)
            )))
            for block in self._all_blocks()
        ]

    def skip_counts(self) -> list[dict[str, Any]]:
        """Per block: the parameters' shapes, how many updates were skipped and how many preconditioner
        fits were rolled back because of NaN or Inf (reads the device counters: a host synchronisation)."""
        out = []
        for block in self._every_block():
            state = self.state[block.params[0]]
            meta = state["preconditioner"]["meta_skipped"] if block.placement is not None else 0
            out.append({"shapes": block.shapes, "skipped": int(state["skipped"]), "meta_skipped": int(meta)})
        return out

    def _phi(self, block: _Block) -> Any:
        return pytree.tree_unflatten(self.state[block.params[0]]["preconditioner"]["phi"], block.spec)

    def _formed(self, block: _Block) -> Structure:
        """P_φ for the step.  Where φ is the fit's own structure over the live leaves and P_φ holds
        nothing but those leaves (a lazy form, e.g. PSGD's QᵀQ of triangular factors), P_φ follows the
        leaves as they move in place: it is formed once and kept."""
        phi = block.fitter.phi()
        if phi is None:
            return block.family.form(self._phi(block))
        if block.formed is None or block.formed[0] is not phi:
            P = block.family.form(phi)
            live = {id(leaf) for leaf in pytree.tree_leaves(phi)}
            block.formed = (phi, P if all(id(leaf) in live for leaf in pytree.tree_leaves(P)) else None)
        return block.formed[1] if block.formed[1] is not None else block.family.form(phi)

    def _live_phi(self, block: _Block) -> Any:
        """φ for the step: the fit's own structure over the live leaves where it keeps one (built once,
        and it may know more of its leaves, e.g. that a triangular one is upper triangular), else φ
        rebuilt from the leaves."""
        phi = block.fitter.phi()
        return self._phi(block) if phi is None else phi

    def _param_index(self) -> dict[torch.Tensor, int]:
        """Each parameter's index in the state dict (param groups in order)."""
        return {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}

    def _every_block(self) -> list[_Block]:
        return [b for blocks in self._blocks for b in blocks]

    def _all_blocks(self) -> list[_Block]:
        """The preconditioned blocks."""
        return [b for b in self._every_block() if b.placement is not None]

    # ----- copies and checkpoints -----
    def __getstate__(self) -> dict[str, Any]:
        """torch.optim keeps only defaults, state and param_groups; the five choices and the blocks
        (with their meta-optimizers) must travel too, for deepcopy and pickling.  Tree specs do not
        (torch deprecates pickling them): `__setstate__` rebuilds them."""
        mine = {k: v for k, v in self.__dict__.items() if k.startswith("_")}
        mine["_compiled"] = None  # compiled again on the copy's first step
        mine["_ranks"] = None  # found again at the copy's next step
        mine["_blocks"] = [
            [dataclasses.replace(b, spec=None, formed=None) for b in blocks] for blocks in self._blocks
        ]
        return {**super().__getstate__(), **mine}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for block in self._all_blocks():
            block.spec = self._spec(block, self.state[block.params[0]]["preconditioner"]["static"])

    def _spec(self, block: _Block, static: list[Any]) -> pytree.TreeSpec:
        """The tree spec of the block's φ: a throw-away initialisation's, with φ's static data (e.g. a
        `PermutationNetwork`'s permutations, random) as saved by `static_contexts`."""
        return with_contexts(pytree.tree_structure(_initial_phi(block, torch.Generator())), static)

    def configuration(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded: the method's name, base rule, position, objective
        and fitter, the parameter shapes per group, and per preconditioned block its parameters,
        placement, structure family and φ's structure (plain Python data, saved in `state_dict`)."""
        index = self._param_index()
        fitter = type(self._fitter).__name__
        if isinstance(self._fitter, TorchOptimizer):
            fitter += f"({self._fitter.cls.__name__})"
        return {
            "version": VERSION,
            "optimizer": self._name,
            "base": self._base.name,
            "position": self._position,
            **({} if self._graft is None else {"graft": repr(self._graft)}),
            "objective": type(self._objective).__name__,
            "fitter": fitter,
            "groups": [[list(p.shape) for p in group["params"]] for group in self.param_groups],
            "blocks": [
                {
                    "params": [index[p] for p in block.params],
                    "shapes": [list(p.shape) for p in block.params],
                    "placement": repr(block.placement),
                    "structure": block.family.kind,
                    "phi": describe(self._phi(block)),
                }
                for block in self._all_blocks()
            ],
        }

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict ("state" and "param_groups"); each block's state also holds its
        fitter's state, and the first param group holds the optimizer's own entries under "precondalg":
        "generator" (the state of the optimizer's random generator), "rounding_generator" (the stochastic
        rounding's, with ``precond_dtype``), "steps" (the steps taken), "configuration" (the
        `configuration` that a checkpoint must match to be loaded, as JSON text) and "layout" (a digest
        of the state's entries, `_layout`: a state dict loaded into another's template that lacked
        some, as torch.distributed.checkpoint's in-place load does, is refused).  They sit in a param
        group, not at the top level, so that `torch.distributed.checkpoint`'s
        ``get_optimizer_state_dict``, which keeps "state" and "param_groups" only, carries them."""
        packed = super().state_dict()
        index = self._param_index()
        for block in self._all_blocks():
            i = index[block.params[0]]
            entry = packed["state"][i]
            packed["state"][i] = {
                **entry,
                "preconditioner": {**entry["preconditioner"], "fitter": block.fitter.state_dict()},
            }
        rounding = {} if self._rounding is None else {"rounding_generator": self._rounding.get_state()}
        packed["param_groups"][0]["precondalg"] = {
            "generator": self._generator.get_state(),
            **rounding,
            "steps": self._steps,
            "configuration": json.dumps(self.configuration()),
            "layout": _layout(packed),
        }
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; restores φ's leaves, the cache, the skip counters, the base rule's state
        (each in its documented dtype) and each block's meta-optimizer, so that a resumed run equals the
        uninterrupted one bit for bit.

        The param groups' hyperparameters come from the checkpoint (torch.optim's convention); the
        objective's and the fitter's (damping, the fitter's learning rate, ...) and ``nonfinite`` stay
        the constructor's.

        Raises:
            ValueError: the state dict was made by another optimizer or with a different configuration
                (structure, placement, base rule, preset, parameters); the message lists the
                differences and nothing of this optimizer is changed.
        """
        self._check_checkpoint(state_dict)
        groups = [dict(group) for group in state_dict["param_groups"]]
        own = groups[0].pop("precondalg")
        state_dict = {**state_dict, "param_groups": groups}
        generator, rounding, steps = own["generator"], own.get("rounding_generator"), own["steps"]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        saved = dict(state_dict["state"])
        # torch.optim casts every floating state tensor to its parameter's dtype: lossy for the float32
        # state of bfloat16/float16 parameters.  The state is therefore taken as saved, below.
        super().load_state_dict(state_dict)
        self._generator.set_state(generator)
        if self._rounding is not None and rounding is not None:  # else: its fresh state, from the seed
            self._rounding.set_state(rounding)
        self._steps = int(steps)
        params = [p for group in self.param_groups for p in group["params"]]
        of = {p: saved.get(i, {}) for p, i in zip(params, saved_ids)}
        for p in params:
            state = self.state[p] = {}
            for key, template in self._base.init(_in_compute_dtype(p)).items():
                state[key] = of[p][key].to(device=p.device, dtype=template.dtype, copy=True)
        for block in self._every_block():
            anchor = block.params[0]
            for p in block.params if block.placement is not None else ():  # in the order of a fresh state
                for key, template in self._graft_init(p).items():
                    self.state[p][key] = of[p][key].to(device=p.device, dtype=template.dtype, copy=True)
            self.state[anchor]["skipped"] = of[anchor]["skipped"].to(anchor.device, copy=True)
            if block.placement is None:
                continue
            pre = pytree.tree_map(
                lambda v, device=anchor.device: v.to(device, copy=True) if isinstance(v, torch.Tensor) else v,
                of[anchor]["preconditioner"],
            )
            dtype = _compute_dtype(anchor)
            pre["phi"] = [leaf.to(dtype) for leaf in pre["phi"]]
            if "u" in pre["cache"]:
                pre["cache"]["u"] = pre["cache"]["u"].to(dtype)
            if self._auto_scale:  # a checkpoint made without auto_scale has its scale: nothing pending
                pre.setdefault("scale_pending", torch.zeros((), dtype=torch.bool, device=anchor.device))
            else:
                pre.pop("scale_pending", None)
            block.spec = self._spec(block, pre["static"])
            block.fitter = self._fitter.build(pre["phi"], block.spec)
            block.fitter.load_state_dict(pre.pop("fitter"))
            self.state[anchor]["preconditioner"] = pre
            self._store(block)
        self._watch.reset(self._counters(), len(self._every_block()))
        self._replicas_checked = False  # every rank must have loaded the same checkpoint

    def _check_checkpoint(self, state_dict: dict[str, Any]) -> None:
        """Refuse, before changing anything, a state dict this optimizer cannot continue from."""
        own = _own_entries(state_dict)
        if own is None:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                "Preconditioned.load_state_dict: this state dict was not made by a precondalg optimizer "
                f"(its first param group has no 'precondalg' entry; its keys are {keys}): it cannot be "
                f"loaded into {self._name}; nothing was changed"
            )
        self._check_configuration(own["configuration"] if isinstance(own.get("configuration"), str) else own)
        if own.get("layout") != _layout(state_dict):
            raise ValueError(
                "Preconditioned.load_state_dict: the state dict lacks entries the checkpoint had (its "
                "layout digest differs): it was loaded into the state dict of an optimizer that has not "
                "taken the same steps (torch.distributed.checkpoint's dcp.load fills a template in place "
                "and drops what the template lacks: the last step's cache, the meta-optimizer's moments). "
                "Save and load with precondalg.optim.dcp_save / dcp_load. load_state_dict changed nothing, "
                "but a dcp.load into this optimizer's own state dict has overwritten some of its tensors in "
                "place: build the optimizer anew before loading again"
            )
        states = state_dict.get("state", {})
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        index = dict(zip(params, saved_ids))  # ints, or names (torch.distributed.checkpoint's)
        missing = [f"'{key}'" for key in ("generator", "steps") if key not in own]
        for block in self._every_block():
            for p in block.params:
                needed = list(self._base_keys)
                if block.placement is not None:
                    needed += list(self._graft_init(p))
                if p is block.params[0]:
                    needed += ["skipped"] + (["preconditioner"] if block.placement is not None else [])
                entry = states.get(index[p], {})
                shape = tuple(p.shape)
                missing += [f"'{k}' for the parameter of shape {shape}" for k in needed if k not in entry]
        if missing:
            raise ValueError(
                f"Preconditioned.load_state_dict: the checkpoint lacks {', '.join(missing)}; nothing was "
                "changed"
            )

    def _check_configuration(
        self, saved: str | dict[str, Any], caller: str = "Preconditioned.load_state_dict"
    ) -> None:
        """Refuse a checkpoint's `configuration` (JSON text; a dict for a format-2 checkpoint) that is
        not this optimizer's; the message starts with `caller`.

        Raises:
            ValueError: listing the differences.
        """
        saved = json.loads(saved) if isinstance(saved, str) else saved
        changed = differences(saved, json.loads(json.dumps(self.configuration())))
        if changed:
            raise ValueError(
                f"{caller}: the checkpoint was made with a different configuration "
                f"(checkpoint → this optimizer): {'; '.join(changed)}. Nothing was changed"
            )

    def _counters(self) -> torch.Tensor:
        """Every block's skip counter, then every preconditioned block's meta-skip counter."""
        skipped = [self.state[b.params[0]]["skipped"] for b in self._every_block()]
        meta = [self.state[b.params[0]]["preconditioner"]["meta_skipped"] for b in self._all_blocks()]
        counters = skipped + meta
        device = counters[0].device  # parameters may live on several devices
        if any(c.device != device for c in counters):
            counters = [c.to(device, non_blocking=True) for c in counters]
        return torch.stack(counters)

    # ----- the step -----
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **inputs: Any) -> Any:
        """One optimizer step (see the module docstring).

        Args:
            closure: re-evaluates the model and returns the loss.  It may call ``loss.backward()``
                (torch.optim's convention) or not (PSGD's: the optimizer then sets the gradients),
                except for `Newton`'s "autograd" mode, which differentiates the returned loss twice and
                needs a closure that does NOT call backward.  Optional for `Hypergradient` (required
                with ``mode="unroll"``), `Fisher` and `Proximal`; required by `Newton`'s "autograd" and
                "finite_difference" modes.
            **inputs: what the objective takes per step (``batch`` and ``fsd_batch`` for `Proximal`,
                ``batch`` for ``Newton(hvp="torch.func")``).

        Returns:
            The closure's loss, or None.

        Warns:
            SkippedStepWarning: after the first skipped update, then periodically with the counts.
            UserWarning: no parameter has a gradient (nothing is updated).
        """
        fitting = self._fitting_now()
        widened = self._widen(fitting)
        try:
            evaluation = self._step(closure, fitting, inputs)
        finally:
            self._narrow(widened, fitting)
        return evaluation.loss

    def _step(self, closure: Callable[[], Any] | None, fitting: bool, inputs: dict[str, Any]) -> Evaluation:
        """`step`, with φ in the compute dtype."""
        params = [p for group in self.param_groups for p in group["params"]]
        evaluate = self._objective.evaluate if fitting else self._objective.evaluate_gradients
        evaluation = evaluate(params, closure, self._generator, **inputs)
        self._ranks = group_of(self._process_group)
        if self._ranks is not None:
            evaluation = self._synchronise(evaluation, params)
        if not any(p.grad is not None for p in params):
            warnings.warn(
                f"{self._name}.step: none of the optimizer's {len(params)} parameters has a gradient "
                "(every .grad is None), so nothing was updated. Call loss.backward() before step(), or "
                "pass a closure that returns the loss.",
                stacklevel=callers_level(),
            )
            return evaluation
        applying = self._steps >= self._warmup
        if fitting:
            for block in self._all_blocks():
                block.fitter.prepare()
        if self._nonfinite == "raise":
            self._step_or_raise(evaluation, fitting, applying)
        else:
            self._update(evaluation, fitting, applying)
            shapes = [b.shapes for b in self._every_block()], [b.shapes for b in self._all_blocks()]
            self._watch.record(self._counters(), *shapes)
        self._steps += 1
        return evaluation

    def _synchronise(self, evaluation: Evaluation, params: list[torch.Tensor]) -> Evaluation:
        """Average `Evaluation.local` across the ranks (a gradient missing on a rank counts as zero there,
        as DDP counts an unused parameter's; it stays None where every rank lacks it); on the first step,
        check that the ranks are replicas (`check_replicas`)."""
        if not self._replicas_checked:
            states = [g.get_state() for g in (self._generator, self._rounding) if g is not None]
            check_replicas([p.detach() for p in params] + states, self._ranks, self._name)
            self._replicas_checked = True
        tensors, places = [], []
        if "grad" in evaluation.local:
            tensors += [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            tensors.append(torch.tensor([p.grad is not None for p in params], dtype=torch.float64))
            places += [("grad", p) for p in params] + [("given", None)]
        for name in evaluation.local:
            if name != "grad":
                tensors += list(evaluation.per_param[name].values())
                places += [(name, p) for p in evaluation.per_param[name]]
        if not tensors:
            return evaluation
        per_param = {name: dict(values) for name, values in evaluation.per_param.items()}
        means = average(tensors, self._ranks)
        if "grad" in evaluation.local:
            anywhere = means[len(params)].tolist()
            for p, mean, given in zip(params, means, anywhere):
                p.grad = mean if given > 0 else None
        for (name, p), mean in zip(places, means):
            if name not in ("grad", "given"):
                per_param[name][p] = mean
        return dataclasses.replace(evaluation, per_param=per_param)

    def _update(self, evaluation: Evaluation, fitting: bool, applying: bool) -> None:
        """`_skip_step`, compiled with ``compile=True`` (built on the first step)."""
        if self._compile is None:
            return self._skip_step(evaluation, fitting, applying)
        if self._compiled is None:
            self._compiled = torch.compile(self._skip_step, **self._compile)
        return self._compiled(evaluation, fitting, applying)

    def _plans(self, evaluation: Evaluation, fitting: bool) -> list[_Plan]:
        steps = []
        for group, blocks in zip(self.param_groups, self._blocks, strict=True):
            stepping = [block for block in blocks if any(p.grad is not None for p in block.params)]
            grads = [self._decayed_grads(group, block.params) for block in stepping]
            bases = self._direction_bases(group, stepping, grads)
            steps += [(group, *step) for step in zip(stepping, grads, bases, strict=True)]
        whole = _gathered(steps, evaluation, fitting)
        return [self._plan(*step, evaluation, fitting, whole) for step in steps]

    def _direction_bases(
        self, group: dict[str, Any], blocks: list[_Block], grads: list[list[torch.Tensor]]
    ) -> list[tuple[list[dict[str, Any]], list[torch.Tensor]] | None]:
        """For position "direction": per preconditioned block, the base rule's new states and steps (P
        acts on the steps), computed once for all of the group's preconditioned blocks
        (`BaseRule.updates`); None for the others."""
        placed = [i for i, block in enumerate(blocks) if block.placement is not None]
        out: list[Any] = [None] * len(blocks)
        if self._position != "direction" or not placed:
            return out
        params = [p for i in placed for p in blocks[i].params]
        states, steps = self._base_steps(group, params, [g for i in placed for g in grads[i]])
        start = 0
        for i in placed:
            n = len(blocks[i].params)
            out[i] = (states[start : start + n], steps[start : start + n])
            start += n
        return out

    def _metas_and_fits(
        self, plans: list[_Plan], evaluation: Evaluation, ok: Flag
    ) -> list[tuple[_Block, tuple[torch.Tensor | None, Callable[..., None]]]]:
        """The objective's meta-gradients and the fitters' steps of the blocks that fit this step."""
        learned = [plan for plan in plans if plan.context is not None]
        if self._auto_scale:
            for plan in learned:
                plan.context = self._scale_once(plan.block, plan.context, ok)
        metas = self._objective.meta_grads([plan.context for plan in learned], evaluation) if learned else []
        if self._ranks is not None and self._objective.local_answers():
            metas = average_answers(metas, [plan.block.shapes for plan in learned], self._ranks)
        return [
            (plan.block, self._fit(plan.block, meta, ok))
            for plan, meta in zip(learned, metas)
            if meta is not None
        ]

    def _skip_step(self, evaluation: Evaluation, fitting: bool, applying: bool) -> None:
        """The tensor work of a step under ``nonfinite="skip"`` (everything after the objective's
        evaluation): decided on the device, so it can be compiled (``compile=True``)."""
        ok = self._grads_finite()
        if self._certain(ok):
            ok = True
        plans = self._plans(evaluation, fitting)
        undos = {id(block): undo for block, (_, undo) in self._metas_and_fits(plans, evaluation, ok)}
        directions = self._directions(plans, applying)
        factor = None if self._clip is None else self._clip_factor([steps for _, steps in directions])
        for plan, proposal in zip(plans, self._proposals(plans, ok, directions, factor)):
            fine = proposal[2]
            if id(plan.block) in undos and not self._certain(fine):  # φ as it was where θ stays
                undos[id(plan.block)](fine)
            self._commit(plan, *proposal)

    def _step_or_raise(self, evaluation: Evaluation, fitting: bool, applying: bool) -> None:
        """A step under ``nonfinite="raise"``: all or nothing (host synchronisations)."""
        ok = self._grads_finite()
        if not bool(ok):
            raise FloatingPointError("Preconditioned.step: a gradient holds NaN or Inf; nothing was updated")
        plans = self._plans(evaluation, fitting)
        fits = self._metas_and_fits(plans, evaluation, True)
        bad_fits = [block.shapes for block, (back, _) in fits if back is not None and bool(back)]
        proposals = []
        if not bad_fits:
            directions = self._directions(plans, applying)
            factor = None if self._clip is None else self._clip_factor([steps for _, steps in directions])
            proposals = self._proposals(plans, True, directions, factor)
        bad_steps = [plan.block.shapes for plan, (_, _, fine) in zip(plans, proposals) if not bool(fine)]
        if bad_fits or bad_steps:
            for _, (_, undo) in fits:
                undo()
            what = (
                "the meta-gradient or the fitted preconditioner of the blocks of shapes "
                + blocks_text(bad_fits)
                if bad_fits
                else f"the new parameters of the blocks of shapes {blocks_text(bad_steps)}"
            )
            raise FloatingPointError(
                f"Preconditioned.step: {what} would hold NaN or Inf; nothing was updated"
            )
        for plan, proposal in zip(plans, proposals):
            self._commit(plan, *proposal)

    def _fitting_now(self) -> bool:
        """Whether this step fits the preconditioners: with probability ``update_probability`` (of the
        number of steps taken, when it is a callable), drawn from the optimizer's generator unless it
        is 0 or 1; always on the first step with ``auto_scale``."""
        p = self._update_probability
        if callable(p):
            p = p(self._steps)
            check_number(
                f"Preconditioned (update_probability({self._steps}))", "update_probability", p, 0.0, 1.0
            )
        if self._auto_scale and self._steps == 0:
            return True
        if p >= 1 or p <= 0:
            return p >= 1
        return float(torch.rand((), generator=self._generator, dtype=torch.float64)) < p

    def _scale_once(self, block: _Block, ctx: BlockContext, ok: Flag) -> BlockContext:
        """``auto_scale``: while the block waits for its scale, φ ← s·φ with s the objective's
        ``initial_scale`` of this step's (v, h), where s is finite and positive (no host sync).
        Returns the context with the (possibly) scaled φ, from which the fit starts; at once where the
        block is known (on the CPU) to have its scale already."""
        pre = self.state[block.params[0]]["preconditioner"]
        if self._compile is None and pre["scale_pending"].device.type == "cpu" and not pre["scale_pending"]:
            return ctx
        s = self._objective.initial_scale(ctx)
        apply = pre["scale_pending"] & ok & torch.isfinite(s) & (s > 0)
        s = torch.where(apply, s, torch.ones_like(s))
        scaled = pytree.tree_leaves(scale_group(self._phi(block), s))
        for leaf, new in zip(pre["phi"], scaled):
            writable(leaf).copy_(writable(new))
        writable(pre["scale_pending"]).copy_(writable(pre["scale_pending"] & ~apply))
        return dataclasses.replace(ctx, phi=self._live_phi(block))

    def _clip_factor(self, steps: list[list[torch.Tensor]]) -> torch.Tensor:
        """min(1, Ω/‖s‖), ‖s‖ the 2-norm of every block's step direction together (device tensor)."""
        flat = [s for block_steps in steps for s in block_steps]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in flat]))
        return torch.clamp(self._clip / norm, max=1.0)

    def _grads_finite(self) -> torch.Tensor:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        return all_finite(grads) if grads else torch.tensor(True)

    def _decayed_grads(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each parameter's gradient (zeros where None) plus weight decay, in the compute dtype."""
        wd = group["weight_decay"]
        dtypes = [_compute_dtype(p) for p in params]
        grads = [
            torch.zeros_like(p, dtype=dtype) if p.grad is None else _cast(p.grad, dtype)
            for p, dtype in zip(params, dtypes)
        ]
        return [g.add(_cast(p, g.dtype), alpha=wd) if wd else g for g, p in zip(grads, params)]

    def _base_steps(
        self, group: dict[str, Any], params: list[torch.Tensor], directions: list[torch.Tensor]
    ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
        olds = [{k: self.state[p][k] for k in self._base_keys} for p in params]
        return self._base.updates(directions, olds, group)

    def _plan(
        self,
        group: dict[str, Any],
        block: _Block,
        grads: list[torch.Tensor],
        base: tuple[list[dict[str, Any]], list[torch.Tensor]] | None,
        evaluation: Evaluation,
        fitting: bool,
        whole: Callable[[torch.Tensor], torch.Tensor] = full,
    ) -> _Plan:
        """Everything of a block's step that does not depend on φ's update: its gradients `grads`
        (`_decayed_grads`), their placed view, the objective's context (when `fitting`), and for position
        "direction" the base rule's step `base` (`_direction_bases`). `whole` gives a sharded tensor's
        whole tensor (`_gathered`)."""
        params = block.params
        plan = _Plan(group, block, [p.grad is not None for p in params], grads)
        if block.placement is None:
            return plan
        anchor = params[0]
        pre = self.state[anchor]["preconditioner"]
        dtype = _compute_dtype(anchor)
        plan.shapes = block.shapes
        plan.X = block.placement.view([whole(g) for g in plan.grads])
        if base is not None:  # position "direction" (`_direction_bases`)
            plan.states, plan.sources = base
            plan.u = block.placement.view([whole(s) for s in plan.sources])
        else:
            plan.u = plan.X
        if not fitting:
            return plan
        extras = {
            name: block.placement.view([_cast(whole(of), dtype) for of in evaluation.of(name, params)])
            for name in evaluation.per_param
        }
        if group["weight_decay"]:
            theta = block.placement.view([_in_compute_dtype(whole(p)) for p in params])
            extras = self._objective.with_weight_decay(extras, group["weight_decay"], theta)
        plan.context = BlockContext(
            self._live_phi(block),
            block.family.hyper_form or block.family.form,
            plan.X,
            pre["cache"],
            extras,
            params=params,
            lookahead=plan.u,
            unview=functools.partial(self._unview, block, shapes=plan.shapes),
            view=lambda tensors: self._view(block, [_cast(t, dtype) for t in tensors]),
            lr=group["lr"],
            form_vjp=block.family.hyper_vjp,
            relative=self._fitter.takes_relative,
            statistics=self._fitter.takes_statistics,
            power=block.family.power,
        )
        return plan

    @staticmethod
    def _view(block: _Block, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The placement's (n, k) view of tensors of the block's parameters' shapes; of the whole tensors
        where they are sharded (FSDP2's `DTensor`: gathered, `full`)."""
        return block.placement.view([full(t) for t in tensors])

    @staticmethod
    def _unview(block: _Block, M: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """`_view`'s inverse: tensors of the parameters' shapes, each placed like its parameter (a
        sharded parameter's rank keeps its shard, `shard_like`)."""
        return [shard_like(t, p) for t, p in zip(block.placement.unview(M, shapes), block.params)]

    def _certain(self, flag: Flag) -> bool:
        """Whether `flag` is known to be true without a host synchronisation: True itself, or a device
        boolean that lives on the CPU (where reading it costs none) and holds True.  A compiled step
        never reads it (a read would break its graph): it selects with `torch.where` (the same bits)."""
        return flag is True or (self._compile is None and flag.device.type == "cpu" and bool(flag))

    def _directions(
        self, plans: list[_Plan], applying: bool
    ) -> list[tuple[list[dict[str, Any]], list[torch.Tensor]]]:
        """Per plan: apply P_φ (φ already fitted; unless not `applying`, during a warm-up) and the base
        rule: the new base-rule states and the step directions s (θ moves by −lr·s), in the compute
        dtype.  The base rule runs once per param group for all its blocks (`BaseRule.updates`)."""
        pending = [self._before_base(plan, applying) for plan in plans]
        by_group: dict[int, list[int]] = {}
        for i, (plan, (inputs, _, _)) in enumerate(zip(plans, pending)):
            if inputs is not None:
                by_group.setdefault(id(plan.group), []).append(i)
        for indices in by_group.values():
            group = plans[indices[0]].group
            params = [p for i in indices for p in plans[i].block.params]
            inputs = [d for i in indices for d in pending[i][0]]
            states, steps = self._base_steps(group, params, inputs)
            start = 0
            for i in indices:
                n = len(plans[i].block.params)
                extra = pending[i][1]
                news = states[start : start + n]
                news = [{**state, **more} for state, more in zip(news, extra)] if extra else news
                pending[i] = (None, news, steps[start : start + n])
                start += n
        return [(states, steps) for _, states, steps in pending]

    def _before_base(
        self, plan: _Plan, applying: bool
    ) -> tuple[list[torch.Tensor] | None, list[dict[str, Any]], list[torch.Tensor]]:
        """P applied: (the directions the base rule still has to take, the `Graft`'s new states, []), or
        where the base rule ran already (position "direction", in `_plan`): (None, states, steps)."""
        block, params = plan.block, plan.block.params
        if block.placement is None:
            return plan.grads, [], []
        if not applying:  # fitted but not applied yet (warm-up): the base rule alone
            if self._position == "gradient":
                return plan.grads, [], []
            return None, plan.states, plan.sources
        P = self._formed(block)
        if self._position == "gradient":
            directions = _contiguous(self._unview(block, P @ plan.X, plan.shapes))
            if self._graft is None:
                return directions, [], []
            grafts, directions = self._grafted(params, plan.grads, directions)
            return directions, grafts, []
        directions = _contiguous(self._unview(block, P @ plan.u, plan.shapes))
        if self._graft is None:
            return None, plan.states, directions
        grafts, directions = self._grafted(params, plan.sources, directions)
        return None, [{**state, **graft} for state, graft in zip(plan.states, grafts)], directions

    def _proposals(
        self,
        plans: list[_Plan],
        ok: Flag,
        directions: list[tuple[list[dict[str, Any]], list[torch.Tensor]]],
        factor: torch.Tensor | None = None,
    ) -> list[tuple[list[dict[str, Any]], list[torch.Tensor], Flag]]:
        """Per plan: the new parameters θ − lr·factor·s (in the compute dtype) and whether they may be
        committed (`ok` and all finite), with the states passed through; computed per param group for
        all its blocks at once."""
        out: list[Any] = [None] * len(plans)
        by_group: dict[int, list[int]] = {}
        for i, plan in enumerate(plans):
            by_group.setdefault(id(plan.group), []).append(i)
        for indices in by_group.values():
            lr = plans[indices[0]].group["lr"]
            params = [p for i in indices for p in plans[i].block.params]
            steps = [s for i in indices for s in directions[i][1]]
            if factor is not None:  # factor·s first: a factor of 1 leaves s, and the step, unchanged
                steps = [s * factor for s in steps]
            bases = [_cast(p, s.dtype) for p, s in zip(params, steps)]
            if isinstance(lr, torch.Tensor):
                news = [b - lr * s for b, s in zip(bases, steps)]
            else:  # one rounding, as torch.optim's p.add_(s, alpha=-lr): the base rule alone is bit for bit
                news = torch._foreach_add(bases, steps, alpha=-lr)
            finite = finite_each(news)
            everywhere = self._certain(finite.all())
            start = 0
            for i in indices:
                n = len(plans[i].block.params)
                fine = ok if everywhere else _and(ok, finite[start : start + n].all())
                out[i] = (directions[i][0], news[start : start + n], fine)
                start += n
        return out

    def _commit(
        self, plan: _Plan, states: list[dict[str, Any]], news: list[torch.Tensor], fine: torch.Tensor
    ) -> None:
        """Where `fine`: the new parameters (rounded once to each parameter's dtype) and base-rule states
        for the parameters with a gradient, and the cache; else everything stays and the block's skip
        counter goes up."""
        block, sure = plan.block, self._certain(fine)
        for p, is_active, new_state, new in zip(block.params, plan.active, states, news):
            if not is_active:
                continue
            state = self.state[p]
            if sure:
                p.copy_(_cast(new, p.dtype))
                state.update(new_state)
                continue
            torch.where(fine, _cast(new, p.dtype), p, out=p)
            for key, value in new_state.items():
                state[key] = torch.where(fine, value, state[key])
        anchor = self.state[block.params[0]]
        if not sure:
            writable(anchor["skipped"]).add_(writable((~fine).long()))
        if block.placement is not None and self._objective.reads_cache:
            pre = anchor["preconditioner"]
            if sure:
                u = plan.u
            else:
                previous = pre["cache"]["u"] if "u" in pre["cache"] else torch.zeros_like(plan.u)
                u = torch.where(fine, plan.u, previous)
            pre["cache"] = {"u": u, "lr": plan.group["lr"]}

    def _fit(
        self, block: _Block, meta: Structure | RelativeGradient | Statistics, ok: Flag
    ) -> tuple[torch.Tensor | None, Callable[..., None]]:
        """The fitter's step on φ's leaves, undone exactly where not `ok` or not finite (see the module
        docstring).  A fit that proposes its new leaves (`Fit.propose`) has them put in only where they
        are kept, so its leaves need no snapshot; one that steps in place is undone from a snapshot.

        Returns:
            1 if the fit was rolled back, else 0 (a device integer), or None where it is known on the host
            that it was kept; and a function that undoes the fit (for ``nonfinite="raise"``, when a later
            part of the step fails).
        """
        pre = self.state[block.params[0]]["preconditioner"]
        leaves, state = pre["phi"], block.fitter.tensors()
        saved = [t.clone() for t in state]
        values, saved_leaves = self._fitted(block.fitter, meta, ok, leaves)
        after = block.fitter.tensors()
        fine = _and(ok, all_finite((leaves if values is None else values) + after))
        known = {id(t) for t in state}
        created = [writable(t) for t in after if id(t) not in known]
        kept, saved = (state, saved) if values is not None else (leaves + state, saved_leaves + saved)
        sure, olds = self._certain(fine), []
        if values is not None:  # the old leaves stay in their storage, which `olds` keeps for undo
            chosen = values if sure else [torch.where(fine, v, leaf) for v, leaf in zip(values, leaves)]
            olds = [replace(leaf, v) for leaf, v in zip(leaves, chosen)]
        rolled_back = None
        if not sure:  # on the CPU a kept fit needs no select
            for t, s in zip(map(writable, kept), map(writable, saved)):
                torch.where(fine, t, s, out=t)
            for t in created:  # state the step created: back to zeros, a torch optimizer's fresh state
                torch.where(fine, t, torch.zeros_like(t), out=t)
            rolled_back = _and(ok, ~fine).long()
            writable(pre["meta_skipped"]).add_(writable(rolled_back))
        failed = block.fitter.failed()
        if failed is not None:  # a fit that kept (part of) φ itself: counted as a rolled-back meta-step
            failed = (failed if sure else failed & fine).long()
            writable(pre["meta_skipped"]).add_(writable(failed))
            rolled_back = failed if rolled_back is None else rolled_back + failed

        def undo(keep: torch.Tensor | None = None) -> None:
            """Put the fit back: all of it, uncounted (``keep`` None: a raising step changes nothing), or
            where ``keep`` (a device boolean) is false, counted as a rolled-back meta-step unless it was
            already (a skipped step's new parameters were not finite: its fit goes too)."""
            if keep is None:
                for leaf, old in zip(leaves, olds):
                    replace(leaf, old)
                for t, s in zip(kept, saved):
                    writable(t).copy_(writable(s))
                for t in created:
                    t.zero_()
                if rolled_back is not None:
                    writable(pre["meta_skipped"]).sub_(writable(rolled_back))
                return
            for leaf, old in zip(leaves, olds):
                torch.where(keep, leaf, old, out=writable(leaf))
            for t, s in zip(map(writable, kept), map(writable, saved)):
                torch.where(keep, t, s, out=t)
            for t in created:
                torch.where(keep, t, torch.zeros_like(t), out=writable(t))
            writable(pre["meta_skipped"]).add_(writable(_and(fine, ~keep).long()))  # if it was kept

        return rolled_back, undo

    @staticmethod
    def _fitted(
        fit: Fit, meta: Structure | RelativeGradient | Statistics, ok: Flag, leaves: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor]]:
        """The fit's proposed new leaves, or None where it stepped in place, with then a snapshot of
        the leaves from before the step (else no snapshot); the meta-gradient is zeroed where not `ok`."""
        if isinstance(meta, Statistics):  # not zeroed where not `ok`: the whole fit is rolled back there
            values = fit.propose_statistics(meta)
            return (leaves if values is None else values), []
        relative = isinstance(meta, RelativeGradient)
        direction = meta.R if relative else meta
        if ok is not True:  # zero meta-gradients where the step's gradients are bad
            direction = pytree.tree_map(lambda g: torch.where(ok, g, torch.zeros_like(g)), direction)
        if relative:
            values = fit.propose_relative(direction, meta.scale)
        else:
            values = fit.propose(pytree.tree_leaves(direction))
        if values is not None:
            return values, []
        saved = [t.clone() for t in leaves]
        if relative:  # a fit that steps in place takes the relative gradient itself
            fit.step_relative(direction if meta.scale == 1 else scale(direction, meta.scale))
        else:
            fit.step(pytree.tree_leaves(direction))
        return None, saved


def _layout(state_dict: dict[str, Any]) -> str:
    """A digest of where a state dict's per-parameter state has entries (every key path, with its
    keys' types; not the values), parameter by parameter in the param groups' order."""
    paths: list[str] = []

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, entry in value.items():
                visit(f"{prefix}/{key!r}", entry)
        elif isinstance(value, (list, tuple)):
            for i, entry in enumerate(value):
                visit(f"{prefix}[{i}]", entry)
        else:
            paths.append(prefix)

    for n, i in enumerate(i for group in state_dict["param_groups"] for i in group["params"]):
        visit(str(n), state_dict["state"].get(i, {}))
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()


def _own_entries(state_dict: Any) -> dict[str, Any] | None:
    """The optimizer's own entries of a state dict (`Preconditioned.state_dict`): its first param
    group's "precondalg"; for a checkpoint of configuration version 2 (top-level entries), its
    configuration, which `differences` then refuses by its version; None for another optimizer's."""
    if not isinstance(state_dict, dict):
        return None
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and groups and isinstance(groups[0], dict) and "precondalg" in groups[0]:
        return groups[0]["precondalg"]
    return state_dict.get("precondalg")


def _compile_options(choice: Any, nonfinite: str) -> dict[str, Any] | None:
    """`torch.compile`'s keyword arguments for ``compile=choice`` (None: eager), checked."""
    if choice is False:
        return None
    if choice is not True and not isinstance(choice, dict):
        raise TypeError(
            f"Preconditioned: 'compile' must be True, False or a dict of torch.compile keyword arguments; "
            f"got {choice!r}"
        )
    if nonfinite != "skip":
        raise ValueError(
            f"Preconditioned: compile={choice!r} compiles the sync-free step of nonfinite='skip'; "
            f"nonfinite={nonfinite!r} decides on the host (one synchronisation per block), which would break "
            "the compiled graph at each: use nonfinite='skip', or compile=False"
        )
    options = {} if choice is True else dict(choice)
    if options.get("backend", "inductor") == "inductor":
        # Inductor's pattern matcher rewrites add(x, mm(a, b), alpha=c) and addmm(..., alpha, beta) into
        # forms that drop alpha and beta (pytorch/pytorch#167313, #196577; on the CPU in torch 2.13,
        # x.add(A @ y, alpha=-lr) comes out as x + A @ y).  The step has such adds (θ − lr·P g, the base
        # rules' moving averages of P g, PSGD's Lie-algebra step), so the matcher is switched off, unless
        # the caller's own inductor options say otherwise.  A `mode` is spelled out as its options, since
        # torch.compile takes one or the other.
        mode = options.pop("mode", None)
        preset = torch._inductor.list_mode_options(mode) if mode else {}
        options["options"] = {**preset, "pattern_matcher": False, **options.get("options", {})}
    return options


def _unused_message(key: str, base: BaseRule) -> str:
    users = [name for name, rule in BASE_RULES.items() if key in rule.hyperparameters]
    reads = sorted(base.hyperparameters) or "only lr and weight_decay"
    bases = " or ".join(repr(u) for u in users)
    return (
        f"Preconditioned: '{key}' is not used by base '{base.name}' (which reads {reads}); it is read by "
        f"base {bases}. Remove '{key}' or choose one of those bases"
    )
