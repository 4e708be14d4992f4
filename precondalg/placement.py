"""Placements: which axes of which parameters a structure acts on (layer 2).

A placement turns the gradients of a *block* of parameters into the matrix X that a structure
multiplies from the left (Y = S @ X), and turns Y back into tensors of the parameters' shapes.  Every
placement but `Concatenated` takes one parameter per block; `Concatenated` takes all the parameters of a
param group as one block (LODO, dense PSGD).

| placement | parameter (PyTorch layout) | X = view(G) | S is | acts as |
| --- | --- | --- | --- | --- |
| `Flatten()` | any | vec(G), (numel, 1) | numel×numel | vec(G) ↦ S vec(G) |
| `InputSide()` | W (out, in, …) | Gᵀ, (in·…, out) | in·…×in·… | each row g ↦ S g: G ↦ G Sᵀ (FOP) |
| `OutputSide()` | W (out, in, …) | G, (out, in·…) | out×out | G ↦ S G |
| `TwoSided()` | W (out, in, …) | vec(G), (out·in·…, 1) | `Kronecker(A, B)` | G ↦ A G Bᵀ (PSGD, APO, KFAC) |
| `EveryAxis()` | any (n₁…n_K) | vec(G), (numel, 1) | `Kronecker(A₁, …, A_K)` | Aᵢ on axis i (PSGD Kron) |
| `Spatial()` | conv kernel (o, i, h, w) | (h·w, o·i) | (h·w)×(h·w) | taps of every channel pair (FOP) |
| `Concatenated()` | all parameters of a group | cat of vecs, (N, 1) | N×N | LODO, dense PSGD |
| `Layer(model)` | a layer's W, b | vec([G_W ∣ g_b]) | `Kronecker(A, B)` | A [G_W ∣ g_b] Bᵀ (K-FAC) |

`TwoSided` and `Layer` also take APO's `Eigenbasis` (Kronecker(B, A) diag(vec S)² Kronecker(B, A)ᵀ,
factor sizes `dims` = (out, in)) as a two-sided operator.

For the symmetric preconditioners FOP uses (P = MᵀM), `InputSide` is G ↦ G P, FOP's right
multiplication in PyTorch layout (Moskovitz et al. 2019, Eq. 2); vec is row-major (`torch.flatten`), as in
`precondalg.structures.Kronecker`.

`default_placement(shape)` picks, per parameter shape: `Flatten` for 0-d and 1-d tensors (scalars,
biases), `InputSide` for matrices and for 3-d and ≥5-d weights, `Spatial` for 4-d conv kernels.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Hashable, Sequence

import torch
from einops import rearrange

from precondalg.structures import Eigenbasis, Kronecker, Structure

__all__ = [
    "Concatenated",
    "EveryAxis",
    "Flatten",
    "InputSide",
    "Layer",
    "OutputSide",
    "Placement",
    "Spatial",
    "TwoSided",
    "default_placement",
]

Shape = tuple[int, ...]


class Placement(abc.ABC):
    """Abstract base: maps a block of gradients to the matrix a structure acts on, and back."""

    def covers(self, p: torch.Tensor) -> bool:
        """Whether this placement preconditions parameter p (else p gets the base rule alone); every
        parameter by default."""
        return True

    def block_key(self, p: torch.Tensor) -> Hashable | None:
        """The key of the block p joins: the parameters of a param group with equal keys form one
        block, in their order (`Concatenated`: all of them; `Layer`: a layer's weight and bias); None
        (the default): p is a block of its own."""
        return None

    @abc.abstractmethod
    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        """The dimensions of the structure: (n,) for an n×n structure, (m, n) for `TwoSided`'s
        Kronecker factors.

        Raises:
            ValueError: the parameter shapes do not suit this placement.
        """

    @abc.abstractmethod
    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (n, k) matrix X, n = prod(dims), that the structure multiplies from the left."""

    @abc.abstractmethod
    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        """The inverse of `view`: tensors of the given shapes from an (n, k) matrix."""

    def check(self, P: Structure, dims: tuple[int, ...]) -> None:
        """Refuse a preconditioner that does not fit this placement (the optimizer calls it when it
        builds a block, with the block's `dims`): by default P must be n×n, n = prod(dims).

        Raises:
            ValueError: P does not fit (the message says what was expected and what came).
        """
        n = math.prod(dims)
        if tuple(P.shape) != (n, n):
            raise ValueError(
                f"{type(self).__name__} needs a preconditioner of size {n}×{n} (its view of the gradient "
                f"has {n} rows); got {P.shape[0]}×{P.shape[1]}"
            )


def _single(placement: Placement, shapes: Sequence[Shape], min_ndim: int = 0) -> Shape:
    name = type(placement).__name__
    if len(shapes) != 1:
        raise ValueError(f"{name}: a block holds exactly one parameter; got {len(shapes)}")
    shape = tuple(shapes[0])
    if len(shape) < min_ndim:
        raise ValueError(f"{name}: needs a parameter with at least {min_ndim} dimensions; got shape {shape}")
    return shape


@dataclasses.dataclass(frozen=True)
class Flatten(Placement):
    """The whole parameter flattened (row-major) into one vector: an n×n structure, n = numel."""

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        return (math.prod(_single(self, shapes)),)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return grads[0].reshape(-1, 1)

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        return [X.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class InputSide(Placement):
    """The input side of a weight W (out, in, …): each output unit's gradient row g ↦ S g (FOP).

    The structure is (in·…)×(in·…) and shared across output units: G ↦ G Sᵀ, which is FOP's G·MᵀM.
    """

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        return (math.prod(_single(self, shapes, min_ndim=2)[1:]),)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return rearrange(grads[0], "o ... -> (...) o")

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        return [X.mT.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class OutputSide(Placement):
    """The output side of a weight W (out, in, …): G ↦ S G with an out×out structure."""

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        return (_single(self, shapes, min_ndim=2)[0],)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return rearrange(grads[0], "o ... -> o (...)")

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        return [X.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class TwoSided(Placement):
    """Both sides of a weight W (out, in, …): G ↦ A G Bᵀ with the structure `Kronecker(A, B)`.

    dims are (out, in·…): the factors' sizes.  PSGD's Kronecker preconditioner (Eq. 23), APO's Eq. 9
    and KFAC's blocks act this way.
    """

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        shape = _single(self, shapes, min_ndim=2)
        return (shape[0], math.prod(shape[1:]))

    def check(self, P: Structure, dims: tuple[int, ...]) -> None:
        """P must be a Kronecker product A ⊗ B (possibly inside lazy composites, e.g. a Gram) with A
        (out×out) and B (in×in), in that order, or APO's `Eigenbasis` with dims (out, in).

        Raises:
            ValueError: P is not n×n, holds no Kronecker product, or its factors have other sizes
                (swapped factors would apply the wrong mathematics to G).
        """
        super().check(P, dims)
        _check_two_sided(self, P, dims)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return grads[0].reshape(-1, 1)

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        return [X.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class EveryAxis(Placement):
    """Every axis of a tensor (n₁, …, n_K): dims are its shape, so a Kronecker family puts one factor on
    each axis, factor i acting on axis i of G (row-major vec, as `Kronecker` does) — psgd_torch's
    `Kron` for tensors of any order.  A 0-d tensor has dims (1,).  For a matrix it is `TwoSided`.
    """

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        return tuple(_single(self, shapes)) or (1,)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return grads[0].reshape(-1, 1)

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        return [X.reshape(shapes[0])]


@dataclasses.dataclass(frozen=True)
class Spatial(Placement):
    """The spatial taps of a conv kernel (o, i, h, w): an (h·w)×(h·w) structure shared by every
    (output, input) channel pair — FOP's spatial preconditioner (Moskovitz et al. 2019); 1×1 kernels get a
    1×1 structure (a learned per-layer scalar).
    """

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        shape = _single(self, shapes)
        if len(shape) != 4:
            raise ValueError(f"Spatial: needs a conv kernel of shape (o, i, h, w); got shape {shape}")
        return (shape[2] * shape[3],)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return rearrange(grads[0], "o i h w -> (h w) (o i)")

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        o, i, h, w = shapes[0]
        return [rearrange(X, "(h w) (o i) -> o i h w", h=h, w=w, o=o, i=i)]


@dataclasses.dataclass(frozen=True)
class Concatenated(Placement):
    """All parameters of a param group, flattened and concatenated into one vector (LODO, dense PSGD)."""

    def block_key(self, p: torch.Tensor) -> Hashable | None:
        return "group"

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        if not shapes:
            raise ValueError("Concatenated: a block needs at least one parameter; got none")
        return (sum(math.prod(s) for s in shapes),)

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in grads]).unsqueeze(-1)

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        sizes = [math.prod(s) for s in shapes]
        return [x.reshape(s) for x, s in zip(torch.split(X.reshape(-1), sizes), shapes)]


def _check_two_sided(placement: Placement, P: Structure, dims: tuple[int, ...]) -> None:
    found = _kronecker_sizes(P)
    if found != {dims}:
        what = "no Kronecker product" if not found else f"Kronecker factors of sizes {sorted(found)}"
        raise ValueError(
            f"{type(placement).__name__} acts as G ↦ A G Bᵀ, so it needs a Kronecker(A, B) with A "
            f"{dims[0]}×{dims[0]} (output side) and B {dims[1]}×{dims[1]} (input side); got {what}. For a "
            "preconditioner on the flattened gradient use Flatten()"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Layer(Placement):
    """A layer's weight and bias as one block, the bias a homogeneous column: K-FAC's placement
    (Martens & Grosse 2015, §3) for every `nn.Linear` and `nn.Conv2d` of `model`.

    The block's matrix is [G_W | g_b] (out, in·… + 1) with G_W the weight's gradient reshaped to
    (out, in·…) (a Conv2d kernel (o, i, h, w) as (o, i·h·w), the order of its patches, KFC's
    matrixisation) and g_b the bias's as the last column; like `TwoSided`, vec of it is acted on by
    `Kronecker(A, B)`: [G_W | g_b] ↦ A [G_W | g_b] Bᵀ.  A layer without a bias (or whose bias is in
    another param group) has the block [G_W]; a bias alone has [g_b], (out, 1).  Parameters of other
    modules are not covered (they get the base rule alone).  Compared by identity (of the model).

    Args:
        model: the module whose Linear and Conv2d layers are placed.

    Examples:
        >>> net = torch.nn.Linear(3, 2)
        >>> Layer(net).dims([tuple(net.weight.shape), tuple(net.bias.shape)])
        (2, 4)
    """

    model: torch.nn.Module

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"Layer: 'model' must be a torch.nn.Module; got {type(self.model).__name__}")

    def _owners(self) -> dict[torch.Tensor, str]:
        layers = (torch.nn.Linear, torch.nn.Conv2d)
        return {
            p: name
            for name, module in self.model.named_modules()
            if isinstance(module, layers)
            for p in module.parameters(recurse=False)
        }

    def covers(self, p: torch.Tensor) -> bool:
        return p in self._owners()

    def block_key(self, p: torch.Tensor) -> Hashable | None:
        return self._owners().get(p)

    def dims(self, shapes: Sequence[Shape]) -> tuple[int, ...]:
        weights = [s for s in shapes if len(s) >= 2]
        biases = [s for s in shapes if len(s) == 1]
        if len(weights) > 1 or len(biases) > 1 or len(weights) + len(biases) != len(shapes):
            raise ValueError(
                f"Layer: a block holds one layer's weight (2 or more dimensions) and bias (1 dimension); "
                f"got shapes {[tuple(s) for s in shapes]}"
            )
        out = weights[0][0] if weights else biases[0][0]
        if weights and biases and biases[0][0] != out:
            raise ValueError(
                f"Layer: the bias {tuple(biases[0])} does not match the weight {tuple(weights[0])}"
            )
        return (out, (math.prod(weights[0][1:]) if weights else 0) + len(biases))

    def view(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        columns = sorted(grads, key=lambda g: -g.ndim)  # the weight, then the bias
        matrix = torch.cat([g.reshape(g.shape[0], -1) for g in columns], 1)
        return matrix.reshape(-1, 1)

    def unview(self, X: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        out, width = self.dims(shapes)
        matrix = X.reshape(out, width)
        weight = [s for s in shapes if len(s) >= 2]
        split = math.prod(weight[0][1:]) if weight else 0
        return [matrix[:, split:].reshape(s) if len(s) == 1 else matrix[:, :split].reshape(s) for s in shapes]

    def check(self, P: Structure, dims: tuple[int, ...]) -> None:
        """P must be a Kronecker(A, B) with A out×out and B (in·… + 1)×(in·… + 1), or an `Eigenbasis` with
        these dims, as for `TwoSided`."""
        super().check(P, dims)
        _check_two_sided(self, P, dims)

    def __repr__(self) -> str:
        return f"Layer(model={type(self.model).__name__})"


def _kronecker_sizes(S: Structure) -> set[tuple[int, ...]]:
    """The factor sizes (rows) of every outermost Kronecker product inside S, through lazy composites;
    an `Eigenbasis` K diag(vec S)² Kᵀ (K = B ⊗ A) counts as one, of sizes `dims` = (m, n)."""
    if isinstance(S, Kronecker):
        return {tuple(f.shape[0] for f in S.factors)}
    if isinstance(S, Eigenbasis):
        return {S.dims}
    found: set[tuple[int, ...]] = set()
    for field in dataclasses.fields(S):
        value = getattr(S, field.name)
        for child in value if isinstance(value, tuple) else (value,):
            if isinstance(child, Structure):
                found |= _kronecker_sizes(child)
    return found


def default_placement(shape: Shape) -> Placement:
    """The default placement for a parameter of this shape (see the module docstring)."""
    if len(shape) <= 1:
        return Flatten()
    if len(shape) == 4:
        return Spatial()
    return InputSide()
