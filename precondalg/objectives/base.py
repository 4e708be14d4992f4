"""The objective interface: what an objective sees of a step and of each block."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.func import functional_call, vjp
from torch.nn.parallel import DistributedDataParallel

from precondalg._tensors import is_sharded
from precondalg.structures import Structure

__all__ = [
    "BlockContext",
    "refuse_sharded",
    "BlockwiseObjective",
    "Evaluation",
    "Objective",
    "RelativeGradient",
    "closure_evaluation",
    "kept_buffers",
    "form_vjp",
    "fresh_buffers",
    "functional_outputs",
    "lookahead_gradients",
    "loss_gradients",
    "parameter_names",
    "run_closure",
    "set_grads",
    "watch_gradients",
]


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """What an objective sees of one block at one step.

    Attributes:
        phi: the current learned structure φ.
        form: the map φ ↦ P_φ the objective differentiates.
        grad: (n, k) the block's current gradient g_t in the placement's space.
        cache: what the previous step left (``u``: (n, k) the vector P was applied to; ``lr``: the
            learning rate α it was applied with); empty on the first step, and always for an objective
            whose `Objective.reads_cache` is False.
        extras: per-step quantities the objective's `evaluate` produced, placed like `grad` (e.g.
            ``v`` and ``h`` for the PSGD criteria).
        params: the block's parameters.
        lookahead: (n, k) the vector P_φ is applied to at this step (the placed gradient for position
            "gradient", the base rule's direction for "direction").
        unview: maps an (n, k) matrix back to tensors of the parameters' shapes.
        view: maps tensors of the parameters' shapes to the (n, k) matrix (the placement's view, in
            φ's dtype).
        lr: the learning rate α of this step.
        form_vjp: the family's closed-form VJP of φ ↦ form(φ) @ u (`Family.hyper_vjp`), or None.
        relative: the fitter steps on φ's matrix Lie group (`precondalg.fitters.LieGroup`), so the
            objective may return a `RelativeGradient` in closed form instead of ∂/∂φ.
        statistics: the fitter sets φ in closed form from statistics (`precondalg.fitters.ClosedForm`),
            so the objective returns a `precondalg.objectives.Statistics`.
        power: how P depends on φ (`precondalg.families.Family.power`), for `Statistics`.
    """

    phi: Structure
    form: Callable[[Structure], Structure]
    grad: torch.Tensor
    cache: dict[str, Any]
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    params: Sequence[torch.Tensor] = ()
    lookahead: torch.Tensor | None = None
    unview: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    view: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    lr: float = 0.0
    form_vjp: Callable[[Structure, torch.Tensor, torch.Tensor], Structure] | None = None
    relative: bool = False
    statistics: bool = False
    power: int | None = None


@dataclasses.dataclass(frozen=True)
class RelativeGradient:
    """An objective's answer in the group's own coordinates: the relative gradient R (an element of
    φ's Lie algebra, as `precondalg.structures.relative_gradient` returns it) instead of the Euclidean
    ∂/∂φ — for a fitter that steps on the group (asked for by `BlockContext.relative`).

    Attributes:
        R: the relative gradient up to `scale`, e.g. a `KroneckerSum` for a Kronecker φ.
        scale: the relative gradient is scale·R: a constant factor left out of R (PSGD's 2, Eq. 18),
            which a normalised step folds into its step size instead of a pass over R.
    """

    R: Structure
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What an objective's `evaluate` found before the blocks.

    Attributes:
        loss: the closure's loss, or None.
        per_param: name → {parameter: tensor of its shape} (placed for each block into
            `BlockContext.extras`).
        data: anything else the objective needs in `meta_grads` (e.g. `Proximal`'s batches).
        local: what the objective computed from this process's batch alone, which a data-parallel
            optimizer averages across its process group before the blocks: names of `per_param`
            entries (PSGD Newton's ``h``), and "grad" for the parameters' ``.grad`` when the objective
            set them itself from the closure's loss (gradients a ``backward`` produced are taken as
            synchronised: `torch.nn.parallel.DistributedDataParallel` averages them).
    """

    loss: Any = None
    per_param: dict[str, dict[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    local: tuple[str, ...] = ()

    def of(self, name: str, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The per-parameter tensors called `name`, for these parameters."""
        return [self.per_param[name][p] for p in params]


class Objective(abc.ABC):
    """Abstract base of meta-objectives.

    Once per step the optimizer calls `evaluate` (which may run the closure and must leave every
    parameter's ``.grad`` set), then `meta_grads` once for all its preconditioned blocks.

    `requires` names the operations of the preconditioner P_φ the objective uses beyond ``P @ X``
    (e.g. ``("solve",)``); the optimizer checks them when it builds each block, so that a structure
    without them is refused at construction with an error naming the operation.
    """

    requires: ClassVar[tuple[str, ...]] = ()
    reads_cache: ClassVar[bool] = True
    """Whether `meta_grads` reads `BlockContext.cache` (the previous step's u and lr); an objective that
    never does (the PSGD criteria) sets it False, and the optimizer then keeps no cache (n·k values
    per block)."""
    gives_statistics: ClassVar[bool] = False
    """Whether `meta_grads` answers a `precondalg.objectives.Statistics` where the context asks for one
    (`BlockContext.statistics`), for a closed-form fitter."""
    gives_gradients: ClassVar[bool] = True
    """Whether it answers with a gradient (or a relative gradient) for a fitter that steps: False for
    the objectives that only give statistics, which need a closed-form fitter."""
    sets_eigenbasis: ClassVar[bool] = False
    """Whether its `Statistics` can set an `Eigenbasis` part in closed form (two statistics, the
    Kronecker eigenbasis; K-FAC's `LayerStatistics`)."""

    @abc.abstractmethod
    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        """Run what the step needs before the blocks.

        Args:
            params: every parameter of the optimizer, in order.
            closure: the closure given to ``step`` (or None).
            generator: the optimizer's own random generator (its state is checkpointed).
            **inputs: the keyword arguments given to ``step`` (objective-specific).
        """

    def check_block(self, params: Sequence[torch.Tensor], placement: Any) -> None:  # noqa: B027
        """Refuse, at construction, a block this objective cannot serve (by default every block is
        served); the optimizer calls it for each preconditioned block.

        Raises:
            ValueError: naming the block's parameters and what was expected.
        """

    def with_weight_decay(
        self, extras: dict[str, torch.Tensor], weight_decay: float, theta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """A block's extras for the loss plus the optimizer's L2 term (wd/2)‖θ‖², whose gradient the
        optimizer adds to the block's gradient: by default unchanged (the extras do not depend on the
        loss).  `theta`: (n, k) the block's parameters, placed like the extras."""
        return extras

    def evaluate_gradients(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        """What a step that does not fit φ needs (``update_probability`` < 1 skipped the fit): the
        gradients only, set in every ``.grad``, from the closure in either convention (see
        `run_closure`); the objective's per-step inputs are not used.  Objectives whose gradients come
        from elsewhere override it.  The inputs are checked as on a fitting step (`check_inputs`): a
        misspelt one is refused on every step, not only on the steps that fit."""
        self.check_inputs(inputs)
        return closure_evaluation(closure, params, type(self).__name__)

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Refuse per-step keyword inputs the objective does not take (default: it takes none).

        Raises:
            TypeError: an input the objective does not take, or one of the wrong kind.
        """
        reject_inputs(type(self).__name__, inputs)

    @abc.abstractmethod
    def meta_grads(
        self, blocks: list[BlockContext], evaluation: Evaluation
    ) -> list[Structure | RelativeGradient | None]:
        """For each block, the gradient of the meta-loss with respect to its φ (same pytree type), a
        `RelativeGradient` where the block's context asks for one and the objective has it, or None
        where there is none this step."""

    def local_answers(self) -> bool:
        """Whether `meta_grads` reads this process's batch beyond the (synchronised) gradients and
        `Evaluation.local`'s averaged quantities — a lookahead's loss, layer statistics — so that a
        data-parallel optimizer averages its answers across the process group (default: False).  The
        answers must then be linear in the batch's per-example terms (means), as gradients are."""
        return False


class BlockwiseObjective(Objective):
    """An objective whose meta-loss is a sum over blocks: `meta_grad` one block at a time."""

    @abc.abstractmethod
    def meta_grad(self, ctx: BlockContext) -> Structure | RelativeGradient | None:
        """The gradient of this block's meta-loss with respect to its φ (or its `RelativeGradient`),
        or None."""

    def meta_grads(
        self, blocks: list[BlockContext], evaluation: Evaluation
    ) -> list[Structure | RelativeGradient | None]:
        return [self.meta_grad(ctx) for ctx in blocks]


@contextlib.contextmanager
def watch_gradients(params: Sequence[torch.Tensor]) -> Iterator[list[bool]]:
    """Within the block, record whether any of `params` got a new or changed ``.grad`` (a ``backward``
    call, or gradients set by hand).

    Yields a list that is non-empty after the block if one did (compared by identity and version
    counter; the old gradients are held meanwhile, so an identity cannot be reused).
    """
    before = [(p.grad, None if p.grad is None else p.grad._version) for p in params]
    changed: list[bool] = []
    yield changed
    for p, (grad, version) in zip(params, before):
        if p.grad is not None and (p.grad is not grad or p.grad._version != version):
            changed.append(True)
            return


_CLOSURE_CONVENTIONS = (
    "Two closure conventions are accepted: torch.optim's (the closure calls loss.backward() and returns "
    "the loss) and PSGD's (the closure returns the loss and calls nothing; the optimizer then sets each "
    "parameter's .grad to the gradient of that loss)."
)


def run_closure(closure: Callable[[], Any] | None, params: Sequence[torch.Tensor], owner: str) -> Any:
    """Evaluate the closure so that every parameter's ``.grad`` holds the gradient of its loss.

    Both conventions are accepted: torch.optim's (the closure calls ``backward``, or sets the
    gradients otherwise, and returns the loss) and PSGD's (the closure only returns the loss): then
    ``.grad`` is set to the loss's gradient (replaced, not accumulated; None for parameters the loss
    does not use).

    Args:
        closure: the closure given to ``step``, or None (then nothing runs).
        params: the optimizer's parameters.
        owner: who asks, for messages.

    Returns:
        The closure's return value, or None without a closure.

    Raises:
        ValueError: the closure neither called ``backward`` on a loss reaching the parameters nor
            returned a loss that requires grad.
    """
    return _run(closure, params, owner)[0]


def closure_evaluation(
    closure: Callable[[], Any] | None, params: Sequence[torch.Tensor], owner: str, **fields: Any
) -> Evaluation:
    """`run_closure`'s loss as an `Evaluation` (with `fields`), whose `Evaluation.local` names "grad"
    when the gradients were set here from the returned loss (PSGD's convention), not by a backward."""
    loss, here = _run(closure, params, owner)
    return Evaluation(loss, local=("grad",) if here else (), **fields)


def _run(closure: Callable[[], Any] | None, params: Sequence[torch.Tensor], owner: str) -> tuple[Any, bool]:
    """`run_closure`, and whether it set the gradients itself."""
    if closure is None:
        return None, False
    with torch.enable_grad(), watch_gradients(params) as called:
        loss = closure()
    if not called:
        set_grads(params, loss_gradients(loss, params, owner, create_graph=False))
    return loss, not called


def loss_gradients(
    loss: Any, params: Sequence[torch.Tensor], owner: str, create_graph: bool
) -> list[torch.Tensor | None]:
    """∂loss/∂p for each parameter (None where the loss does not use it), for a closure in PSGD's
    convention (it returned the loss without calling backward).

    Raises:
        ValueError: the loss is not a tensor that requires grad, or its graph was already used.
    """
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        got = "a tensor that does not require grad" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"{owner}: the closure called no backward() that reached the optimizer's parameters and "
            f"returned {got}, which cannot be differentiated. {_CLOSURE_CONVENTIONS}"
        )
    if any(is_sharded(p) for p in params):
        raise ValueError(
            f"{owner}: the closure returned the loss without calling backward(), and the optimizer cannot "
            "differentiate it itself: FSDP2's sharded parameters get their gradients from backward() "
            "alone (its hooks gather the parameters and reduce-scatter the gradients). Call "
            "loss.backward() in the closure and return the loss (torch.optim's convention)"
        )
    live = [p for p in params if p.requires_grad]
    with torch.enable_grad():
        try:
            grads = torch.autograd.grad(loss, live, create_graph=create_graph, allow_unused=True)
        except RuntimeError as err:
            if "backward through the graph a second time" not in str(err):
                raise
            raise ValueError(
                f"{owner}: the closure's loss has a graph that was already differentiated (a backward() "
                f"that reached none of the optimizer's parameters?): {err}. {_CLOSURE_CONVENTIONS}"
            ) from err
    found = dict(zip(live, grads))
    return [found.get(p) for p in params]


def set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """p.grad ← g (detached), None where g is None (such parameters are skipped by the step)."""
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()


def fresh_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the model's buffers for one `torch.func.functional_call`.

    Call it inside the function a torch.func transform differentiates: a module in training mode
    updates its buffers (BatchNorm's running statistics) in place, which torch.func refuses on
    captured tensors, and which must not leak into the real model from a lookahead.
    """
    return {name: b.clone() for name, b in model.named_buffers()}


def parameter_names(
    model: torch.nn.Module, params: Sequence[torch.Tensor], owner: str
) -> dict[torch.Tensor, str]:
    """Each parameter's name in `model`, for `torch.func.functional_call`.

    Raises:
        ValueError: a parameter the model does not own (naming `owner` and the shapes).
    """
    names = {p: name for name, p in wrapped(model).named_parameters()}
    missing = [tuple(p.shape) for p in params if p not in names]
    if missing:
        raise ValueError(f"{owner}: the optimizer holds parameters the model does not own (shapes {missing})")
    return names


def functional_outputs(model: torch.nn.Module, state: dict[str, torch.Tensor], inputs: Any) -> torch.Tensor:
    """``model(inputs)`` with the parameters in `state` (name → tensor, as `parameter_names` names them;
    the others as they are) and fresh copies of the buffers (see `fresh_buffers`), by
    `torch.func.functional_call`."""
    model = wrapped(model)
    return functional_call(model, {**state, **fresh_buffers(model)}, (inputs,))


def wrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module a `torch.nn.parallel.DistributedDataParallel` wraps (its forward, without the
    gradient synchronisation that torch.func's functional calls cannot go through), else `model`."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def refuse_sharded(params: Sequence[torch.Tensor], owner: str, why: str, instead: str) -> None:
    """Refuse, at construction, FSDP2's sharded parameters (`DTensor`) for what cannot serve them.

    Raises:
        ValueError: naming `owner`, the shapes, `why` and what to do `instead`.
    """
    if any(is_sharded(p) for p in params):
        shapes = [tuple(p.shape) for p in params]
        raise ValueError(
            f"{owner}: the parameters of shapes {shapes} are sharded by FSDP2 (fully_shard), and {why}. "
            f"{instead}"
        )


def form_vjp(ctx: BlockContext, u: torch.Tensor, cotangent: torch.Tensor) -> Structure:
    """The VJP of φ ↦ P_φ u with this cotangent (the family's closed form where it has one).

    Args:
        ctx: the block's context (φ, the form, the family's VJP).
        u: (n, k) the vector P_φ is applied to.
        cotangent: (n, k) the cotangent of P_φ u.
    """
    if ctx.form_vjp is not None:
        return ctx.form_vjp(ctx.phi, u, cotangent)
    _, pullback = vjp(lambda phi: ctx.form(phi) @ u, ctx.phi)
    (grad,) = pullback(cotangent)
    return grad


def lookahead_gradients(
    blocks: Sequence[BlockContext],
    closure: Callable[[], Any],
    owner: str,
    rates: Sequence[float],
    model: torch.nn.Module | None = None,
) -> list[torch.Tensor]:
    """The placed gradients of the closure's loss at the lookahead θ − rate·P_φ u of every block at once
    (u the block's `BlockContext.lookahead`; the closure in either convention, `run_closure`).  θ and
    its gradients, and `model`'s buffers where it is given, come back exactly, even if the closure
    raised.

    Returns:
        Per block (n, k), zeros for parameters the loss does not reach.
    """
    params = [p for ctx in blocks for p in ctx.params]
    saved = [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in params]
    with kept_buffers(model):
        try:
            with torch.no_grad():
                for ctx, rate in zip(blocks, rates):
                    for p, step in zip(ctx.params, ctx.unview(ctx.form(ctx.phi) @ ctx.lookahead)):
                        p.sub_(rate * step.to(p.dtype))
                for p in params:
                    p.grad = None
            run_closure(closure, params, owner)
            return [
                ctx.view([torch.zeros_like(p) if p.grad is None else p.grad for p in ctx.params])
                for ctx in blocks
            ]
        finally:
            with torch.no_grad():
                for p, (value, g) in zip(params, saved):
                    p.copy_(value)
                    p.grad = g


@contextlib.contextmanager
def kept_buffers(model: torch.nn.Module | None) -> Iterator[None]:
    """Within the block the model's buffers may change (a forward pass in training mode updates
    BatchNorm's running statistics); after it they are as they were (nothing is kept for None)."""
    saved = [] if model is None else [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def reject_inputs(owner: str, inputs: dict[str, Any]) -> None:
    """Objectives that take no per-step inputs say so clearly."""
    if inputs:
        raise TypeError(f"{owner}: step() takes no keyword inputs for this objective; got {sorted(inputs)}")
