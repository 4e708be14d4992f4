"""The noisy quadratic bowl of LODO (Liao et al. 2023, §5.1, Fig. 2, Table 1), exactly as the authors' code.

The task (``tasks/noisy_quadratic_bowl.py`` of the official code, float64 here):

- n = 100, ``H = U diag(λ) Uᵀ`` with ``λ = exp(linspace(ln λ_min, 0, n))`` (geometric from λ_min = 1e-3
  to 1) and U the Q factor of the QR decomposition of an n×n standard Gaussian matrix;
- the centre c starts at 0 and takes a random-walk step ``c ← c + N(0, σ²I)`` at **every** loss
  evaluation, *before* the loss is evaluated (σ = 1 in the code);
- ``ℓ(x) = ½(x − c)ᵀH(x − c)``, gradient ``H(x − c)``, start x₀ = 0.

`run` drives any torch optimizer on it (one loss and gradient evaluation per step, as every optimizer of
the paper's Table 1 that uses one gradient per step) and records the loss of every step and, every M
steps, the inverse-Hessian error ``‖I − GH‖_F/√n`` of optimizers that expose their G (precondalg's
optimizers through ``preconditioners()``, G = group lr × P; `NewtonOracle`), exactly (dense) and
optionally with the code's estimate from 100 random unit vectors u, ``√mean‖u − GHu‖²``.

Reference values (σ² the noise variance; derived for this project, validated by the theory check LODO-11):

- the Newton oracle (x jumps to the minimiser of the loss just evaluated, the current centre) has the
  stationary loss ``½σ² tr(H)`` = 7.4118 for n = 100, λ_min = 1e-3 (the paper's 7.41), whatever U;
- SGD with a fixed learning rate η has the stationary loss ``Σᵢ σ²/(2η(2 − ηλᵢ))``, smallest at
  η ≈ 1.751 (19.09 for the paper's bowl; 27.61 at η = 1);
- heavy-ball momentum (torch's convention) has an exact stationary loss too (`momentum_loss`, from a 2×2
  discrete Lyapunov equation per eigenvalue); momentum does beat the best SGD on this bowl: 16.59 with
  the paper's tuned lr 1.394, μ 0.529, and 15.34 at the best (η, μ) ≈ (1.943, 0.404).

Examples:
    >>> import torch
    >>> from precondalg.experiments.noisy_bowl import NoisyBowl, run
    >>> result = run(lambda p: torch.optim.SGD(p, lr=1.0), 2000, n=20, seed=0)
    >>> result.losses.shape
    torch.Size([2000])
    >>> round(NoisyBowl(100).newton_loss(), 4)
    7.4118
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "PAPER_NEWTON_LOSS",
    "BowlRun",
    "NewtonOracle",
    "NoisyBowl",
    "best_sgd",
    "bowl_eigenvalues",
    "hessian_error",
    "hessian_error_probe",
    "inverse_hessian_estimate",
    "momentum_loss",
    "newton_loss",
    "run",
    "sgd_loss",
]

F64 = torch.float64
PAPER_NEWTON_LOSS = 7.4118
"""½σ²tr(H) for the paper's bowl (n = 100, λ geometric from 1e-3 to 1, σ² = 1); Table 1 prints 7.41."""


def bowl_eigenvalues(n: int = 100, lam_min: float = 1e-3) -> torch.Tensor:
    """The Hessian's eigenvalues as the authors' code draws them: ``exp(linspace(ln λ_min, ln 1, n))``.

    Args:
        n: the dimension.
        lam_min: the smallest eigenvalue (the largest is 1).

    Returns:
        Tensor of shape (n,), float64, increasing from λ_min to 1.
    """
    if n < 1 or not lam_min > 0:
        raise ValueError(f"bowl_eigenvalues: need n >= 1 and lam_min > 0; got n={n}, lam_min={lam_min}")
    return torch.exp(torch.linspace(math.log(lam_min), 0.0, n, dtype=F64))


