"""The choices given to `precondalg.optim.Preconditioned`: a picklable per-shape choice (`by_ndim`), and the
construction-time checks that refuse a choice of the wrong kind with the fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from precondalg import families
from precondalg._checks import check_instance, check_number
from precondalg.families import Family
from precondalg.fitters import Fitter
from precondalg.objectives import Objective
from precondalg.placement import Placement

__all__ = ["ByNdim", "Every", "by_ndim", "call_choice", "check_choices", "every"]


_FACTORIES = {getattr(families, name) for name in families.__all__ if name != "Family"}


def _misused(value: Any, prefix: str = "") -> str | None:
    """How to write a choice given as a class or as an uncalled family factory (None if it is neither):
    `prefix` starts the fix, e.g. "structure="."""
    if isinstance(value, type):
        return f"the class {value.__name__} itself: write {prefix}{value.__name__}(...)"
    if any(value is factory for factory in _FACTORIES):  # by identity: a value may be unhashable
        return f"the factory {value.__name__} itself: call it, {prefix}{value.__name__}(...)"
    return None


@dataclasses.dataclass(frozen=True)
class ByNdim:
    """A picklable per-shape choice: ``choices[len(shape)]``, else `default` (see `by_ndim`)."""

    choices: tuple[tuple[int, Any], ...]
    default: Any = None

    def __call__(self, shape: tuple[int, ...]) -> Any:
        return dict(self.choices).get(len(shape), self.default)


def by_ndim(choices: dict[int, Any], default: Any = None) -> ByNdim:
    """A choice of placement or structure by the parameter's number of dimensions that, unlike a
    lambda, survives `pickle` of the optimizer.

    Args:
        choices: ndim → placement (or family), e.g. ``{2: InputSide(), 4: Spatial()}``.
        default: for the other ndims (None: for a placement, not preconditioned).

    Raises:
        TypeError: not a dict from ndims to placements or families (None allowed), or a class or an
            uncalled family factory among them.

    Examples:
        >>> from precondalg.placement import InputSide
        >>> choose = by_ndim({2: InputSide()})
        >>> choose((3, 4)), choose((4,))
        (InputSide(), None)
    """
    if not isinstance(choices, dict) or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in choices
    ):
        raise TypeError(
            f"by_ndim: 'choices' must be a dict from ndim (an int >= 0) to a choice; got {choices!r}"
        )
    for where, value in [*((f"ndim {k}", v) for k, v in choices.items()), ("default", default)]:
        fix = _misused(value)
        if fix is not None:
            raise TypeError(f"by_ndim: the choice for {where} is {fix}")
        if not (value is None or isinstance(value, (Placement, Family))):
            raise TypeError(
                f"by_ndim: the choice for {where} must be a Placement, a Family or None; got "
                f"{type(value).__name__}"
            )
    return ByNdim(tuple(sorted(choices.items())), default)


@dataclasses.dataclass(frozen=True)
class Every:
    """A picklable ``update_probability`` that fits every k-th step (see `every`)."""

    k: int

    def __post_init__(self) -> None:
        check_number("every", "k", self.k, 1, integer=True)

    def __call__(self, steps: int) -> float:
        return 1.0 if steps % self.k == 0 else 0.0


def every(k: int) -> Every:
    """``update_probability`` for a fit every k steps, on the steps 0, k, 2k, … (APO's meta-update
    interval K, Bae et al. 2022, Algorithm 1): deterministic, counted by the optimizer (its `steps`, in
    the checkpoint), and nothing is drawn.

    Raises:
        TypeError, ValueError: k not an int ≥ 1.

    Examples:
        >>> tuple(every(3)(t) for t in range(5))
        (1.0, 0.0, 0.0, 1.0, 0.0)
    """
    return Every(k)


def check_choices(structure: Any, placement: Any, objective: Any, fitter: Any) -> None:
    """Refuse, at construction, a choice of the wrong kind, naming the argument and the fix."""
    owner = "Preconditioned"
    for name, value in (("structure", structure), ("placement", placement)):
        fix = _misused(value, f"{name}=")
        if fix is not None:
            raise TypeError(f"{owner}: '{name}' is {fix}")
    if not (isinstance(structure, Family) or callable(structure)):
        raise TypeError(
            f"{owner}: 'structure' must be a precondalg.families.Family (e.g. structure=dense_gram()) or "
            f"a callable shape -> Family; got {structure!r}"
        )
    if not (placement is None or isinstance(placement, Placement) or callable(placement)):
        raise TypeError(
            f"{owner}: 'placement' must be a Placement, a callable shape -> Placement | None, or None; "
            f"got {placement!r}"
        )
    if objective is not None:
        check_instance(owner, "objective", objective, Objective, "objective=Fisher(damping=1e-3)")
    if fitter is not None:
        optimizer_class = isinstance(fitter, type) and issubclass(fitter, torch.optim.Optimizer)
        if optimizer_class or isinstance(fitter, torch.optim.Optimizer):
            cls = fitter if optimizer_class else type(fitter)
            raise TypeError(
                f"{owner}: 'fitter' must be a precondalg.fitters.Fitter; got the torch optimizer "
                f"{'class ' if optimizer_class else ''}{cls.__name__}: wrap the class, "
                f"fitter=TorchOptimizer(torch.optim.{cls.__name__}, lr=...)"
            )
        check_instance(owner, "fitter", fitter, Fitter, "fitter=LieGroup(lr=0.01)")


def call_choice(argument: str, choice: Callable[[tuple[int, ...]], Any], shape: tuple[int, ...]) -> Any:
    """Call a per-shape choice, turning a wrong signature into an error that names the argument."""
    try:
        return choice(shape)
    except TypeError as err:
        name = getattr(choice, "__name__", type(choice).__name__)
        raise TypeError(
            f"Preconditioned: '{argument}' was called as {name}({shape}) for a parameter of that shape and "
            f"raised: {err}. It must be a callable shape -> choice (if {name} makes one when called, call "
            f"it: {argument}={name}(...))"
        ) from err
