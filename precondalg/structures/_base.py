"""The abstract base of every structured matrix, and the pytree machinery they share.

A structure is a small, final, immutable class (a frozen dataclass) registered as a torch pytree:
tensor fields (and nested structures) are the pytree children, integers, shapes and permutations are
static metadata.  `torch.func.grad`, `vjp`, `jvp` and `vmap` therefore take a structure as input and
return one of the same type.

Public constructors validate their arguments; unflattening (which `torch.func` does with gradients,
tangents and `vmap` dimension specs as leaves) bypasses the constructor and validates nothing.

Tracing (`torch.compile`): a structure is a frozen dataclass, so when one meets a tensor in a graph
operation (``P @ u``) Dynamo rebuilds it around `torch.fx.Proxy` fields, ``cls(*field_values)``, and
records it in the graph as a call ``cls(**fields)``, which runs on FakeTensors (fake propagation),
FunctionalTensors (AOT autograd) and finally real tensors.  `register_structure` wraps every
constructor for this: given a Proxy in a tensor or structure argument it only stores the fields
(there is no shape to check, and the recorded call validates the real values when the graph runs),
and a variadic constructor (``Kronecker(*factors)``) also accepts its tuple field by keyword
(``factors=(A, B)``).
Every other call validates exactly as written, including FakeTensors and tensors with symbolic shapes.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import torch
import torch.fx
import torch.utils._pytree as pytree

__all__ = ["Cost", "NotInvertibleError", "Structure", "static_field"]

_S = TypeVar("_S", bound=type)


class NotInvertibleError(ValueError):
    """Raised by `solve` (and `inverse`) on a structure that has no inverse."""


@dataclasses.dataclass(frozen=True)
class Cost:
    """Memory and arithmetic cost of one structure.

    Attributes:
        stored: number of floating-point values held in memory by the structure's leaves.
        matvec: multiply-adds of `A @ x` for one vector x (one multiply-add = 2 flops).
        solve: multiply-adds of `A.solve(x)` for one vector x, or None where there is no solve.
    """

    stored: int
    matvec: int
    solve: int | None


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static pytree metadata (not a leaf)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def register_structure(cls: _S) -> _S:
    """Make `cls` a frozen dataclass and register it as a torch pytree node.

    Fields marked with `static_field()` go into the pytree context (compared with `==`, so they must
    be hashable Python data); all other fields are children.  Unflattening does not run `__init__`.
    A class may define its own ``__init__(self, *parts)`` only if it has a single field (the tuple of
    parts).  The constructor is wrapped for tracing (see `_traceable_init` and the module docstring).
    """
    variadic = "__init__" in cls.__dict__
    cls = dataclasses.dataclass(frozen=True, eq=False, init=not variadic)(cls)
    fields = dataclasses.fields(cls)
    children = tuple(f.name for f in fields if not f.metadata.get("static"))
    static = tuple(f.name for f in fields if f.metadata.get("static"))
    if variadic:
        kinds = [p.kind.name for p in inspect.signature(cls.__init__).parameters.values()]
        if len(fields) != 1 or kinds != ["POSITIONAL_OR_KEYWORD", "VAR_POSITIONAL"]:
            raise TypeError(
                f"register_structure: {cls.__name__} defines __init__, so it must be __init__(self, *parts) "
                f"with a single field; got fields {[f.name for f in fields]}"
            )
    cls.__init__ = _traceable_init(cls.__init__, tuple(f.name for f in fields), children, variadic)
    cls._children = children

    def flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...]]:
        return [getattr(obj, n) for n in children], tuple(getattr(obj, n) for n in static)

    def flatten_with_keys(obj: Any) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
        leaves, context = flatten(obj)
        return [(pytree.GetAttrKey(n), v) for n, v in zip(children, leaves)], context

    def unflatten(values: Any, context: tuple[Any, ...]) -> Any:
        obj = object.__new__(cls)
        for name, value in zip(children, values):
            object.__setattr__(obj, name, value)
        for name, value in zip(static, context):
            object.__setattr__(obj, name, value)
        return obj

    pytree.register_pytree_node(
        cls,
        flatten,
        unflatten,
        serialized_type_name=f"precondalg.{cls.__name__}",
        flatten_with_keys_fn=flatten_with_keys,
    )
    return cls


def _holds_proxy(value: Any) -> bool:
    """Whether a constructor argument holds a `torch.fx.Proxy` (the symbolic stand-in of a tensor,
    which has no shape or dtype to check): the argument itself, a structure's leaves, or a tuple/list
    of such arguments."""
    if isinstance(value, torch.Tensor):  # the common case first: a tensor is never a Proxy
        return False
    if isinstance(value, torch.fx.Proxy):
        return True
    if isinstance(value, Structure):
        return any(isinstance(leaf, torch.fx.Proxy) for leaf in _leaves(value))
    if isinstance(value, (tuple, list)):
        return any(_holds_proxy(v) for v in value)
    return False


def _leaves(A: Structure) -> Iterator[Any]:
    """A structure's leaves in pytree order, by its fields (faster than `pytree.tree_leaves`, which
    goes through the generic registry: this runs in every constructor)."""
    for name in type(A)._children:
        value = getattr(A, name)
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, Structure):
                yield from _leaves(part)
            else:
                yield part


def _traceable_init(
    init: Callable[..., None], names: tuple[str, ...], children: tuple[str, ...], variadic: bool
) -> Callable[..., None]:
    """Wrap a structure's constructor so that it accepts what tracing passes it.

    - ``cls(field=value)`` for a variadic constructor ``cls(*parts)``: torch.fx records a dataclass
      argument of a graph call as ``cls(**fields)``; it runs as ``cls(*value)``, validated.
    - Children (tensor or structure fields) holding a `torch.fx.Proxy` (Dynamo's
      ``cls(*field_values)`` when a structure meets a tensor in a graph operation, or user code under
      `torch.fx.symbolic_trace`): the fields are stored as given, without validation or normalisation
      (e.g. Triangular's triu), as unflattening does; the graph records the constructor call, which
      validates the real values when it runs.
    - Anything else (real tensors, FakeTensors, functional or batched tensors, symbolic shapes): the
      constructor as written, so bad input is refused exactly as in eager mode.

    Args:
        init: the constructor (dataclass-generated, or the class's own ``__init__(self, *parts)``).
        names: every field's name, in order.
        children: the names of the non-static fields (static fields never hold a Proxy).
        variadic: whether `init` is ``__init__(self, *parts)`` for the single field ``names[0]``.
    """

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if variadic:
            if not args and len(kwargs) == 1 and names[0] in kwargs:  # torch.fx: cls(field=parts)
                args, kwargs = tuple(kwargs[names[0]]), {}
            if not _holds_proxy(args):
                init(self, *args, **kwargs)
                return
            # Dynamo passes the tuple field itself, cls((A, B)); user code passes the parts, cls(A, B).
            fields = {names[0]: args[0] if len(args) == 1 and isinstance(args[0], tuple) else args}
        else:
            fields = dict(zip(names, args)) | kwargs
            if not any(_holds_proxy(fields[n]) for n in children if n in fields):
                init(self, *args, **kwargs)
                return
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    return __init__


class Structure(abc.ABC):
    """Abstract base of all structured matrices.

    A structure represents an m×n matrix without storing it densely.  Subclasses implement the
    abstract methods below; everything else (operators, `solve`, `T`, dtype, device) is shared and
    final.  Algebra (`compose`, `add`, `kron`, `block_diag`, `inverse`, `gram`, `transpose`) lives in
    free functions with dispatch tables, one module per operation.
    """

    _children: ClassVar[tuple[str, ...]] = ()
    """The names of the non-static fields, in pytree order (set by `register_structure`)."""

    # ----- abstract interface (the only methods a subclass defines) -----
    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """(m, n): the shape of the represented matrix."""

    @abc.abstractmethod
    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        """A @ X for X of shape (n, k); returns (m, k)."""

    @abc.abstractmethod
    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        """Aᵀ @ X for X of shape (m, k); returns (n, k)."""

    @abc.abstractmethod
    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        """A⁻¹ X for X of shape (n, k); raises NotInvertibleError where there is no inverse."""

    @abc.abstractmethod
    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        """A⁻ᵀ X for X of shape (n, k); raises NotInvertibleError where there is no inverse."""

    @abc.abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The represented matrix as a dense (m, n) tensor."""

    @abc.abstractmethod
    def cost(self) -> Cost:
        """Stored values and multiply-adds of a matvec and of a solve (see `Cost`)."""

    # ----- shared, final behaviour -----
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the leaves (all leaves share it)."""
        return next(_leaves(self)).dtype

    @property
    def device(self) -> torch.device:
        """The device of the leaves (all leaves share it)."""
        return next(_leaves(self)).device

    @property
    def T(self) -> Structure:
        """The transpose, as a structure (see `precondalg.structures.transpose`)."""
        from precondalg.structures.transpose import transpose

        return transpose(self)

    def solve(self, X: torch.Tensor) -> torch.Tensor:
        """A⁻¹ X for X of shape (n,) or (n, k).

        Raises:
            NotInvertibleError: if the structure has no inverse (non-square, or no solve rule).
        """
        return _apply(self, X, self._solve, self._square_size("solve"), "solve")

    def solve_transpose(self, X: torch.Tensor) -> torch.Tensor:
        """A⁻ᵀ X for X of shape (n,) or (n, k): ``A.T.solve(X)`` without building the transpose.

        Raises:
            NotInvertibleError: if the structure has no inverse (non-square, or no solve rule).
        """
        return _apply(self, X, self._rsolve, self._square_size("solve_transpose"), "solve_transpose")

    def _square_size(self, op: str) -> int:
        """n for an n×n structure; else `NotInvertibleError` naming the operation."""
        m, n = self.shape
        if m != n:
            raise NotInvertibleError(
                f"{type(self).__name__}.{op}: the matrix is {m}×{n}, not square, so it has no inverse"
            )
        return n

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, Structure):
            from precondalg.structures.compose import compose

            return compose(self, other)
        if isinstance(other, torch.Tensor):
            return _apply(self, other, self._mv, self.shape[1], "@")
        return NotImplemented

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            m, n = self.shape
            if other.ndim not in (1, 2) or other.shape[-1] != m:
                # Checked here, before transposing, so that the message shows X's own shape.
                raise ValueError(
                    f"{type(self).__name__} @ (left) X: X must have shape ({m},) or (k, {m}) for a {m}×{n} "
                    f"matrix; got {tuple(other.shape)}"
                )
            if other.ndim == 2:
                return _apply(self, other.mT, self._rmv, self.shape[0], "@ (left)").mT
            return _apply(self, other, self._rmv, self.shape[0], "@ (left)")
        return NotImplemented

    def __add__(self, other: Any) -> Any:
        if isinstance(other, Structure):
            from precondalg.structures.add import add

            return add(self, other)
        return NotImplemented

    def __mul__(self, alpha: Any) -> Any:
        """αA for a Python number or 0-d tensor α (see `precondalg.structures.scale`)."""
        if isinstance(alpha, (int, float)) or (isinstance(alpha, torch.Tensor) and alpha.ndim == 0):
            from precondalg.structures.compose import scale

            return scale(self, alpha)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, alpha: Any) -> Any:
        if isinstance(alpha, (int, float)) or (isinstance(alpha, torch.Tensor) and alpha.ndim == 0):
            return self * (1 / alpha)
        return NotImplemented

    def __neg__(self) -> Structure:
        return self * -1.0


def _apply(
    A: Structure, X: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], n: int, op: str
) -> torch.Tensor:
    """Validate X (shape (n,) or (n, k), A's dtype), run the 2-D kernel `fn`, restore X's rank."""
    name = type(A).__name__
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} {op} X: X must be a torch.Tensor; got {type(X).__name__}")
    if X.ndim not in (1, 2) or X.shape[0] != n:
        raise ValueError(
            f"{name} {op} X: X must have shape ({n},) or ({n}, k) for a {A.shape[0]}×{A.shape[1]} "
            f"matrix; got {tuple(X.shape)}"
        )
    if X.dtype != A.dtype:
        raise TypeError(f"{name} {op} X: X must have the structure's dtype {A.dtype}; got {X.dtype}")
    if X.ndim == 1:
        return fn(X.unsqueeze(-1)).squeeze(-1)
    return fn(X)


def matmul_in_layout(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """A @ X (A (m, n), X (n, k)) in X's memory layout: where X is column-major (the transpose of a
    contiguous matrix, as a placement's transposing view gives), computed as (Xᵀ Aᵀ)ᵀ, which is
    column-major too, so that the placement's transposing unview returns a contiguous tensor (the
    base rule's foreach operations run several times slower on transposes).  The same product either
    way; the matrix-multiply kernel reads either operand transposed at no cost."""
    if X.ndim == 2 and not X.is_contiguous() and X.mT.is_contiguous():
        return (X.mT @ A.mT).mT
    return A @ X


def not_invertible(A: Structure, why: str) -> NotInvertibleError:
    """The error a structure's `_solve`/`_rsolve` raises when it has no inverse."""
    return NotInvertibleError(f"{type(A).__name__} has no solve: {why}")


# What an integer argument (a dimension) may be: tracing with dynamic shapes passes a torch.SymInt.
INTEGERS = (int, torch.SymInt)


def check_tensor(owner: str, name: str, x: Any, shape: str, ndim: int) -> None:
    """Check that argument `name` of `owner` is a floating tensor with `ndim` dimensions.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong number of dimensions (the message names both shapes).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: argument '{name}' must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: argument '{name}' must be a floating-point tensor; got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{owner}: argument '{name}' must have shape {shape}; got {tuple(x.shape)}")


def check_same_kind(owner: str, **args: Any) -> None:
    """Check that all tensors/structures in `args` share one dtype and one device."""
    items = list(args.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.dtype != first.dtype:
            raise TypeError(
                f"{owner}: '{name}' has dtype {x.dtype} but '{first_name}' has dtype {first.dtype}"
            )
        if x.device != first.device:
            raise ValueError(f"{owner}: '{name}' is on {x.device} but '{first_name}' is on {first.device}")


def check_structures(owner: str, name: str, items: tuple[Any, ...]) -> None:
    """Check that `items` is a non-empty tuple of structures sharing dtype and device."""
    if not items:
        raise ValueError(f"{owner}: needs at least one {name}; got none")
    for i, s in enumerate(items):
        if not isinstance(s, Structure):
            hint = " (wrap a tensor in Dense(...))" if isinstance(s, torch.Tensor) else ""
            raise TypeError(f"{owner}: {name} {i} must be a Structure{hint}; got {type(s).__name__}")
    check_same_kind(owner, **{f"{name} {i}": s for i, s in enumerate(items)})
