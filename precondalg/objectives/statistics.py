"""Statistics objectives: second moments from which a preconditioner is set in closed form.

Where the learned objectives answer each step with a gradient for φ, these answer with a `Statistics`:
this step's sample of each second-moment statistic, one per simple part of φ (its Kronecker factors,
its diagonal, ...), with the closed form the objective's optimum has in them — P's part =
(S + δI)^e.  The `precondalg.fitters.ClosedForm` fitter averages the samples over the steps and sets φ
from that closed form every ``update_every`` steps.  The same structures are fitted either way.

| objective | statistics of φ's parts | e | δ | method |
| --- | --- | --- | --- | --- |
| `GradientStatistics` | mode-i Grams of the gradient: GGᵀ, GᵀG | −1/(2K) | – | Shampoo; AdaGrad (K = 1) |
| `Fisher`, `Newton` | the same of h (g + λv, or Hv) | −1/(2K) | – | PSGD's criteria: P⁻² = E[hhᵀ] |
| `LayerStatistics` | Ḡ = E[ssᵀ] (outputs), Ā = E[aaᵀ] (inputs, 1 for a bias) | −1 | factored | K-FAC |

(Shampoo: Gupta et al. 2018; K-FAC: Martens & Grosse 2015.)

K is the number of Kronecker factors of φ (1 for a structure that is not a Kronecker product); the
fitter adds its own ε to every δ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from precondalg._checks import check_number
from precondalg.objectives.base import (
    BlockContext,
    BlockwiseObjective,
    Evaluation,
    Objective,
    closure_evaluation,
)
from precondalg.structures import (
    BlockDiagonal,
    Dense,
    Diagonal,
    Eigenbasis,
    Kronecker,
    Scalar,
    Structure,
    Triangular,
    simple_parts,
)

__all__ = [
    "GradientStatistics",
    "LayerStatistics",
    "Statistics",
    "factored_tikhonov",
    "second_moments",
]


@dataclasses.dataclass(frozen=True)
class Statistics:
    """An objective's answer for a closed-form fitter (asked for by `BlockContext.statistics`): this
    step's samples of the second-moment statistics of φ's simple parts
    (`precondalg.structures.simple_parts` order), and the closed form of the optimum in their average S.

    Attributes:
        samples: one per part: (d, d) for a Dense or Triangular part, (d,) for a Diagonal, () for a
            Scalar.
        exponents: e per part: the optimum's part of P is (S + δI)^e.
        power: how P depends on φ (`precondalg.families.Family.power`): φ's part is set to
            (S + δI)^(e/power) (power 2: P = φᵀφ with φ's part symmetric, or upper triangular with
            φᵀφ = (S + δI)^e).
        damping: δ per part from the averaged statistics S (e.g. K-FAC's factored Tikhonov damping),
            or None for none; the fitter's ε is added to it.
        scale: a factor cᵢ per part of P from the averaged statistics (P's part cᵢ(S + δI)^e, φ's
            cᵢ^(1/power)(S + δI)^(e/power)), or None for 1 (e.g. the trace normalisation of a
            Kronecker whitening, `whitening_statistics`).
    """

    samples: tuple[torch.Tensor, ...]
    exponents: tuple[float, ...]
    power: int
    damping: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor | float]] | None = None
    scale: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor | float]] | None = None


def second_moments(phi: Structure, X: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """The second moments of the placed matrix X that match φ's structure, one per simple part, and
    the number K of Kronecker factors each part belongs to.

    For X (n, k), each column acted on by φ: a Dense or Triangular part gets U Uᵀ, a Diagonal part the
    diagonal of U Uᵀ, a Scalar part tr(U Uᵀ)/d, where U (d, ·) is the part's share of X: X itself, the
    rows of its block (`BlockDiagonal`), or the mode-i unfolding of every column viewed as a tensor of
    the factors' sizes (`Kronecker`: for a matrix gradient G with vec(G) = X, L = G Gᵀ and R = GᵀG,
    Gupta et al. 2018, Alg. 1).

    Args:
        phi: the structure (its type and sizes are read, not its values).
        X: (n, k) the placed gradient (or h).

    Returns:
        The samples, and K per part (1 outside a Kronecker product).

    Raises:
        TypeError: a part that is not Dense, Triangular, Diagonal or Scalar, or a Kronecker factor that
            is itself a composite (no second moment of that form is defined here).
    """
    if isinstance(phi, BlockDiagonal):
        sizes = [b.shape[0] for b in phi.blocks]
        samples: list[torch.Tensor] = []
        orders: list[int] = []
        for block, rows in zip(phi.blocks, X.split(sizes)):
            s, o = second_moments(block, rows)
            samples += s
            orders += o
        return samples, orders
    if isinstance(phi, Kronecker):
        dims = [f.shape[0] for f in phi.factors]
        K = len(dims)
        return [_moment(f, unfold(X, dims, i)) for i, f in enumerate(phi.factors)], [K] * K
    return [_moment(phi, X)], [1]


def unfold(X: torch.Tensor, dims: list[int], axis: int) -> torch.Tensor:
    """The mode-`axis` unfolding of the columns of X (n, k), each viewed row-major as a tensor of shape
    `dims`: (d_axis, k·rest), every column a mode-axis fibre (in the order column, then the other axes),
    so that its Gram is Σ over every other index of X Xᵀ.  For one column, a view (no copy) of X
    itself unless the axis is a middle one."""
    k = X.shape[-1]
    T = X if k == 1 else X.mT  # (k, n): for one column, X holds the same numbers in the same order
    pre, d, post = k * math.prod(dims[:axis]), dims[axis], math.prod(dims[axis + 1 :])
    if pre == 1:
        return T.reshape(d, post)
    if post == 1:
        return T.reshape(pre, d).mT
    return T.reshape(pre, d, post).movedim(1, 0).reshape(d, -1)



def as_part(part: Structure, M: torch.Tensor) -> torch.Tensor:
    """A (d, d) second moment M as the statistic of a part: M (Dense, Triangular), its diagonal
    (Diagonal), tr(M)/d (Scalar)."""
    if isinstance(part, Diagonal):
        return torch.diagonal(M).clone()
    if isinstance(part, Scalar):
        return torch.diagonal(M).mean()
    return M


def _moment(part: Structure, U: torch.Tensor) -> torch.Tensor:
    if isinstance(part, (Dense, Triangular)):
        return U @ U.mT
    if isinstance(part, Diagonal):
        return (U * U).sum(-1)
    if isinstance(part, Scalar):
        return (U * U).sum() / U.shape[0]
    raise TypeError(
        f"second_moments: a part of φ is {type(part).__name__}; closed-form statistics are defined for "
        "Dense, Triangular, Diagonal and Scalar parts (alone, as Kronecker factors or as blocks)"
    )


def shampoo_statistics(ctx: BlockContext, X: torch.Tensor, root: int | None = None) -> Statistics:
    """Shampoo's `Statistics` (Gupta et al. 2018): each part (Sᵢ + δI)^(−1/(2K)), or −1/root; for a
    structure that is not a Kronecker product (K = 1) AdaGrad's S^(−1/2).

    Args:
        ctx: the block's context (φ and the family's power).
        X: (n, k) the placed gradient.
        root: an override of every part's root 2K.
    """
    samples, orders = second_moments(ctx.phi, X)
    exponents = tuple(-1.0 / (root if root is not None else 2 * K) for K in orders)
    return Statistics(tuple(samples), exponents, _power(ctx))


def whitening_statistics(ctx: BlockContext, X: torch.Tensor, isotropic: float = 0.0) -> Statistics:
    """The `Statistics` of the whitening optimum P = C^(−1/2), C = E[X Xᵀ] (PSGD's criterion with
    E[vvᵀ] = I: P C P = I), in φ's structure.  For K = 1 it is C^(−1/2) itself (the dense, diagonal or
    scalar part of it).  For a Kronecker φ the mode Grams Lᵢ are those of C = A₁ ⊗ ⋯ ⊗ A_K exactly when
    C is a Kronecker product: then Lᵢ = (∏_{j≠i} tr Aⱼ)·Aᵢ and C = (⊗ Lᵢ)/tr(C)^(K−1), so

        P = C^(−1/2) = tr(C)^((K−1)/2) · L₁^(−1/2) ⊗ ⋯ ⊗ L_K^(−1/2),

    each factor Lᵢ^(−1/2) times tr(C)^((K−1)/2K), tr(C) taken as the geometric mean of the tr Lᵢ (all
    equal in expectation).  (Shampoo's −1/(2K) roots are another choice: `GradientStatistics`.)

    The k columns of X are k pairs (v, h) of the criterion Σ hᵀPh + vᵀP⁻¹v, whose minimiser solves
    P (Σ hhᵀ) P = Σ vvᵀ = k·I: so C is the mean over the columns, (1/k)·Σ hhᵀ, and P is the same for a
    block placed as one column or as k (`ClosedForm` then averages C over steps with β < 1; its β = 1
    sums them, AdaGrad's convention, which scales P by 1/√t).

    Args:
        ctx: the block's context (φ and the family's power).
        X: (n, k) placed h (Hv, or the gradient).
        isotropic: σ² of an independent N(0, σ²I) term of h integrated out: E[hhᵀ] = E[XXᵀ] + σ²I, whose
            share of a part of size d is σ²·(n·k/d) on its diagonal (`Fisher`'s h = g + λv: σ² = λ²).
    """
    samples, orders = second_moments(ctx.phi, X)
    if isotropic:
        count = X.numel()
        samples = [_plus_identity(S, isotropic * count / d) for S, d in zip(samples, _sizes(ctx.phi))]
    samples = [S / X.shape[1] for S in samples]  # the mean over the k pairs (see above)
    kronecker = max(orders) > 1
    scale = functools.partial(_kronecker_trace_scale, tuple(orders), _sizes(ctx.phi)) if kronecker else None
    return Statistics(tuple(samples), tuple(-0.5 for _ in samples), _power(ctx), scale=scale)


def _sizes(phi: Structure) -> tuple[int, ...]:
    return tuple(part.shape[0] for part in simple_parts(phi))


def _plus_identity(S: torch.Tensor, c: float) -> torch.Tensor:
    """S + c·I for a part's statistic: a matrix, a diagonal (vector) or a scalar's (c/d·d = c)."""
    if S.ndim == 2:
        return S + c * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    return S + c


def _kronecker_trace_scale(
    orders: tuple[int, ...], sizes: tuple[int, ...], statistics: Sequence[torch.Tensor]
) -> list[torch.Tensor | float]:
    """tr(C)^((K−1)/2K) for every part of each Kronecker group of K consecutive parts (see
    `whitening_statistics`), tr(C) the geometric mean of the group's traces; 1 outside a Kronecker."""
    traces = [_trace(S, d) for S, d in zip(statistics, sizes)]
    scales: list[torch.Tensor | float] = []
    i = 0
    while i < len(orders):
        K = orders[i]
        group = torch.stack(traces[i : i + K])
        mean = group.log().mean().exp()
        scales += [mean ** ((K - 1) / (2 * K)) if K > 1 else 1.0] * K
        i += K
    return scales


def _trace(S: torch.Tensor, d: int) -> torch.Tensor:
    """tr of a part's statistic: a matrix's trace, a diagonal's sum, a scalar part's d·s."""
    if S.ndim == 2:
        return torch.diagonal(S).sum()
    return S.sum() if S.ndim == 1 else S * d


def _power(ctx: BlockContext) -> int:
    if ctx.power is None:
        raise ValueError("statistics need the structure's power (Family.power); the optimizer passes it")
    return ctx.power


@dataclasses.dataclass(frozen=True)
class GradientStatistics(BlockwiseObjective):
    """Second moments of the placed gradient, for the `ClosedForm` fitter: Shampoo (Gupta et al. 2018)
    with a Kronecker φ — L = Σ GGᵀ, R = Σ GᵀG for a matrix, P = L^(−1/4) ⊗ R^(−1/4), the k mode Grams
    and (·)^(−1/(2k)) for an order-k tensor — and full-matrix (Dense) or diagonal (Diagonal) AdaGrad
    with a structure that is not a Kronecker product (P = S^(−1/2)).

    With K = 1 (full-matrix or diagonal AdaGrad) it is the closed form of PSGD's whitening criterion
    Σ_t E[g_tᵀPg_t + v_tᵀP⁻¹v_t] (psgd_torch's table: P⁻² = Σ g gᵀ), as `Fisher` with damping 0 gives
    it; for a Kronecker φ Shampoo's roots −1/(2K) differ from that criterion's Kronecker optimum (the
    −1/2 roots with a trace factor of `whitening_statistics`, which `Fisher` gives).  The gradient is
    the one the step uses (with the optimizer's weight decay added).

    Attributes:
        root: p in every part's (S + εI)^(−1/p); None: 2K, K the number of Kronecker factors
            (Gupta et al.; Distributed Shampoo's default, its ``inv_root_override`` otherwise).

    Raises:
        TypeError, ValueError: root not an int ≥ 1.
    """

    root: int | None = None

    reads_cache: ClassVar[bool] = False
    gives_statistics: ClassVar[bool] = True
    gives_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.root is not None:
            check_number("GradientStatistics", "root", self.root, 1, integer=True)

    def evaluate(
        self, params: list[torch.Tensor], closure: Callable[[], Any] | None, generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        self.check_inputs(inputs)
        return closure_evaluation(closure, params, "GradientStatistics")

    def meta_grad(self, ctx: BlockContext) -> Statistics:
        return shampoo_statistics(ctx, ctx.grad, self.root)


def factored_tikhonov(damping: float, statistics: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """K-FAC's factored Tikhonov damping (Martens & Grosse 2015, §6.3) for P = (Ḡ + γ_G I)⁻¹ ⊗
    (Ā + γ_A I)⁻¹: with γ = √λ and π = √((tr Ā/d_A)/(tr Ḡ/d_G)), γ_A = π√λ and γ_G = √λ/π, so that
    (Ā + γ_A I) ⊗ (Ḡ + γ_G I) = Ā ⊗ Ḡ + λI + (cross terms), the cross terms balanced by π.

    Args:
        damping: λ ≥ 0.
        statistics: (Ḡ, Ā): the output-side and the input-side factor, in that order (the order of
            `TwoSided`'s Kronecker(A_out, B_in)).

    Returns:
        [γ_G, γ_A] (0-d tensors).
    """
    G, A = statistics
    pi = torch.sqrt(_mean_eigenvalue(A) / _mean_eigenvalue(G))
    root = math.sqrt(damping)
    return [root / pi, root * pi]


def _mean_eigenvalue(S: torch.Tensor) -> torch.Tensor:
    """tr(S)/d of a statistic: a matrix, a diagonal (vector) or a scalar part's."""
    return torch.diagonal(S).mean() if S.ndim == 2 else S.mean()


def supported_layer(module: torch.nn.Module, name: str, owner: str) -> bool:
    """Whether K-FAC's statistics are defined for this module: an `nn.Linear`, or an `nn.Conv2d` with
    groups = 1, zero padding and a numeric (or "valid", or realisable "same") padding.

    Raises:
        ValueError: a Conv2d whose patches cannot be extracted by `F.unfold` (groups ≠ 1, a padding
            mode other than "zeros", an asymmetric "same" padding), naming the layer.
    """
    if isinstance(module, torch.nn.Linear):
        return True
    if not isinstance(module, torch.nn.Conv2d):
        return False
    if module.groups != 1 or module.padding_mode != "zeros":
        raise ValueError(
            f"{owner}: the Conv2d layer '{name}' has groups={module.groups}, padding_mode="
            f"{module.padding_mode!r}; K-FAC's patch statistics (KFC, Grosse & Martens 2016) are "
            "implemented for groups=1 and zero padding. Exclude its parameters from this optimizer"
        )
    _conv_padding(module, name, owner)
    return True


def _conv_padding(module: torch.nn.Conv2d, name: str, owner: str) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in totals):
            raise ValueError(
                f"{owner}: the Conv2d layer '{name}' pads asymmetrically (padding='same' with an even "
                f"receptive field {module.kernel_size}, dilation {module.dilation}); give a numeric padding"
            )
        return (totals[0] // 2, totals[1] // 2)
    return tuple(module.padding)  # type: ignore[return-value]


def layer_inputs(module: torch.nn.Module, a: torch.Tensor, name: str, owner: str) -> torch.Tensor:
    """A layer's input as rows (N·T, d_in): a Linear's (N, …, d_in) flattened; a Conv2d's patches
    (N·H'·W', c_in·kh·kw) in the order of ``weight.reshape(c_out, -1)`` (KFC's expansion)."""
    if isinstance(module, torch.nn.Conv2d):
        patches = F.unfold(
            a,
            module.kernel_size,
            dilation=module.dilation,
            padding=_conv_padding(module, name, owner),
            stride=module.stride,
        )
        return patches.mT.reshape(-1, patches.shape[1])
    return a.reshape(-1, a.shape[-1])


def layer_output_gradients(module: torch.nn.Module, g: torch.Tensor) -> torch.Tensor:
    """A layer's output gradients as rows (N·T, d_out) (a Conv2d's channels last)."""
    if isinstance(module, torch.nn.Conv2d):
        return g.flatten(2).mT.reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


@dataclasses.dataclass
class _Sums:
    """A layer's sums since the last step: Σ aaᵀ, Σ a, the rows, Σ_passes N·Σ ssᵀ, the passes."""

    xx: torch.Tensor
    x: torch.Tensor
    rows: int
    gg: torch.Tensor
    passes: int


def _statistics_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _LayerHook:
    """The forward hook `LayerStatistics` puts on one layer: in a forward pass with gradients enabled,
    it hooks the layer's output tensor, whose gradient hook adds the layer's sums.  It holds its
    objective weakly, and a copy of it (a deepcopy or pickle of the model) is inert: a copied model
    never feeds the original optimizer, and pickles."""

    def __init__(self, objective: LayerStatistics, name: str) -> None:
        self.ref: weakref.ref | None = weakref.ref(objective)
        self.name = name

    def __call__(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        objective = None if self.ref is None else self.ref()
        if objective is None or objective._layers.get(self.name) is not module:
            return
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
            return
        a = inputs[0].detach()
        output.register_hook(functools.partial(_output_gradient_hook, self.ref, self.name, module, a))

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ref, self.name = None, state["name"]


def _output_gradient_hook(
    ref: weakref.ref, name: str, module: torch.nn.Module, a: torch.Tensor, g: torch.Tensor
) -> None:
    objective = ref()
    if objective is not None:
        objective._accumulate(name, module, a, g.detach())


class LayerStatistics(Objective):
    """K-FAC's Kronecker factors of each layer's Fisher block (Martens & Grosse 2015; KFC's
    matrixisation of Conv2d, Grosse & Martens 2016), from module hooks, for the `ClosedForm` fitter:
    P = (Ḡ + γ_G I)⁻¹ ⊗ (Ā + γ_A I)⁻¹ on the layer's [W | b] (placement `precondalg.placement.Layer`),
    i.e. the preconditioned gradient (Ḡ + γ_G I)⁻¹ [G_W | g_b] (Ā + γ_A I)⁻¹, γ by `factored_tikhonov`.
    With APO's `Eigenbasis` structure (family `eigenbasis`) instead of `kronecker`, the closed form is
    EKFAC's eigenbasis form of the exact damped inverse (Ḡ ⊗ Ā + λI)⁻¹: B, A the eigenvectors of Ḡ and
    Ā, S² = 1/(λ_Ḡ,i λ_Ā,j + λ) (APO's Corollary 2, Bae et al. 2022).

    The statistics (the empirical Fisher: the gradients of the loss that is backpropagated):

    - Ā = (1/R) Σ_rows ā āᵀ, ā = [a; 1] with the homogeneous 1 when the block holds the bias (a bias
      alone: Ā = [1]); the rows are the N examples of the batch (the layer input's first dimension)
      times any further positions (a Linear's sequence dimensions, a Conv2d's output locations: KFC's
      patches a), R their number.
    - Ḡ = N Σ_rows s sᵀ, s the gradient of the loss with respect to the layer's output (pre-activation),
      for a loss that is the MEAN over the N examples: N·s is then the per-example gradient, and
      Ḡ = (1/N) Σ_n (N s_n)(N s_n)ᵀ.  This is curvlinops' convention (``KFACLinearOperator``, "expand",
      reduction "mean"), against which the factors are tested.  The per-example loss is whatever the
      batch mean averages: with ``nn.MSELoss()`` (a mean over all N·C entries) it is (1/C)‖f − y‖², and
      Ḡ is C times smaller than curvlinops' (which rescales that loss by √C); a constant factor of Ḡ
      is one of λ and of the learning rate.

    Hooks: a forward hook on every `nn.Linear` and `nn.Conv2d` of `model` is registered when the
    objective is made; in a forward pass with gradients enabled it puts a hook on the layer's output
    tensor, which in the backward pass adds the layer's sums (so forward passes under ``torch.no_grad``
    or without a backward count for nothing).  Several backward passes before a step add up (Ā over all
    their rows, Ḡ averaged over the passes).  ``step()`` uses and clears the sums; a preconditioned layer
    with none since the last step keeps its preconditioner, with a warning that counts such layers.
    `remove_hooks` takes the hooks off; they are also removed when the objective is garbage collected.
    A deepcopy or a pickle of the optimizer (and so of this objective) holds the copied model, on
    which the copy registers its own hooks; the hooks that a copied model carries along are inert (a
    deepcopy of the model alone never feeds this objective, and the model pickles).

    Args:
        model: the module whose layers are preconditioned.
        damping: λ ≥ 0 of the factored Tikhonov damping.

    Raises:
        TypeError: model not an nn.Module.
        ValueError: negative damping; a Conv2d layer whose patches are not supported (see
            `supported_layer`); no Linear or Conv2d layer in the model.
    """

    reads_cache: ClassVar[bool] = False
    gives_statistics: ClassVar[bool] = True
    gives_gradients: ClassVar[bool] = False
    sets_eigenbasis: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, damping: float = 1e-3) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"LayerStatistics: 'model' must be a torch.nn.Module; got {type(model).__name__}")
        check_number("LayerStatistics", "damping", damping, 0.0)
        self.model = model
        self.damping = float(damping)
        self._register()
        if not self._layers:
            raise ValueError(
                f"LayerStatistics: the model ({type(model).__name__}) has no nn.Linear or nn.Conv2d layer"
            )

    def _register(self) -> None:
        """Find the supported layers, map their parameters to them and hook them."""
        self._layers = {
            name: module
            for name, module in self.model.named_modules()
            if supported_layer(module, name, "LayerStatistics")
        }
        self._owner = {p: name for name, m in self._layers.items() for p in m.parameters(recurse=False)}
        self._sums: dict[str, _Sums] = {}
        for module in self._layers.values():  # inert hooks that came with a copied model
            for key, hook in list(module._forward_hooks.items()):
                if isinstance(hook, _LayerHook) and hook.ref is None:
                    del module._forward_hooks[key]
        handles = [m.register_forward_hook(_LayerHook(self, name)) for name, m in self._layers.items()]
        self._finalizer = weakref.finalize(self, _remove, handles)

    def remove_hooks(self) -> None:
        """Take this objective's hooks off the model (a later step finds no statistics and warns)."""
        self._finalizer()

    def layer_of(self, params: Sequence[torch.Tensor]) -> str | None:
        """The name of the supported layer that owns these parameters (the first one's), or None."""
        names = {self._owner.get(p) for p in params}
        return names.pop() if len(names) == 1 else None

    def _accumulate(self, name: str, module: torch.nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        dtype = _statistics_dtype(a)
        x = layer_inputs(module, a, name, "LayerStatistics").to(dtype)
        s = layer_output_gradients(module, g).to(dtype)
        n = a.shape[0]
        sums = self._sums.get(name)
        xx, xs, gg = x.mT @ x, x.sum(0), n * (s.mT @ s)
        if sums is None:
            self._sums[name] = _Sums(xx, xs, x.shape[0], gg, 1)
        else:
            rows, passes = sums.rows + x.shape[0], sums.passes + 1
            self._sums[name] = _Sums(sums.xx + xx, sums.x + xs, rows, sums.gg + gg, passes)

    def _take(self) -> dict[str, _Sums]:
        sums, self._sums = self._sums, {}
        return sums

    def evaluate(
        self, params: list[torch.Tensor], closure: Callable[[], Any] | None, generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        self.check_inputs(inputs)
        evaluation = closure_evaluation(closure, params, "LayerStatistics")
        return dataclasses.replace(evaluation, data={"layers": self._take()})

    def evaluate_gradients(
        self, params: list[torch.Tensor], closure: Callable[[], Any] | None, generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        """A step that does not fit: the gradients, and this step's sums are dropped."""
        evaluation = super().evaluate_gradients(params, closure, generator, **inputs)
        self._take()
        return evaluation

    def check_block(self, params: Sequence[torch.Tensor], placement: Any) -> None:
        """Refuse, at construction, a block that is not one hooked layer's parameters placed by
        `precondalg.placement.Layer`."""
        from precondalg.placement import Layer

        shapes = [tuple(p.shape) for p in params]
        if not isinstance(placement, Layer):
            raise ValueError(
                "LayerStatistics: K-FAC's factors act on a layer's [W | b]; the placement must be "
                f"precondalg.placement.Layer(model); got {placement!r} for parameters of shapes {shapes}"
            )
        if self.layer_of(params) is None:
            raise ValueError(
                f"LayerStatistics: the parameters of shapes {shapes} are not the weight and bias of one "
                "nn.Linear or nn.Conv2d layer of the objective's model"
            )

    def local_answers(self) -> bool:
        """The layer statistics are this rank's batch's (hooks see its activations and output
        gradients): a data-parallel optimizer averages them (each is a per-example mean)."""
        return True

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Statistics | None]:
        sums = evaluation.data["layers"]
        answers: list[Statistics | None] = []
        missing = []
        for ctx in blocks:
            name = self.layer_of(ctx.params)
            layer = sums.get(name)
            if layer is None:
                missing.append(repr(name))
                answers.append(None)
                continue
            has_weight = any(p.ndim >= 2 for p in ctx.params)
            has_bias = any(p.ndim == 1 for p in ctx.params)
            A = _input_factor(layer, has_weight, has_bias)
            G = layer.gg / layer.passes
            if isinstance(ctx.phi, Eigenbasis):  # EKFAC's form: the exact damped inverse (Ḡ ⊗ Ā + λI)⁻¹
                damping = functools.partial(_constant, self.damping)
                answers.append(Statistics((G, A), (-1.0,), _power(ctx), damping))
                continue
            answers.append(
                Statistics(
                    tuple(as_part(part, M) for part, M in zip(simple_parts(ctx.phi), (G, A))),
                    (-1.0, -1.0),
                    _power(ctx),
                    functools.partial(factored_tikhonov, self.damping),
                )
            )
        if missing:
            warnings.warn(
                f"LayerStatistics: {len(missing)} of {len(blocks)} layers ({', '.join(missing)}) had no "
                "statistics this step (no forward pass with gradients enabled and backward pass through "
                "them since the last step); their preconditioners were not refitted",
                stacklevel=4,
            )
        return answers

    def __getstate__(self) -> dict[str, Any]:
        """For deepcopy and pickle: the model and damping; hooks and sums are the copy's own."""
        return {"model": self.model, "damping": self.damping}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model, self.damping = state["model"], state["damping"]
        self._register()

    def __repr__(self) -> str:
        return f"LayerStatistics(model={type(self.model).__name__}, damping={self.damping!r})"


def _input_factor(sums: _Sums, has_weight: bool, has_bias: bool) -> torch.Tensor:
    """Ā for the block: [[Σaaᵀ, Σa], [Σaᵀ, R]]/R with the bias's homogeneous coordinate, Σaaᵀ/R
    without a bias, [1] for a bias alone."""
    R = sums.rows
    if not has_weight:
        return torch.ones(1, 1, dtype=sums.xx.dtype, device=sums.xx.device)
    if not has_bias:
        return sums.xx / R
    top = torch.cat([sums.xx, sums.x[:, None]], 1)
    bottom = torch.cat([sums.x, sums.x.new_tensor([R])])[None]
    return torch.cat([top, bottom], 0) / R


def _constant(value: float, statistics: Sequence[torch.Tensor]) -> list[float]:
    """The same damping λ for the one part (an `Eigenbasis`)."""
    return [value]


def _remove(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
