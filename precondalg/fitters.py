"""Fitters (layer 4): how a learned structure's leaves move, given the objective's gradient.

A fitter is a recipe; ``fitter.build(leaves, spec)`` returns the per-block `Fit`, which owns its
state and updates the leaves *in place* on ``fit.step(grads)`` (the optimizer can then undo a skipped
step exactly, from a snapshot of ``fit.tensors()``).  A fit whose new leaves are new tensors anyway
(`LieGroup`) also *proposes* them (``fit.propose(grads)``) without writing them: the optimizer then
puts them in (`replace`) only once they are known finite, and needs no snapshot of the leaves.

- `TorchOptimizer`: any torch.optim class on φ's leaves — Adam for FOP (lr 1e-4, Moskovitz et al.
  2019), LODO and APO; plain SGD for Baydin et al.'s hypergradient descent (2018).
- `LieGroup`: PSGD's normalised multiplicative step on a matrix Lie group (Li 2019, Eqs. 17–20):
  R = relative gradient (from the Euclidean gradient by `relative_gradient`), then
  Q ← (I − μ R/‖R‖)Q, with ‖R‖ the max-abs norm of the paper and its 2019 code (default) or the 2026
  psgd_torch code's Lipschitz estimate L ← max(β_L L + (1 − β_L)ℓ, ℓ), ℓ = ‖R‖₂.  Each Kronecker factor
  and each diagonal block is normalised by its own norm and stepped on its own, as in PSGD's code.
- `UVd`: psgd_torch's update of its low-rank approximation Q = (I + UVᵀ)·diag(d), which is not a group.
- `ClosedForm`: φ set from averaged second-moment statistics (`precondalg.objectives.Statistics`) in
  closed form every ``update_every`` steps: Shampoo's and K-FAC's inverse roots.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch
import torch.utils._pytree as pytree

from precondalg._checks import check_choice, check_number
from precondalg._tensors import all_finite, finite_each
from precondalg._torch_compat import writable
from precondalg.matrix_functions import newton_inverse_root, psd_eigh, psd_power
from precondalg.objectives.statistics import Statistics
from precondalg.structures import (
    Dense,
    Diagonal,
    Eigenbasis,
    IdentityPlusLowRank,
    Product,
    Scalar,
    Structure,
    Triangular,
    is_lie_group,
    lie_step,
    max_abs,
    relative_gradient,
    simple_parts,
)
from precondalg.structures.triangular import hold_upper

__all__ = ["ClosedForm", "Fit", "Fitter", "LieGroup", "TorchOptimizer", "UVd", "replace"]


def replace(leaf: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Give `leaf` the values of `value` (a tensor of its shape) and return a tensor holding its old
    values.  A fresh contiguous `value` is swapped in (``set_``: no copy, and the old values stay in
    their storage, which the returned alias keeps); a 0-d leaf, a view, and everything under torch.compile
    are copied (see `writable`).  The leaf stays the same tensor object, so every structure over it
    (φ, a formed P_φ) follows.  `value` may be the leaf itself (nothing changes)."""
    if value is leaf:
        return leaf.detach()
    swap = (
        value.ndim > 0
        and value._base is None
        and value.is_contiguous()
        and value.shape == leaf.shape
        and not torch.compiler.is_compiling()
    )
    if swap:
        old = leaf.detach()
        leaf.set_(value)
        return old
    old = leaf.clone()
    writable(leaf).copy_(writable(value))
    return old