class NoisyBowl:
    """The noisy quadratic bowl: ``ℓ(x) = ½(x − c)ᵀH(x − c)`` with a centre that random-walks at every
    loss evaluation (Liao et al. 2023, §5.1; the code's ``NoisyQuadraticBowlTask``).

    One `torch.Generator` seeded with `seed` draws U (the QR of an n×n Gaussian) and then, unless
    `walk_seed` is given, the centre's steps, so that the same seed gives the same H and the same walk
    for every optimizer that evaluates one loss per step.

    Args:
        n: the dimension (paper: 100).
        sigma: the standard deviation σ of each centre step (paper: 1); the noise variance is σ².
        lam_min: the smallest Hessian eigenvalue (paper: 1e-3; the largest is 1).
        seed: seeds the generator of U (and of the walk, without `walk_seed`).
        walk_seed: seeds a separate generator for the centre's walk (same H, another walk).

    Attributes:
        n: the dimension.
        sigma: σ.
        eigenvalues: λ, shape (n,).
        U: the orthogonal eigenvectors, shape (n, n).
        H: ``U diag(λ) Uᵀ``, shape (n, n), exactly symmetric.
        center: the current centre c, shape (n,).
        evaluations: how many times the centre has moved.
    """

    def __init__(
        self,
        n: int = 100,
        sigma: float = 1.0,
        lam_min: float = 1e-3,
        seed: int = 0,
        walk_seed: int | None = None,
    ) -> None:
        if not sigma >= 0:
            raise ValueError(f"NoisyBowl: sigma must be >= 0; got {sigma}")
        self.n, self.sigma, self.lam_min, self.seed = n, float(sigma), lam_min, seed
        self.eigenvalues = bowl_eigenvalues(n, lam_min)
        self._generator = torch.Generator().manual_seed(seed)
        self.U = torch.linalg.qr(torch.randn(n, n, generator=self._generator, dtype=F64)).Q
        H = (self.U * self.eigenvalues) @ self.U.mT
        self.H = (H + H.mT) / 2
        self._walk = self._generator if walk_seed is None else torch.Generator().manual_seed(walk_seed)
        self.center = torch.zeros(n, dtype=F64)
        self._step = torch.empty(n, dtype=F64)
        self.evaluations = 0

    def initial_point(self) -> torch.Tensor:
        """x₀ = 0, shape (n,), float64."""
        return torch.zeros(self.n, dtype=F64)

    def perturb(self) -> None:
        """Move the centre one step of the walk: ``c ← c + σ·N(0, I)``."""
        torch.randn(self.n, generator=self._walk, dtype=F64, out=self._step)
        self.center.add_(self._step, alpha=self.sigma)
        self.evaluations += 1

    def loss(self, x: torch.Tensor, new_batch: bool = True) -> torch.Tensor:
        """``½(x − c)ᵀH(x − c)`` (differentiable in x), after one walk step when `new_batch` (the code's
        ``__call__(x, new_batch)``).

        Args:
            x: the point, shape (n,).
            new_batch: move the centre first (every training evaluation); False freezes the noise.

        Returns:
            A scalar tensor.
        """
        if new_batch:
            self.perturb()
        e = x - self.center
        return 0.5 * e @ (self.H @ e)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``H(x − c)`` at the current centre (no walk step), shape (n,)."""
        return self.H @ (x - self.center)

    def sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training evaluation: a walk step, then the loss and its gradient at x (no autograd).

        Args:
            x: the point, shape (n,).

        Returns:
            (loss, gradient): a scalar tensor and a tensor of shape (n,).
        """
        self.perturb()
        e = torch.sub(x, self.center)
        g = torch.mv(self.H, e)
        return torch.dot(e, g).mul_(0.5), g

    def newton_loss(self) -> float:
        """The Newton oracle's stationary loss ½σ² tr(H) of this bowl."""
        return newton_loss(self.eigenvalues, self.sigma**2)


