"""PSGD's criteria (Li 2019, §3–4): fit P to the pair (v, h) by minimising

    c(P) = Σ_k h_kᵀ P h_k + v_kᵀ P⁻¹ v_k    (paper Eq. 10 / Eq. 13, summed over the placed columns k),

whose minimiser satisfies P E[hhᵀ] P = E[vvᵀ].  v ~ N(0, I) is drawn from the optimizer's own
generator (checkpointed with it).

- `Newton`: h = H v, a Hessian-vector product of the loss (Eq. 9): by double backward through the
  closure's graph ("autograd": the closure returns the loss WITHOUT calling backward, as in
  psgd_torch), by finite differences h ≈ (∇L(θ + δv) − ∇L(θ))/δ with δ = √eps ("finite_difference",
  the psgd_np demo's variant; the closure may call backward or not), or forward-over-reverse with
  `torch.func` on a functional loss ("torch.func").  The optimizer sets every ``.grad``.
- `Fisher`: h = g + λv (Eqs. 11–13), from the gradient alone; the closure is optional and may follow
  either convention (torch.optim's: it calls backward; PSGD's: it only returns the loss).

`meta_grad` returns ∂c/∂φ by `torch.func.grad` through P_φ = form(φ) (its product and its solve);
with the `LieGroup` fitter this becomes PSGD's relative gradient (Eq. 18) and step (Eq. 20).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.func import grad, grad_and_value, jvp

from precondalg._checks import check_choice, check_number
from precondalg._tensors import shard_like
from precondalg.objectives.base import (
    BlockContext,
    BlockwiseObjective,
    Evaluation,
    RelativeGradient,
    closure_evaluation,
    functional_outputs,
    loss_gradients,
    parameter_names,
    refuse_sharded,
    set_grads,
    watch_gradients,
)
from precondalg.objectives.statistics import Statistics, unfold, whitening_statistics
from precondalg.structures import (
    Dense,
    Diagonal,
    Kronecker,
    KroneckerSum,
    Normalization,
    Scalar,
    Structure,
    Triangular,
    gram,
    is_lie_group,
    lie_project_gram,
)

__all__ = ["Fisher", "Newton", "closed_form_relative_gradient", "criterion", "has_closed_form"]


def criterion(P: Structure, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """c = Σ_k h_kᵀ P h_k + v_kᵀ P⁻¹ v_k for h, v of shape (n, k) (PSGD Eq. 10)."""
    return (h * (P @ h)).sum() + (v * P.solve(v)).sum()


def _draw(params: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """v ~ N(0, I) per parameter, drawn on the CPU generator then moved (same draws on every device), in
    the parameter's dtype (float32 for float16/bfloat16 ones); for an FSDP2-sharded parameter the whole
    v (the same on every rank: the preconditioner is fitted on whole tensors; `shard_like` gives the
    shard where v meets a sharded tensor)."""
    draws = [torch.randn(p.shape, generator=generator, dtype=_draw_dtype(p)) for p in params]
    return [
        v if (v.dtype, v.device) == (p.dtype, p.device) else v.to(dtype=p.dtype, device=p.device)
        for v, p in zip(draws, params)
    ]


def _draw_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _per_param(
    params: list[torch.Tensor], **values: list[torch.Tensor]
) -> dict[str, dict[torch.Tensor, torch.Tensor]]:
    return {name: dict(zip(params, tensors)) for name, tensors in values.items()}


class _Criterion(BlockwiseObjective):
    """The PSGD criterion c(P) = Σ hᵀPh + vᵀP⁻¹v over the (v, h) pairs `evaluate` leaves in the extras;
    Newton and Fisher differ only in how they make h."""

    requires: ClassVar[tuple[str, ...]] = ("solve",)
    reads_cache: ClassVar[bool] = False
    gives_statistics: ClassVar[bool] = True

    def meta_grad(self, ctx: BlockContext) -> Structure | RelativeGradient | Statistics:
        """∂c/∂φ by `torch.func.grad`; or, when the fitter steps on the group (``ctx.relative``) and
        P_φ = φᵀφ with φ a group `closed_form_relative_gradient` covers, that relative gradient in
        closed form (the same R the fitter would derive from ∂c/∂φ, without differentiating a solve),
        as R/2 with scale 2; or, for a closed-form fitter (``ctx.statistics``), the second moments of h
        whose closed form is the criterion's minimiser P⁻² = E[hhᵀ] with v integrated out (E[vvᵀ] = I;
        a Kronecker φ gets the optimum for a Kronecker-factored E[hhᵀ], see `whitening_statistics`)."""
        h, v = ctx.extras["h"], ctx.extras["v"]
        if ctx.statistics:
            return self._statistics(ctx, h, v)
        if ctx.relative and ctx.form is gram and has_closed_form(ctx.phi):
            # R/2, and its 2 in the scale: the normalised step folds it in (no pass over R).
            return RelativeGradient(closed_form_relative_gradient(ctx.phi, h, v, 1.0), scale=2.0)
        return grad(lambda phi: criterion(ctx.form(phi), h, v))(ctx.phi)

    def _statistics(self, ctx: BlockContext, h: torch.Tensor, v: torch.Tensor) -> Statistics:
        """The second moments of h (see `whitening_statistics`)."""
        return whitening_statistics(ctx, h)

    @staticmethod
    def initial_scale(ctx: BlockContext) -> torch.Tensor:
        """psgd_torch's on-the-fly scale of Q₀ = s·I from the first pair (v, h):
        s = (mean v²)^(1/4)·(mean h⁴)^(−1/8), so that P₀ = s²I matches E[vvᵀ] against E[hhᵀ] in scale
        (P E[hhᵀ] P = E[vvᵀ]), with the fourth moment guarding against a few large entries.  It is
        infinite or NaN for an all-zero or non-finite h; the optimizer then keeps waiting for a usable
        pair (never a NaN preconditioner)."""
        h, v = ctx.extras["h"], ctx.extras["v"]
        return (v * v).mean() ** 0.25 * (h**4).mean() ** -0.125


_HVP = ("autograd", "finite_difference", "torch.func")


@dataclasses.dataclass(frozen=True, eq=False)
class Newton(_Criterion):
    """PSGD's Newton-type criterion, h = Hv (Li 2019, Eqs. 9–10).

    Three ways to the Hessian-vector product:

    - "autograd" (default): double backward through the graph of a closure that returns the loss
      WITHOUT calling backward (psgd_torch's convention; a closure that calls backward is refused
      with a ValueError saying so, since its graph is freed);
    - "finite_difference": (∇L(θ + δv) − ∇L(θ))/δ, δ = √eps, from two evaluations of the closure,
      which may call backward (torch.optim's convention) or not.  The second evaluation starts from
      the global random state the first one started from, so dropout draws the same masks (the state
      then continues from where the first left it); a BatchNorm in training mode updates its running
      statistics twice per fitted step (the second time at θ + δv);
    - "torch.func": forward-over-reverse, ``torch.func.jvp(torch.func.grad(L), (θ,), (v,))``, with L
      written functionally by `torch.func.functional_call` on `model`; the step then takes
      ``step(batch=(inputs, targets))`` and no closure.  The functional call does not write the
      module's buffers: a BatchNorm's running statistics are not updated (use "autograd" for such
      models, or update them yourself).

    Attributes:
        hvp: "autograd", "finite_difference" or "torch.func".
        model: the module (needed by "torch.func").
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (needed by "torch.func").

    Raises:
        ValueError: unknown hvp, or "torch.func" without model and loss_fn; at step time, a missing
            closure (or batch, for "torch.func").
    """

    hvp: str = "autograd"
    model: torch.nn.Module | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        check_choice("Newton", "hvp", self.hvp, _HVP)
        if self.hvp == "torch.func" and (self.model is None or self.loss_fn is None):
            raise ValueError(
                "Newton: hvp='torch.func' needs 'model' and 'loss_fn'; got "
                f"model={type(self.model).__name__}, loss_fn={type(self.loss_fn).__name__}"
            )
        if self.hvp != "torch.func" and (self.model is not None or self.loss_fn is not None):
            raise ValueError(
                f"Newton: 'model' and 'loss_fn' are used only by hvp='torch.func'; got hvp={self.hvp!r}, "
                "which differentiates the closure's loss: drop them, or pass hvp='torch.func'"
            )
        if self.model is not None and not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"Newton: 'model' must be a torch.nn.Module; got {type(self.model).__name__}")

    def check_block(self, params: Sequence[torch.Tensor], placement: Any) -> None:
        """Refuse, at construction, FSDP2's sharded parameters unless hvp="finite_difference" (the
        other two differentiate the loss themselves, which sharded parameters do not allow)."""
        if self.hvp != "finite_difference":
            refuse_sharded(
                params,
                f"Newton(hvp={self.hvp!r})",
                "their gradients come from backward() alone (FSDP2's hooks gather the parameters and "
                "reduce-scatter the gradients), so the loss cannot be differentiated twice or functionally",
                "Use hvp='finite_difference' with a closure that calls loss.backward() and returns the loss "
                "(PSGD(..., hvp='finite_difference'))",
            )

    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        here = True  # the gradients (and h) are this rank's unless a backward set them
        if self.hvp == "torch.func":
            vs = _draw(params, generator)
            loss, grads, hs = self._forward_over_reverse(params, vs, closure, inputs)
        else:
            self.check_inputs(inputs)
            self._require_closure(closure)
            with _explain_compiled_double_backward(self.hvp):
                rng = _global_rng_state()  # a stochastic closure (dropout) draws the same twice
                loss, grads, here = self._gradients(params, closure)
                vs = _draw(params, generator)  # after the closure: a refused one leaves the generator as is
                if self.hvp == "autograd":
                    with torch.enable_grad():
                        used = [
                            (p, g, v)
                            for p, g, v in zip(params, grads, vs)
                            if g is not None and g.requires_grad
                        ]
                        second = torch.autograd.grad(
                            [g for _, g, _ in used],
                            [p for p, _, _ in used],
                            grad_outputs=[v for _, _, v in used],
                            allow_unused=True,
                        )
                    of = {p: h for (p, _, _), h in zip(used, second)}
                    hs = [of.get(p) for p in params]
                else:
                    hs = self._finite_difference(params, closure, grads, vs, rng)
        set_grads(params, grads)  # unused parameters keep no gradient (skipped)
        hs = [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hs)]
        return Evaluation(loss.detach(), _per_param(params, v=vs, h=hs), local=("grad", "h") if here else ())

    def with_weight_decay(
        self, extras: dict[str, torch.Tensor], weight_decay: float, theta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """h = (H + wd·I)v: the Hessian-vector product of the loss plus the optimizer's L2 term."""
        return {**extras, "h": extras["h"] + weight_decay * extras["v"]}

    def evaluate_gradients(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        """The gradients alone, for a step that does not fit P (no v drawn, no Hessian-vector product),
        with the same requirements on the closure (or ``batch``) as `evaluate`."""
        here = True
        if self.hvp == "torch.func":
            loss_fn, primal, names = self._functional(params, closure, inputs)
            grads, loss = grad_and_value(loss_fn)(primal)
            grads = [grads[names[p]] for p in params]
        else:
            self.check_inputs(inputs)
            self._require_closure(closure)
            loss, grads, here = self._gradients(params, closure, create_graph=False)
        set_grads(params, [None if g is None else g.detach() for g in grads])
        return Evaluation(loss.detach(), local=("grad",) if here else ())

    def _require_closure(self, closure: Callable[[], Any] | None) -> None:
        if closure is None:
            raise ValueError(
                f"Newton(hvp={self.hvp!r}): step() needs a closure that returns the loss (the optimizer "
                "differentiates it for Hessian-vector products); got none"
            )

    def _gradients(
        self, params: list[torch.Tensor], closure: Callable[[], Any], create_graph: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor | None], bool]:
        """The closure's loss, ∇L (with its graph for "autograd", unless `create_graph` is False), and
        whether ∇L was taken here from the returned loss (not by the closure's backward), from either
        closure convention for "finite_difference"; "autograd" refuses a closure that calls backward
        (the graph is gone)."""
        owner = f"Newton(hvp={self.hvp!r})"
        for p in params:
            p.grad = None  # Newton sets every gradient itself; a closure's backward must not accumulate
        with torch.enable_grad(), watch_gradients(params) as called:
            loss = closure()
        if not called:
            graph = create_graph and self.hvp == "autograd"
            return loss, loss_gradients(loss, params, owner, create_graph=graph), True
        if self.hvp == "autograd":
            raise ValueError(
                f"{owner}: the closure called backward() (it set the parameters' gradients), which frees "
                "the graph that the Hessian-vector product differentiates again. Return the loss without "
                "calling backward (PSGD's convention: `def closure(): return loss_fn(model(x), y)`), or use "
                "hvp='finite_difference', which accepts either closure convention"
            )
        return loss, [p.grad for p in params], False

    def _functional(
        self, params: list[torch.Tensor], closure: Any, inputs: dict[str, Any]
    ) -> tuple[Callable[[dict[str, torch.Tensor]], torch.Tensor], dict[str, torch.Tensor], dict]:
        """For "torch.func": the loss as a function of the parameters by name, at which parameters,
        and each parameter's name."""
        if closure is not None or set(inputs) != {"batch"}:
            given = ["a closure"] * (closure is not None) + [f"{k}=..." for k in sorted(inputs)]
            got = ", ".join(given) or "nothing"
            raise TypeError(
                f"Newton(hvp='torch.func'): step() needs batch=(inputs, targets) and no closure; got {got}"
            )
        batch = inputs["batch"]
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                "Newton(hvp='torch.func'): 'batch' must be a pair (inputs, targets), as "
                f"loss_fn(model(inputs), targets) reads it; got {type(batch).__name__}"
            )
        names = parameter_names(self.model, params, "Newton(hvp='torch.func')")
        fixed = {name: p.detach() for p, name in names.items()}
        x, y = batch

        def loss(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.loss_fn(functional_outputs(self.model, {**fixed, **theta}, x), y)

        return loss, {names[p]: p.detach() for p in params}, names

    def _forward_over_reverse(
        self, params: list[torch.Tensor], vs: list[torch.Tensor], closure: Any, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        loss, primal, names = self._functional(params, closure, inputs)
        tangent = {names[p]: v for p, v in zip(params, vs)}
        try:
            (grads, value), (hvps, _) = jvp(grad_and_value(loss), (primal,), (tangent,))
        except RuntimeError as err:
            if "ZeroTensors are immutable" not in str(err):
                raise
            raise RuntimeError(
                "Newton(hvp='torch.func'): torch.func cannot take the forward-over-reverse derivative of "
                "this loss_fn (torch's F.mse_loss is one such: write it out, ((outputs - targets) ** 2)"
                f".mean()), or use hvp='autograd' with a closure. Torch said: {err}"
            ) from err
        return value, [grads[names[p]] for p in params], [hvps[names[p]] for p in params]

    def _finite_difference(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any],
        grads: list[torch.Tensor | None],
        vs: list[torch.Tensor],
        rng: tuple[torch.Tensor, list[torch.Tensor]],
    ) -> list[torch.Tensor | None]:
        """(∇L(θ + δv) − ∇L(θ))/δ, the shifted closure run with the global random state the first run
        started from (so that dropout and other random layers draw the same), which is then left where
        the first run left it."""
        delta = torch.finfo(params[0].dtype).eps ** 0.5
        saved = [p.detach().clone() for p in params]
        after = _global_rng_state()
        try:
            with torch.no_grad():
                for p, v in zip(params, vs):
                    p.add_(shard_like(v, p), alpha=delta)
            _set_global_rng_state(rng)
            _, shifted, _ = self._gradients(params, closure)
        finally:
            _set_global_rng_state(after)
            with torch.no_grad():  # restored exactly: θ + δv − δv is not θ in floating point
                for p, value in zip(params, saved):
                    p.copy_(value)
        return [None if g is None or gs is None else (gs - g) / delta for gs, g in zip(shifted, grads)]


def _global_rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's global random state: the CPU generator's and, where CUDA is initialised, every GPU's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def _set_global_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _explain_compiled_double_backward(hvp: str) -> Iterator[None]:
    """Say what to do when torch refuses to differentiate a `torch.compile`d model twice."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if hvp != "autograd" or not ("aot_autograd" in text or "donated buffers" in text):
            raise
        raise RuntimeError(
            "Newton(hvp='autograd') differentiates the loss twice, which torch does not support through a "
            "torch.compile'd model (aot_autograd); use Newton(hvp='finite_difference') with the same "
            f"closure, or Newton(hvp='torch.func', model=<the uncompiled module>, ...). Torch said: {text}"
        ) from err


@dataclasses.dataclass(frozen=True)
class Fisher(_Criterion):
    """PSGD's Fisher-type criterion, h = g + λv (Li 2019, Eqs. 11–13).

    Attributes:
        damping: λ ≥ 0.

    Raises:
        TypeError: damping not a number.
        ValueError: negative or NaN damping.
    """

    damping: float = 0.0

    def __post_init__(self) -> None:
        check_number("Fisher", "damping", self.damping, 0.0)

    def _statistics(self, ctx: BlockContext, h: torch.Tensor, v: torch.Tensor) -> Statistics:
        """The second moments of h = g + λv with v integrated out: those of g plus λ²I (the draw of v
        is not used, so the closed form does not depend on it)."""
        if not self.damping:
            return whitening_statistics(ctx, h)
        return whitening_statistics(ctx, h - self.damping * v, isotropic=self.damping**2)

    def with_weight_decay(
        self, extras: dict[str, torch.Tensor], weight_decay: float, theta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """h = (g + wd·θ) + λv: the whitened gradient is the one the optimizer steps with."""
        return {**extras, "h": extras["h"] + weight_decay * theta}

    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        self.check_inputs(inputs)
        evaluation = closure_evaluation(closure, params, "Fisher")
        vs = _draw(params, generator)
        gs = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        hs = [g + self.damping * shard_like(v, g) for g, v in zip(gs, vs)] if self.damping else gs
        local = evaluation.local + ("h",) * bool(evaluation.local)  # h = g + λv is as local as g
        return dataclasses.replace(evaluation, per_param=_per_param(params, v=vs, h=hs), local=local)


_CLOSED_FORM_GROUPS = (Triangular, Diagonal, Normalization, Dense, Scalar)


def has_closed_form(Q: Structure) -> bool:
    """Whether `closed_form_relative_gradient` covers Q: a simple group of `_CLOSED_FORM_GROUPS`, or a
    Kronecker product of them."""
    factors = Q.factors if isinstance(Q, Kronecker) else (Q,)
    return is_lie_group(Q) and all(type(f) in _CLOSED_FORM_GROUPS for f in factors)


def closed_form_relative_gradient(
    Q: Structure, h: torch.Tensor, v: torch.Tensor, factor: float = 2.0
) -> Structure:
    """PSGD's closed-form relative gradient of the criterion at P = QᵀQ (Li 2019, Eq. 18).

    R = 2·Π_𝔤(a aᵀ − b bᵀ) with a = Q h and b = Q⁻ᵀ v (paper Eq. 18; the 2019 code's
    ``triu(a aᵀ − b bᵀ)`` up to the factor 2, which the normalised step cancels).  For a Kronecker
    Q = Q₁ ⊗ ⋯ ⊗ Q_K the factor-i term is 2·Π_𝔤ᵢ(Aᵢ Aᵢᵀ − Bᵢ Bᵢᵀ) with Aᵢ the mode-i unfolding of
    Q h viewed as a tensor (the code's ``A Aᵀ`` and ``Aᵀ A`` for K = 2).  It equals
    `relative_gradient(Q, ∂c/∂Q)` from autograd (tested in tests/test_objectives.py).

    Args:
        Q: a Triangular, Diagonal, Normalization, Dense or Scalar, or a Kronecker of these.
        h: (n, k) placed h (Hv or g + λv).
        v: (n, k) placed v.
        factor: the factor in place of 2 (1: R/2, with no pass spent on the factor).
    """
    a, b = Q @ h, Q.solve_transpose(v)
    if isinstance(Q, Kronecker):
        dims = [f.shape[0] for f in Q.factors]
        return KroneckerSum(
            *[
                _times(factor, lie_project_gram(f, unfold(a, dims, i), unfold(b, dims, i)))
                for i, f in enumerate(Q.factors)
            ]
        )
    return _times(factor, lie_project_gram(Q, a, b))


def _times(factor: float, R: Structure) -> Structure:
    return R if factor == 1 else factor * R