class Fit(abc.ABC):
    """The per-block fitting state built by a `Fitter`."""

    recomputes: ClassVar[bool] = False
    """Whether a fit sets φ anew from its own state (`ClosedForm`) instead of moving it by small steps:
    ``precond_dtype`` then rounds φ to nearest (no small steps to keep in expectation; the nearest
    value is the closer one, and a symmetric root stays symmetric)."""

    @abc.abstractmethod
    def step(self, grads: list[torch.Tensor]) -> None:
        """Move the leaves in place, given the objective's gradient for each leaf."""

    def propose(self, grads: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The leaves' new values for these gradients, as new tensors, leaving the leaves as they are
        (the fit's own state, `tensors`, moves as in `step`); None, without any effect, for a fit that
        steps only in place."""
        return None

    def propose_relative(self, R: Structure, scale: float = 1.0) -> list[torch.Tensor] | None:
        """As `propose`, from the relative gradient scale·R (for a fitter that `takes_relative`)."""
        return None

    def propose_statistics(self, statistics: Statistics) -> list[torch.Tensor] | None:
        """For a fitter that `takes_statistics`: take in this step's statistics (the fit's own state,
        `tensors`, moves) and return the leaves' new values, or None where they stay as they are."""
        raise TypeError(f"{type(self).__name__} does not take statistics")

    @abc.abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor the step changes in place (besides the leaves)."""

    def storable(self) -> list[torch.Tensor]:
        """The state tensors that ``precond_dtype`` may store narrow (bfloat16) between steps, as it does
        φ's leaves; default: none.  A torch optimizer's moments may; `ClosedForm`'s statistics may not
        (rounded to bfloat16, a Shampoo factor L loses its small eigenvalues, of which the −1/4 root
        makes the largest part of P: on a 5-4-3 MLP, Shampoo's loss went from 1.08 to 1978 in 20 steps
        at lr 0.01 where float32 statistics, with φ in bfloat16, reached 0.995)."""
        return []

    def failed(self) -> torch.Tensor | None:
        """After a proposal: a device boolean, True where the fit kept (part of) φ as it was because its
        new value would not be finite while its own state is (`ClosedForm`: a singular statistic without
        damping); the optimizer counts it as a rolled-back meta-step.  None: the fit never does so."""
        return None

    def prepare(self) -> None:  # noqa: B027 (a hook with nothing to do by default, not abstract)
        """Host-side decisions for the coming step, made before its tensor work (which may be compiled,
        where a host read would break the graph); default: none."""

    def phi(self) -> Structure | None:
        """φ over the live leaves, kept by the fit (the leaves move in place, so it stays current), for
        the optimizer's step; None where the fit keeps none (the optimizer unflattens the leaves)."""
        return None

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The state, for checkpoints."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state from `state_dict()`'s output."""


class Fitter(abc.ABC):
    """Abstract base of fitters: recipes for a per-block `Fit`."""

    takes_relative: ClassVar[bool] = False
    """Whether its `Fit` has ``step_relative(R)``, a step from the relative gradient on φ's group."""
    takes_statistics: ClassVar[bool] = False
    """Whether it sets φ from statistics (`Fit.propose_statistics`) instead of stepping on a gradient."""

    @abc.abstractmethod
    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        """A fresh `Fit` over these leaf tensors (`spec` rebuilds the structure φ from them)."""


class _TorchFit(Fit):
    """A torch optimizer over φ's leaves.  A 0-d leaf is handed to it as a 1-element copy, synced from
    the leaf before each step and written back through `writable` after it (see there: torch.compile
    drops in-place updates of 0-d float64 tensors; a copy, unlike a view, also survives pickling)."""

    def __init__(self, recipe: TorchOptimizer, leaves: list[torch.Tensor]) -> None:
        self.leaves = leaves
        self.held = [leaf.detach().reshape(1).clone() if leaf.ndim == 0 else leaf for leaf in leaves]
        self.optimizer = recipe.cls(self.held, **recipe.kwargs)

    def step(self, grads: list[torch.Tensor]) -> None:
        for leaf, held, g in zip(self.leaves, self.held, grads):
            if held is not leaf:
                held.copy_(leaf.reshape(1))
            held.grad = g if held is leaf else g.reshape(1)
        self.optimizer.step()
        for leaf, held in zip(self.leaves, self.held):
            held.grad = None
            if held is not leaf:
                writable(leaf).copy_(held)

    def tensors(self) -> list[torch.Tensor]:
        return [v for st in self.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]

    def storable(self) -> list[torch.Tensor]:
        """The moments of the leaves with at least one dimension (a 0-d leaf's stay with it in the
        compute dtype)."""
        state = self.optimizer.state
        return [
            v
            for leaf, held in zip(self.leaves, self.held)
            if held is leaf and held in state
            for v in state[held].values()
            if isinstance(v, torch.Tensor)
        ]

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The checkpoint's state (moments, step counts); the hyperparameters stay the recipe's."""
        recipe = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, values in zip(self.optimizer.param_groups, recipe):
            group.update(values)


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class TorchOptimizer(Fitter):
    """Fit φ's leaves with a torch.optim optimizer.

    Args:
        cls: a `torch.optim.Optimizer` subclass, e.g. `torch.optim.Adam`.
        **kwargs: its hyperparameters, e.g. ``lr=1e-4`` (validated now, by the class itself).

    Examples:
        >>> TorchOptimizer(torch.optim.Adam, lr=1e-4).kwargs
        {'lr': 0.0001}
    """

    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]

    def __init__(self, cls: type[torch.optim.Optimizer], **kwargs: Any) -> None:
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise TypeError(f"TorchOptimizer: 'cls' must be a torch.optim.Optimizer class; got {cls!r}")
        object.__setattr__(self, "cls", cls)
        object.__setattr__(self, "kwargs", dict(kwargs))
        try:
            cls([torch.zeros(1)], **kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"TorchOptimizer: {cls.__name__} refused the hyperparameters {kwargs}: {err}"
            ) from err

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        return _TorchFit(self, leaves)


def _max_abs_each(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max|t| of each tensor, stacked: from its least and largest entries (`torch.aminmax`, one pass
    without the temporary |t|; they propagate NaN), complex tensors through |t|."""
    if any(t.is_complex() for t in tensors):
        return torch.stack([t.abs().amax() for t in tensors])
    extremes = torch.stack([m for t in tensors for m in torch.aminmax(t)])
    return extremes.view(-1, 2).abs().amax(1)


class _LieFit(Fit):
    def __init__(self, recipe: LieGroup, leaves: list[torch.Tensor], spec: pytree.TreeSpec) -> None:
        # A structure over the leaves, not the tree spec: torch deprecates copying and pickling specs.
        self.recipe, self.leaves, self.template = recipe, leaves, pytree.tree_unflatten(leaves, spec)
        # The simple group factors of Q, over the live leaf tensors (stepped factor by factor; their
        # leaves, in order, are the leaves: pytree flattens depth first, as `simple_parts` walks).
        self.factors = simple_parts(self.template)
        for part in self.factors:
            if isinstance(part, Triangular):  # every step writes an upper-triangular factor
                hold_upper(part)
        self.sizes = [self._entries(part) for part in self.factors]
        self.lipschitz = torch.zeros(sum(self.sizes), dtype=leaves[0].dtype, device=leaves[0].device)

    def _entries(self, part: Structure) -> int:
        """How many norms a part has: one per entry for a diagonal normalised entry-wise, else one."""
        return part.shape[0] if self.recipe.diagonal == "per_entry" and isinstance(part, Diagonal) else 1

    def step(self, grads: list[torch.Tensor]) -> None:
        self._write(self.propose(grads))

    def step_relative(self, R: Structure, scale: float = 1.0) -> None:
        """The normalised step Q ← (I − μ R'/‖R'‖)Q for the relative gradient R' = scale·R, in place:
        factor by factor (Kronecker, BlockDiagonal), Qᵢ ← (I − (μ/‖R'ᵢ‖)R'ᵢ)Qᵢ."""
        self._write(self.propose_relative(R, scale))

    def propose(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        spec = pytree.tree_structure(self.template)
        Q = pytree.tree_unflatten(self.leaves, spec)
        return self.propose_relative(relative_gradient(Q, pytree.tree_unflatten(grads, spec)))

    def propose_relative(self, R: Structure, scale: float = 1.0) -> list[torch.Tensor]:
        """The new leaves of `step_relative`, in the leaves' order (the Lipschitz estimate moves).
        With the max-abs normaliser R'/‖R'‖ = R/‖R‖: `scale` drops out."""
        parts = simple_parts(R)
        norms = self._norms(parts)
        if self.recipe.normalizer == "lipschitz":
            norms = self._lipschitz_step(norms, scale)
        norms = torch.clamp(norms, min=torch.finfo(norms.dtype).tiny)
        if norms.numel() == len(parts):  # one norm per part: every μ/‖Rᵢ‖ at once
            mus = (self.recipe.lr / norms).unbind()
            news = [lie_step(q, r, mu) for q, r, mu in zip(self.factors, parts, mus)]
        else:
            news = [self._step_part(q, r, n) for q, r, n in zip(self.factors, parts, norms.split(self.sizes))]
        return [value for new in news for value in pytree.tree_leaves(new)]

    def _lipschitz_step(self, ell: torch.Tensor, scale: float) -> torch.Tensor:
        """L ← max(β_L L + (1 − β_L)ℓ', ℓ') with ℓ' = scale·ℓ the norms of scale·R; returns L/scale, what
        R itself is divided by."""
        if scale != 1:
            ell = ell * scale
        beta = self.recipe.beta_lipschitz
        self.lipschitz.copy_(torch.maximum(beta * self.lipschitz + (1 - beta) * ell, ell))
        return self.lipschitz if scale == 1 else self.lipschitz / scale

    def _write(self, values: list[torch.Tensor]) -> None:
        for leaf, value in zip(self.leaves, values):
            replace(leaf, value)

    def _step_part(self, q: Structure, r: Structure, n: torch.Tensor) -> Structure:
        """Qᵢ's new value, given its norm(s) n: entry-wise for a diagonal normalised so."""
        if n.numel() > 1:
            return lie_step(q, Diagonal(r.d / n), self.recipe.lr)
        return lie_step(q, r, self.recipe.lr / n[0])

    def _norms(self, parts: list[Structure]) -> torch.Tensor:
        """The norms of every part, concatenated: with the max-abs norm and one leaf per part (Triangular,
        Dense, Diagonal, Scalar), each max|r| of that leaf, stacked at once."""
        leaves = [[leaf for leaf in pytree.tree_leaves(r) if leaf.numel()] for r in parts]
        single = all(len(x) == 1 for x in leaves) and sum(self.sizes) == len(parts)
        if single and self.recipe.normalizer == "max_abs":
            return _max_abs_each([x[0] for x in leaves])
        return torch.cat([self._norm(r, n) for r, n in zip(parts, self.sizes)])

    def _norm(self, r: Structure, entries: int) -> torch.Tensor:
        """‖r‖ of one part, shape (entries,): |rᵢ| entry-wise, max|r| (max-abs), or ‖r‖₂ (Lipschitz)."""
        if entries > 1:
            return r.d.abs()
        if self.recipe.normalizer == "max_abs" or isinstance(r, (Diagonal, Scalar)):
            return max_abs(r).reshape(1)
        return torch.linalg.matrix_norm(r.to_dense(), ord=2).reshape(1)

    def phi(self) -> Structure:
        """Q over the live leaves; its triangular factors are known upper triangular: every step
        writes an element of the group, and the leaves were made so at build."""
        return self.template

    def tensors(self) -> list[torch.Tensor]:
        # Always listed, though only the "lipschitz" normaliser changes it: without it, torch.compile
        # (aot_eager, torch 2.13) wrote one block's fit into another's same-shaped leaves in
        # tests/test_compile.py's compiled PSGD step.
        return [self.lipschitz]

    def state_dict(self) -> dict[str, Any]:
        return {"lipschitz": self.lipschitz}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lipschitz = state["lipschitz"].to(dtype=self.leaves[0].dtype, device=self.leaves[0].device)


_DIAGONAL_NORMS = ("whole", "per_entry")


@dataclasses.dataclass(frozen=True)
class LieGroup(Fitter):
    """PSGD's normalised step on a matrix Lie group: Q ← (I − μ R/‖R‖)Q (Li 2019, Eq. 20).

    Each Kronecker factor and each diagonal block is normalised by its own norm and stepped on its
    own, as in PSGD's code.  With ``diagonal="per_entry"`` a diagonal part is the direct sum of its 1×1
    groups, each normalised by itself: with the max-abs norm the step is then the 2019 code's
    ``q ← q − μ·sign(R)⊙q`` (``update_precond_diag``).

    It takes the relative gradient R either from the objective's Euclidean gradient
    (`precondalg.structures.relative_gradient`) or, where the objective has it in closed form
    (`precondalg.objectives.RelativeGradient`, e.g. PSGD's criteria for P = QᵀQ), directly.

    Attributes:
        lr: the normalised step μ, in [0, 1): with either normaliser |Rᵢᵢ|/‖R‖ ≤ 1, so the diagonal
            of I − μR/‖R‖ stays ≥ 1 − μ > 0 and triangular and diagonal Q stay invertible (theory
            check PSGD-8; the paper's typical value 0.01).  (psgd_torch 2026 allows μ up to 2 with its
            larger normaliser ‖term₁ + term₂‖; ours is ‖R‖ = ‖term₁ − term₂‖.)
        normalizer: "max_abs" (the paper and its 2019 code, default) or "lipschitz" (psgd_torch 2026:
            L ← max(β_L L + (1 − β_L)ℓ, ℓ) with ℓ = ‖R‖₂, per part).
        beta_lipschitz: β_L of the Lipschitz estimate (0.9 in the 2026 code).
        diagonal: "whole" (a diagonal part normalised by its largest entry, psgd_torch's Kronecker
            rule) or "per_entry" (see above; the 2019 diagonal preconditioner).

    Raises:
        TypeError: lr or β_L not a number.
        ValueError: lr not in [0, 1), unknown normalizer or diagonal, β_L not in [0, 1).
    """

    lr: float = 0.01
    normalizer: str = "max_abs"
    beta_lipschitz: float = 0.9
    diagonal: str = "whole"

    takes_relative: ClassVar[bool] = True
    """The optimizer may hand `step_relative` a closed-form relative gradient."""

    def __post_init__(self) -> None:
        check_choice("LieGroup", "normalizer", self.normalizer, ("max_abs", "lipschitz"))
        check_choice("LieGroup", "diagonal", self.diagonal, _DIAGONAL_NORMS)
        check_number("LieGroup", "lr", self.lr, 0.0, 1.0, hi_open=True)
        check_number("LieGroup", "beta_lipschitz", self.beta_lipschitz, 0.0, 1.0, hi_open=True)

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        if spec is None:
            raise ValueError("LieGroup.build: needs the tree spec of the structure φ")
        phi = pytree.tree_unflatten(leaves, spec)
        if not is_lie_group(phi):
            raise TypeError(
                "LieGroup: the learned structure φ must be a matrix Lie group (Scalar, Diagonal, square "
                "Dense, Triangular, Normalization, or Kronecker/BlockDiagonal of these); got "
                f"{type(phi).__name__} of shape {phi.shape}"
            )
        return _LieFit(self, leaves, spec)


class _UVdFit(Fit):
    def __init__(self, recipe: UVd, leaves: list[torch.Tensor]) -> None:
        self.recipe, self.leaves = recipe, leaves
        self.count = torch.zeros((), dtype=torch.int64, device=leaves[0].device)

    def step(self, grads: list[torch.Tensor]) -> None:
        (U, V, d), (gU, gV, gd) = self.leaves, grads
        lr, tiny = self.recipe.lr, torch.finfo(d.dtype).tiny
        eye = torch.eye(U.shape[1], dtype=U.dtype, device=U.device)
        # From the Euclidean gradients (a = Qh, b = Q⁻ᵀv; see the class docstring):
        nabla_d = d * gd / 2  # Ph⊙h − v⊙P⁻¹v
        nabla_u = gU @ (eye + U.mT @ V) / 2  # (aaᵀ − bbᵀ)V
        nabla_v = (gV + U @ (V.mT @ gV)) / 2  # (aaᵀ − bbᵀ)U
        norm_d = nabla_d.abs().max().clamp_min(tiny)
        norm_u = ((nabla_u.mT @ nabla_u) * (V.mT @ V)).sum().abs().sqrt().clamp_min(tiny)  # ‖∇_U Vᵀ‖_F
        norm_v = ((nabla_v.mT @ nabla_v) * (U.mT @ U)).sum().abs().sqrt().clamp_min(tiny)  # ‖U ∇_Vᵀ‖_F
        new_u = U - (lr / norm_u) * (nabla_u @ (eye + V.mT @ U))
        new_v = V - (lr / norm_v) * (nabla_v + V @ (U.mT @ nabla_v))
        new_d = d - (lr / norm_d) * nabla_d * d
        on_u = self.count % 2 == 0
        writable(U).copy_(torch.where(on_u, new_u, U))
        writable(V).copy_(torch.where(on_u, V, new_v))
        writable(d).copy_(new_d)
        writable(self.count).add_(1)

    def tensors(self) -> list[torch.Tensor]:
        return [self.count]

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"].to(self.leaves[0].device)


@dataclasses.dataclass(frozen=True)
class UVd(Fitter):
    """psgd_torch's fit of its low-rank approximation Q = (I + UVᵀ)·diag(d) (`lra_gram`), which is not
    on a matrix Lie group, from the criterion's Euclidean gradients (psgd_torch v0.6
    ``update_precond_UVd_math_`` with its "1st" step normaliser).

    With a = Qh, b = Q⁻ᵀv, the criterion's gradients are ∂c/∂d = 2(Ph⊙h − v⊙P⁻¹v)/d,
    ∂c/∂U = 2(aaᵀ − bbᵀ)V(I + UᵀV)⁻¹ and ∂c/∂V = 2(I + UVᵀ)⁻¹(aaᵀ − bbᵀ)U, from which every step
    recovers psgd_torch's directions:

        d ← d − μ ∇_d⊙d / max|∇_d|,                        ∇_d = Ph⊙h − v⊙P⁻¹v
        U ← U − μ ∇_U(I + VᵀU) / ‖∇_U Vᵀ‖_F,               ∇_U = (aaᵀ − bbᵀ)V     (even fits)
        V ← V − μ (I + VUᵀ)∇_V / ‖U ∇_Vᵀ‖_F,               ∇_V = (aaᵀ − bbᵀ)U     (odd fits)

    psgd_torch picks U or V at random with probability ½ and rebalances ‖U‖ and ‖V‖ with probability
    0.01; here U and V alternate (deterministic, and the count is checkpointed) and there is no
    rebalancing (it leaves UVᵀ unchanged).

    Attributes:
        lr: the normalised step μ, in [0, 1) (psgd_torch's default with this normaliser: 0.01).

    Raises:
        TypeError: lr not a number; at build, φ is not (I + UVᵀ)·diag(d).
        ValueError: lr not in [0, 1).
    """

    lr: float = 0.01

    def __post_init__(self) -> None:
        check_number("UVd", "lr", self.lr, 0.0, 1.0, hi_open=True)

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        phi = pytree.tree_unflatten(leaves, spec) if spec is not None else None
        if not (
            isinstance(phi, Product)
            and len(phi.factors) == 2
            and isinstance(phi.factors[0], IdentityPlusLowRank)
            and isinstance(phi.factors[1], Diagonal)
        ):
            got = type(phi).__name__ if phi is not None else "no tree spec"
            raise TypeError(
                "UVd: the learned structure φ must be Q = (I + UVᵀ)·diag(d), as `lra_gram` makes it; got "
                f"{got}"
            )
        return _UVdFit(self, leaves)


_ROOTS = ("eigh", "newton")


class _ClosedFormFit(Fit):
    """The running statistics of φ's parts and the closed form set from them (see `ClosedForm`)."""

    recomputes = True

    def __init__(self, recipe: ClosedForm, leaves: list[torch.Tensor], spec: pytree.TreeSpec) -> None:
        self.recipe, self.leaves = recipe, leaves
        self.template = pytree.tree_unflatten(leaves, spec)
        self.parts = simple_parts(self.template)
        like = leaves[0]
        self.counts = [len(_statistic_shapes(part)) for part in self.parts]  # statistics per part
        self.statistics = [
            torch.zeros(shape, dtype=like.dtype, device=like.device)
            for part in self.parts
            for shape in _statistic_shapes(part)
        ]
        self.weight = torch.zeros((), dtype=like.dtype, device=like.device)
        self.fits = torch.zeros((), dtype=torch.int64, device=like.device)
        self._failed: torch.Tensor | None = None
        self._refit = True

    def step(self, grads: list[torch.Tensor]) -> None:
        raise TypeError("ClosedForm sets φ from statistics: its objective must give Statistics")

    def propose_statistics(self, statistics: Statistics) -> list[torch.Tensor] | None:
        """S ← S + s (β = 1) or S ← βS + (1 − β)s, with the weight w ← βw + (1 − β) that bias-corrects
        it (S/w); then, on the first fit and every ``update_every``-th after it, every part of φ is set
        to c^(1/power)·(S/w + (δ + ε)I)^(e/power), c the objective's scale (1 by default)."""
        if len(statistics.samples) != len(self.statistics):
            raise ValueError(
                f"ClosedForm: {len(statistics.samples)} statistics for the {len(self.parts)} parts of φ, "
                f"which hold {len(self.statistics)}"
            )
        beta = self.recipe.beta
        for S, sample in zip(self.statistics, statistics.samples):
            if beta == 1:
                S.add_(sample)
            else:
                S.mul_(beta).add_(sample, alpha=1 - beta)
        if beta != 1:
            writable(self.weight).mul_(beta).add_(1 - beta)
        writable(self.fits).add_(1)
        self._failed = None
        if not self._refit:
            return None
        averages = self.statistics if beta == 1 else [S / self.weight for S in self.statistics]
        n = len(self.parts)
        damping = [0.0] * n if statistics.damping is None else list(statistics.damping(averages))
        scales = [1.0] * n if statistics.scale is None else list(statistics.scale(averages))
        power = statistics.power
        starts = [sum(self.counts[:i]) for i in range(n)]
        eps = self.recipe.epsilon
        news = [
            self._part(part, averages[start : start + count], e, power, delta + eps)
            for part, start, count, e, delta in zip(
                self.parts, starts, self.counts, statistics.exponents, damping
            )
        ]
        values = [
            value for part, new, c in zip(self.parts, news, scales) for value in _scaled(part, new, c, power)
        ]
        # A part whose root is not finite while the statistics are (singular, without damping) keeps its
        # value: the statistics still join, and the optimizer counts the kept part (see `failed`).
        finite = finite_each(values)
        statistics_finite = all_finite(self.statistics)
        self._failed = statistics_finite & ~finite.all()
        keep = ~statistics_finite  # non-finite statistics: the optimizer rolls the whole fit back
        return [torch.where(ok | keep, v, leaf) for v, ok, leaf in zip(values, finite, self.leaves)]

    def failed(self) -> torch.Tensor | None:
        return self._failed

    def _part(
        self,
        part: Structure,
        statistics: list[torch.Tensor],
        e: float,
        power: int,
        delta: torch.Tensor | float,
    ) -> list[torch.Tensor]:
        """The new leaves of one part: (S + δI)^(e/power), a Cholesky factor for a triangular part; for an
        `Eigenbasis` from the statistics (Ḡ, Ā): B, A their eigenvectors and S² = (λ_Ḡ,i λ_Ā,j + δ)^e,
        P̂ = (Ḡ ⊗ Ā + δI)^e (power 1)."""
        if isinstance(part, Eigenbasis):
            return _eigenbasis_closed_form(statistics, e, delta)
        (S,) = statistics
        if isinstance(part, (Diagonal, Scalar)):
            return [(S.clamp(min=0) + delta).pow(e / power)]
        if isinstance(part, Triangular):  # power 2 (checked at build): upper R with RᵀR = (S + δI)^e
            T = _matrix_power(self.recipe.root, S, e, delta)
            finite = finite_each([T])[0]
            eye = torch.eye(T.shape[0], dtype=T.dtype, device=T.device)
            lower, info = torch.linalg.cholesky_ex(torch.where(finite, T, eye))
            failed = ~finite | (info != 0)  # not positive definite: NaN, and the part is kept
            return [torch.where(failed, torch.full_like(lower, torch.nan), lower).mT.contiguous()]
        return [_matrix_power(self.recipe.root, S, e / power, delta)]

    def prepare(self) -> None:
        """Whether this step's fit recomputes φ: the first fit and every ``update_every``-th after it.
        `fits` is a device counter, rolled back with the statistics when a step is skipped; reading it
        is a host synchronisation on a GPU, needed only when the refits are amortised.  (Read inside a
        compiled step, it broke the graph, and torch 2.13's resumed graph then mixed two blocks'
        tensors on the first amortised refit.)"""
        every = self.recipe.update_every
        self._refit = every == 1 or int(self.fits) % every == 0

    def tensors(self) -> list[torch.Tensor]:
        return [*self.statistics, self.weight, self.fits]

    def phi(self) -> Structure:
        return self.template

    def state_dict(self) -> dict[str, Any]:
        return {"statistics": self.statistics, "weight": self.weight, "fits": self.fits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        like = self.leaves[0]
        self.statistics = [S.to(dtype=like.dtype, device=like.device) for S in state["statistics"]]
        self.weight = state["weight"].to(dtype=like.dtype, device=like.device)
        self.fits = state["fits"].to(device=like.device)


def _scaled(
    part: Structure, leaves: list[torch.Tensor], c: torch.Tensor | float, power: int
) -> list[torch.Tensor]:
    """The leaves of a part whose preconditioner, part^power, is multiplied by c: each leaf by c^(1/power)
    for a one-leaf part; an `Eigenbasis` (B, A, S), linear in S², by scaling S alone, by c^(1/(2·power))."""
    if isinstance(c, float) and c == 1.0:
        return leaves
    if isinstance(part, Eigenbasis):
        B, A, S = leaves
        return [B, A, S * c ** (1 / (2 * power))]
    return [value * c ** (1 / power) for value in leaves]


def _statistic_shapes(part: Structure) -> list[tuple[int, ...]]:
    """The shapes of a part's statistics: one per part, two (m×m, n×n) for an `Eigenbasis`."""
    if isinstance(part, Eigenbasis):
        m, n = part.dims
        return [(m, m), (n, n)]
    if isinstance(part, Scalar):
        return [()]
    if isinstance(part, Diagonal):
        return [(part.shape[0],)]
    return [tuple(part.shape)]


def _eigenbasis_closed_form(
    statistics: list[torch.Tensor], e: float, delta: torch.Tensor | float
) -> list[torch.Tensor]:
    """B, A, S of the `Eigenbasis` equal to (G ⊗ A_stat + δI)^e for symmetric PSD statistics (G, A_stat):
    the Kronecker eigenbasis (B, A the eigenvectors) and S = (λ_G,i λ_A,j + δ)^(e/2), eigenvalues clipped
    at 0 (APO's Corollary 2 with K-FAC's factors: EKFAC's eigenbasis form of the damped inverse)."""
    (lam_G, B, finite_G), (lam_A, A_vectors, finite_A) = (psd_eigh(M) for M in statistics)
    S = (lam_G[:, None] * lam_A[None, :] + delta).pow(e / 2)
    return [B, A_vectors, torch.where(finite_G & finite_A, S, torch.full_like(S, torch.nan))]


def _matrix_power(root: str, S: torch.Tensor, exponent: float, delta: torch.Tensor | float) -> torch.Tensor:
    """(S + δI)^exponent by `psd_power` ("eigh") or, for exponent −1/p, `newton_inverse_root`."""
    if root == "eigh":
        return psd_power(S, exponent, delta)
    p = -1 / exponent
    if exponent >= 0 or abs(p - round(p)) > 1e-9:
        raise ValueError(
            f"ClosedForm(root='newton'): the coupled Newton iteration computes inverse p-th roots with an "
            f"integer p; this part's exponent is {exponent!r}. Use root='eigh'"
        )
    return newton_inverse_root(S, round(p), delta)


@dataclasses.dataclass(frozen=True)
class ClosedForm(Fitter):
    """Set φ in closed form from averaged second-moment statistics (the second kind of fitting, beside
    the fitters that step on a meta-gradient): Shampoo (Gupta et al. 2018) and K-FAC (Martens & Grosse
    2015) with the statistics objectives, and PSGD's criteria solved instead of iterated.

    Each step, the objective's `Statistics` samples s join the running statistics S of φ's parts:
    S ← S + s (β = 1: AdaGrad's and Shampoo's sum) or S ← βS + (1 − β)s read bias-corrected as
    S/(1 − βᵗ) (an exponential average, Adam's and Distributed Shampoo's correction).  On the first fit
    and every ``update_every``-th after it, each part of φ is set to c^(1/power)(S + (δ + ε)I)^(e/power)
    — e, δ and c (default 1) the objective's, power the structure family's (P = φ: 1; P = φᵀφ: 2) —
    by a symmetric eigendecomposition (or a coupled Newton iteration); a triangular part of a Gram
    family gets the upper Cholesky factor of c(S + (δ + ε)I)^e, a diagonal or scalar part the power
    entry-wise.  Between refits P stays as it was set.  A fit whose result would be non-finite (a
    singular S without damping, a Newton iteration that does not converge) is rolled back by the
    optimizer and counted.

    Attributes:
        beta: the averaging β in (0, 1] (1: the sum).
        epsilon: ε ≥ 0 added to every statistic before its root (Shampoo's ε).
        update_every: refit φ every this many fits (≥ 1); the statistics join at every fit.  A skipped
            step (non-finite numbers) does not count; with update_every > 1 the fit reads its counter
            on the host (a synchronisation per step on a GPU).
        root: "eigh" (`precondalg.matrix_functions.psd_power`) or "newton"
            (`newton_inverse_root`; exponents −1/p with an integer p only; it synchronises with the host
            once per iteration).

    Raises:
        TypeError: a hyperparameter that is not a number; at build, a φ whose parts are not Dense,
            Triangular, Diagonal or Scalar.
        ValueError: beta not in (0, 1], negative epsilon, update_every < 1, unknown root.
    """

    beta: float = 1.0
    epsilon: float = 0.0
    update_every: int = 1
    root: str = "eigh"

    takes_statistics: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_number("ClosedForm", "beta", self.beta, 0.0, 1.0, lo_open=True)
        check_number("ClosedForm", "epsilon", self.epsilon, 0.0)
        check_number("ClosedForm", "update_every", self.update_every, 1, integer=True)
        check_choice("ClosedForm", "root", self.root, _ROOTS)

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        if spec is None:
            raise ValueError("ClosedForm.build: needs the tree spec of the structure φ")
        phi = pytree.tree_unflatten(leaves, spec)
        parts = simple_parts(phi)
        settable = all(isinstance(p, (Dense, Triangular, Diagonal, Scalar, Eigenbasis)) for p in parts)
        if not settable or any(p.shape[0] != p.shape[1] for p in parts):
            raise TypeError(
                "ClosedForm: φ must be built of square Dense, Triangular, Diagonal or Scalar parts (alone, "
                f"as Kronecker factors or as blocks), which a closed form can set; got {type(phi).__name__} "
                f"with parts {[type(p).__name__ for p in parts]}"
            )
        return _ClosedFormFit(self, leaves, spec)