class NewtonOracle(torch.optim.Optimizer):
    """The Newton oracle: x jumps to the minimiser of the loss just evaluated (the current centre).

    Equivalent to ``x ← x − H⁻¹∇ℓ(x)``; it copies the centre, so it is exact.  Its inverse-Hessian
    estimate is the exact H⁻¹.

    Args:
        params: the one tensor of shape (n,) that the bowl's loss is evaluated at.
        bowl: the `NoisyBowl`.
    """

    def __init__(self, params: Sequence[torch.Tensor], bowl: NoisyBowl) -> None:
        super().__init__(list(params), {})
        tensors = [p for g in self.param_groups for p in g["params"]]
        if len(tensors) != 1 or tensors[0].shape != (bowl.n,):
            shapes = [tuple(p.shape) for p in tensors]
            raise ValueError(f"NewtonOracle: needs one parameter of shape ({bowl.n},); got shapes {shapes}")
        self.bowl = bowl

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        """Set x to the current centre."""
        self.param_groups[0]["params"][0].copy_(self.bowl.center)

    def inverse_hessian_estimate(self) -> torch.Tensor:
        """H⁻¹, shape (n, n)."""
        U, lam = self.bowl.U, self.bowl.eigenvalues
        return (U / lam) @ U.mT


def inverse_hessian_estimate(opt: torch.optim.Optimizer) -> torch.Tensor | None:
    """The dense G an optimizer steps with (x ← x − G·(its gradient statistic)), or None if it has none.

    precondalg's optimizers (``preconditioners()``): G = group lr × P, P applied to the identity; the
    preconditioner must cover the whole (one) parameter.  Objects with ``inverse_hessian_estimate()``
    (`NewtonOracle`): that matrix.

    Returns:
        Tensor of shape (n, n), or None.

    Raises:
        ValueError: a precondalg optimizer whose preconditioners do not cover exactly one parameter.
    """
    if hasattr(opt, "inverse_hessian_estimate"):
        return opt.inverse_hessian_estimate()
    if not hasattr(opt, "preconditioners"):
        return None
    blocks = opt.preconditioners()
    if len(blocks) != 1 or len(blocks[0][0]) != 1:
        raise ValueError(
            "inverse_hessian_estimate: needs one preconditioner over one parameter; got "
            f"{[[tuple(p.shape) for p in params] for params, _ in blocks]}"
        )
    (param,), P = blocks[0]
    lr = next(g["lr"] for g in opt.param_groups if any(p is param for p in g["params"]))
    n = param.numel()
    return float(lr) * (P @ torch.eye(n, dtype=F64))


def hessian_error(G: torch.Tensor, H: torch.Tensor) -> float:
    """The exact inverse-Hessian error ``‖I − GH‖_F/√n`` (Liao et al. 2023, Fig. 2).

    Args:
        G: shape (n, n).
        H: shape (n, n).
    """
    n = H.shape[0]
    return float(torch.linalg.matrix_norm(torch.eye(n, dtype=F64) - G.to(F64) @ H) / math.sqrt(n))


def hessian_error_probe(G: torch.Tensor, H: torch.Tensor, probes: int, generator: torch.Generator) -> float:
    """The authors' estimate of ``‖I − GH‖_F/√n``: ``√mean‖u − GHu‖²`` over `probes` random unit vectors
    u (a normalised Gaussian; E‖Mu‖² = ‖M‖²_F/n for such u).

    Args:
        G: shape (n, n).
        H: shape (n, n).
        probes: the number of vectors (the code: 100).
        generator: draws the vectors (keep it apart from the bowl's walk).
    """
    u = torch.randn(H.shape[0], probes, generator=generator, dtype=F64)
    u = u / torch.linalg.vector_norm(u, dim=0)
    r = u - G.to(F64) @ (H @ u)
    return float(torch.sqrt((r**2).sum(0).mean()))


# ----------------------------------------------------------------------------------- references
def _lam(eigenvalues: torch.Tensor | Sequence[float]) -> np.ndarray:
    return np.asarray(torch.as_tensor(eigenvalues, dtype=F64).cpu().numpy(), dtype=np.float64)


def newton_loss(eigenvalues: torch.Tensor | Sequence[float], sigma2: float = 1.0) -> float:
    """The Newton oracle's stationary loss ½σ² tr(H) = ½σ² Σλᵢ."""
    return 0.5 * sigma2 * float(_lam(eigenvalues).sum())


def sgd_loss(eigenvalues: torch.Tensor | Sequence[float], lr: float, sigma2: float = 1.0) -> float:
    """The stationary loss of SGD with a fixed learning rate η on the noisy bowl: ``Σᵢ σ²/(2η(2 − ηλᵢ))``
    (inf unless 0 < η < 2/λ_max).

    Per eigen-direction, with e the error after the walk step, ``e_{t+1} = (1 − ηλ)e_t − n_{t+1}``, whose
    stationary variance is σ²/(ηλ(2 − ηλ)); the loss is ½λ times that.
    """
    lam = _lam(eigenvalues)
    if not 0 < lr < 2 / lam.max():
        return math.inf
    return float((sigma2 / (2 * lr * (2 - lr * lam))).sum())


def best_sgd(eigenvalues: torch.Tensor | Sequence[float], sigma2: float = 1.0) -> tuple[float, float]:
    """The fixed learning rate that minimises `sgd_loss`, and that loss (η ≈ 1.751, 19.09 on the
    paper's bowl).

    Returns:
        (η*, stationary loss at η*).
    """
    from scipy.optimize import minimize_scalar

    lam = _lam(eigenvalues)
    hi = 2 / lam.max()
    res = minimize_scalar(
        lambda eta: sgd_loss(lam, eta, sigma2),
        bounds=(1e-9 * hi, hi * (1 - 1e-12)),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return float(res.x), float(res.fun)


def momentum_loss(
    eigenvalues: torch.Tensor | Sequence[float], lr: float, momentum: float, sigma2: float = 1.0
) -> float:
    """The stationary loss of heavy-ball SGD in torch's convention (``b ← μb + g``, ``x ← x − ηb``; the
    same as TF's ``v ← μv − ηg``, ``x ← x + v``) on the noisy bowl; inf where it is unstable.

    Per eigen-direction the state (e, b) evolves as ``b' = λe + μb``, ``e' = (1 − ηλ)e − ημb − n``, a
    linear system driven by noise of covariance diag(σ², 0); its stationary covariance solves a 2×2
    discrete Lyapunov equation, and the loss is ½λ·Var(e).  μ = 0 gives `sgd_loss`.
    """
    from scipy.linalg import solve_discrete_lyapunov

    total = 0.0
    W = np.diag([sigma2, 0.0])
    for lam in _lam(eigenvalues):
        A = np.array([[1 - lr * lam, -lr * momentum], [lam, momentum]])
        if np.max(np.abs(np.linalg.eigvals(A))) >= 1:
            return math.inf
        S = solve_discrete_lyapunov(A, W)
        total += 0.5 * lam * S[0, 0]
    return float(total)


# ----------------------------------------------------------------------------------------- runner
@dataclasses.dataclass
class BowlRun:
    """What `run` records.

    Attributes:
        losses: the training loss of every step (evaluated after that step's walk step, before the
            optimizer's update), shape (steps,), float64; NaN after a stop at a non-finite loss.
        hessian_steps: the steps at which the inverse-Hessian error was measured (before that step).
        hessian_error: the exact ‖I − GH‖_F/√n at those steps (empty if the optimizer exposes no G).
        hessian_error_probe: the code's 100-vector estimate at those steps (empty unless asked for).
        seconds: the wall time of the loop.
        stopped_at: the first step with a non-finite loss, if the run stopped there; else None.
        bowl: the bowl, as it is at the end.
        optimizer: the optimizer, as it is at the end.
    """

    losses: torch.Tensor
    hessian_steps: list[int]
    hessian_error: list[float]
    hessian_error_probe: list[float]
    seconds: float
    stopped_at: int | None
    bowl: NoisyBowl
    optimizer: torch.optim.Optimizer

    def late_mean(self, fraction: float = 0.1) -> float:
        """The mean loss over the last `fraction` of the steps (the paper's "infinite-step" loss uses the
        last 10%)."""
        k = max(1, int(round(len(self.losses) * fraction)))
        return float(self.losses[-k:].mean())


def run(
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    steps: int,
    *,
    bowl: NoisyBowl | None = None,
    n: int | None = None,
    sigma: float | None = None,
    lam_min: float | None = None,
    seed: int | None = None,
    hessian_every: int | None = None,
    probes: int = 0,
    probe_seed: int = 12345,
    dense_max: int = 512,
    stop_on_nonfinite: bool = True,
    progress: Callable[[int, float], None] | None = None,
    progress_every: int = 10_000,
) -> BowlRun:
    """Drive an optimizer on the noisy bowl for `steps` steps, one loss and gradient per step.

    Each step: the centre takes its walk step, the loss ½(x − c)ᵀH(x − c) and its gradient H(x − c) are
    evaluated at the current x (float64, no autograd), the gradient is put in ``x.grad`` and
    ``opt.step()`` is called.  The same seed gives every optimizer the same H and the same walk.

    Args:
        make_optimizer: builds the optimizer from ``[x]``, x of shape (n,), float64, starting at 0 (for
            the oracle: ``lambda p: NewtonOracle(p, bowl)`` with `bowl` passed here too).
        steps: the number of steps.
        bowl: the bowl to use (it continues its walk); default a new ``NoisyBowl(n, sigma, lam_min, seed)``.
        n: the new bowl's dimension (default 100); refused together with `bowl`.
        sigma: the new bowl's noise standard deviation (default 1.0); refused together with `bowl`.
        lam_min: the new bowl's smallest eigenvalue (default 1e-3); refused together with `bowl`.
        seed: the new bowl's seed (default 0); refused together with `bowl`.
        hessian_every: measure the inverse-Hessian error every this many steps (and after the last);
            None: never.  Only for optimizers with a G (`inverse_hessian_estimate`).
        probes: also the code's estimate with this many random unit vectors (0: not).
        probe_seed: seeds the probes' generator (apart from the walk).
        dense_max: the largest n for which the exact error is computed (dense n×n).
        stop_on_nonfinite: stop at the first non-finite loss (the remaining losses are NaN).
        progress: called as ``progress(step, loss)`` every `progress_every` steps.
        progress_every: see `progress`.

    Returns:
        A `BowlRun`.

    Raises:
        ValueError: steps < 1, or `bowl` together with a new bowl's n, sigma, lam_min or seed.
    """
    if steps < 1:
        raise ValueError(f"run: steps must be >= 1; got {steps}")
    described = {"n": n, "sigma": sigma, "lam_min": lam_min, "seed": seed}
    new = {k: v for k, v in described.items() if v is not None}
    if bowl is not None and new:
        raise ValueError(
            f"run: {sorted(new)} describe a new bowl, but 'bowl' was given too; pass one or the other"
        )
    bowl = bowl if bowl is not None else NoisyBowl(**new)
    x = bowl.initial_point().requires_grad_(True)
    opt = make_optimizer([x])
    losses: list[float] = []
    h_steps: list[int] = []
    h_err: list[float] = []
    h_probe: list[float] = []
    probe_gen = torch.Generator().manual_seed(probe_seed)

    def measure(t: int) -> None:
        G = inverse_hessian_estimate(opt)
        if G is None:
            return
        h_steps.append(t)
        if bowl.n <= dense_max:
            h_err.append(hessian_error(G, bowl.H))
        if probes:
            h_probe.append(hessian_error_probe(G, bowl.H, probes, probe_gen))

    stopped_at = None
    start = time.perf_counter()
    for t in range(steps):
        if hessian_every and t % hessian_every == 0:
            measure(t)
        with torch.no_grad():
            loss, g = bowl.sample(x.detach())
        value = float(loss)
        losses.append(value)
        if stop_on_nonfinite and not math.isfinite(value):
            stopped_at = t
            break
        x.grad = g
        opt.step()
        if progress is not None and (t + 1) % progress_every == 0:
            progress(t + 1, value)
    if hessian_every and stopped_at is None:
        measure(steps)
    seconds = time.perf_counter() - start
    losses += [math.nan] * (steps - len(losses))
    return BowlRun(torch.tensor(losses, dtype=F64), h_steps, h_err, h_probe, seconds, stopped_at, bowl, opt)
