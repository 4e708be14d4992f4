"""The poorly conditioned two-layer linear regression of Rahimi & Recht (NIPS 2017 "test of time" talk,
notebook ``TwoLayerLinearNets.ipynb``), used by Bae et al. 2022 (APO, §5, Fig. 4 left; experiment
APO-E2 of the benchmarks).

The task, in float64:

- A ∈ R^{10×6} = U diag(s) Vᵀ with U (10×6, orthonormal columns) and V (6×6, orthogonal) the Q factors
  of the QR decompositions of Gaussian matrices drawn from a seeded generator (signs fixed so that R's
  diagonal is positive: Haar-distributed), and s = geomspace(1, 1/κ, 6): singular values log-spaced
  in [1/κ, 1], so κ(A) = κ exactly (κ = 1e5 by default, 1e10 as the stress variant).  The notebook's
  row scaling ``linspace(1, 1e-5, 10)[:, None] * rand(10, 6)`` does *not* give κ = 1e5 (its κ has a
  median of about 20 over seeds); the SVD construction does.
- N = 1000 inputs x ~ N(0, I₆) (rows of X, N×6) and targets y = A x (rows of Y = X Aᵀ, N×10): no noise,
  so the optimum loss is 0 and it is attained (W₂W₁ = A).
- The model f(x) = W₂W₁x: ``nn.Sequential(Linear(6, 6, bias=False), Linear(6, 10, bias=False))``
  (hidden width 6, W₁ 6×6, W₂ 10×6).
- The loss J = (1/|B|) Σ_{x∈B} ‖W₂W₁x − y‖² (the squared error summed over the 10 outputs, averaged
  over the batch: Eq. 11's E_x‖Ax − W₂W₁x‖², whose expectation over x ~ N(0, I) is ‖W₂W₁ − A‖²_F;
  on the sample, J = tr((W₂W₁ − A) Σ̂ (W₂W₁ − A)ᵀ) with Σ̂ = XᵀX/N).  ``torch.nn.functional.mse_loss``
  would be J/10 (it also averages over the outputs).  The mean over the batch is the convention the
  K-FAC preset expects.
- Initialisation: every entry of W₁ and W₂ ~ N(0, σ²) with σ = `init_std` = 1 by default, as the S6
  notebook's ``randn`` (its names are swapped: its W1 is our W₂).  Chosen to stay with the original
  spec, which the APO paper's experiment presumably reused; it starts far from the solution (J ≈ 360 at
  the start, about tr(W₂W₁W₁ᵀW₂ᵀ) + ‖A‖²_F) with a random, moderately conditioned product W₂W₁, so the
  optimizers have to both remove the random product and resolve A's small singular directions.  A's
  conditioning is what makes it hard from there: SGD-momentum reaches round-off within 500 steps on
  κ = 1 and not on κ = 1e5 (tests/test_experiments_apo.py).  With init_std = 1/√6 the starting loss
  would be ≈ 10 + ‖A‖²_F instead.

A seed fixes everything: the generator of A and X is seeded by `seed`, the model's initialisation by
``init_seed`` (default: `seed`) through a separate generator, so that the same problem can be started
from several initialisations.

`train` is the full-batch training loop of the experiment APO-E2 (`precondalg.experiments.apo`) and the tests:
any torch optimizer; `precondalg.optim.APO` gets ``step(batch=(X, Y), fsd_batch=X)`` (B′ = B, the
whole sample); `precondalg.optim.KFAC` its statistics either from the training loss (the preset's
empirical Fisher) or, with ``fisher="sampled"``, from targets sampled from the model's predictive
distribution (Martens & Grosse's Monte-Carlo Fisher, here equal in expectation to the Gauss–Newton
matrix).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from precondalg.problems._loop import TrainResult, counting_skips, is_proximal

__all__ = [
    "IllConditionedRegression",
    "TrainResult",
    "ill_conditioned_regression",
    "log_spaced_singular_values",
    "regression_loss",
    "train",
]

F64 = torch.float64
_INIT_STREAM = 1_000_003
"""Offset of the initialisation generator's seed from the problem's (distinct streams)."""


def log_spaced_singular_values(k: int, kappa: float, *, dtype: torch.dtype = F64) -> torch.Tensor:
    """s = geomspace(1, 1/κ, k): k singular values log-spaced from 1 down to 1/κ (descending).

    Examples:
        >>> log_spaced_singular_values(3, 100.0).tolist()
        [1.0, 0.1, 0.01]
    """
    if k < 1:
        raise ValueError(f"log_spaced_singular_values: k must be ≥ 1; got {k}")
    if not kappa >= 1 or not math.isfinite(kappa):
        raise ValueError(f"log_spaced_singular_values: kappa must be a finite number ≥ 1; got {kappa!r}")
    if k == 1:
        return torch.ones(1, dtype=dtype)
    return torch.logspace(0.0, -math.log10(kappa), k, dtype=F64).to(dtype)


def _haar_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """Q (rows × cols, orthonormal columns) from the QR of a Gaussian matrix, R's diagonal made positive
    (Mezzadri 2007: then Q is Haar-distributed)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def regression_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """J = (1/|B|) Σ ‖output − target‖²: the squared error summed over the outputs, averaged over the
    batch (rows) — Eq. 11 of Bae et al. on the batch; 10 × ``F.mse_loss``."""
    return (outputs - targets).square().sum(-1).mean()


@dataclasses.dataclass(frozen=True, eq=False)
class IllConditionedRegression:
    """One instance of the problem (see the module docstring); build it with
    `ill_conditioned_regression`.

    Attributes:
        A: the target map (d_out × d_in), A = U diag(s) Vᵀ.
        U: d_out × d_in, orthonormal columns.
        V: d_in × d_in, orthogonal.
        singular_values: s, descending, log-spaced in [1/κ, 1].
        X: the N × d_in inputs, rows x ~ N(0, I).
        Y: the N × d_out targets, Y = X Aᵀ.
        config: the construction, as plain numbers and strings (for a results file).
    """

    A: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    singular_values: torch.Tensor
    X: torch.Tensor
    Y: torch.Tensor
    config: dict[str, Any]

    @property
    def n(self) -> int:
        """N, the number of samples."""
        return self.X.shape[0]

    def make_model(self, init_seed: int | None = None) -> nn.Sequential:
        """A fresh ``Sequential(Linear(d_in, hidden, bias=False), Linear(hidden, d_out, bias=False))`` in
        float64 with every weight entry ~ N(0, init_std²), drawn from a generator seeded by
        ``init_seed`` (None: the configuration's init_seed).  The same seed gives the same weights."""
        cfg = self.config
        seed = cfg["init_seed"] if init_seed is None else int(init_seed)
        gen = torch.Generator().manual_seed(seed + _INIT_STREAM)
        d_in, hidden, d_out = cfg["d_in"], cfg["hidden"], cfg["d_out"]
        model = nn.Sequential(
            nn.Linear(d_in, hidden, bias=False, dtype=F64), nn.Linear(hidden, d_out, bias=False, dtype=F64)
        )
        with torch.no_grad():
            for layer in model:
                layer.weight.copy_(
                    cfg["init_std"] * torch.randn(layer.weight.shape, generator=gen, dtype=F64)
                )
        return model

    def loss(
        self, model: nn.Module, X: torch.Tensor | None = None, Y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """J of `model` on (X, Y) (default: the whole sample)."""
        X = self.X if X is None else X
        Y = self.Y if Y is None else Y
        return regression_loss(model(X), Y)

    def product_loss(self, W: torch.Tensor) -> torch.Tensor:
        """J of the linear map W (d_out × d_in) on the whole sample: tr((W − A) Σ̂ (W − A)ᵀ), Σ̂ = XᵀX/N."""
        return regression_loss(self.X @ W.mT, self.Y)

    def population_loss(self, W: torch.Tensor) -> torch.Tensor:
        """E_x‖(W − A)x‖² = ‖W − A‖²_F for x ~ N(0, I) (Eq. 11's objective, in closed form)."""
        return (W - self.A).square().sum()


def ill_conditioned_regression(
    seed: int = 0,
    *,
    kappa: float = 1e5,
    n: int = 1000,
    d_in: int = 6,
    d_out: int = 10,
    hidden: int = 6,
    init_std: float = 1.0,
    init_seed: int | None = None,
) -> IllConditionedRegression:
    """The APO-E2 problem for `seed` (see the module docstring): A from an SVD with singular values
    log-spaced in [1/κ, 1], N inputs x ~ N(0, I), targets y = A x, and the two-layer linear model's
    initialisation N(0, init_std²) per entry (`IllConditionedRegression.make_model`).

    Args:
        seed: seeds the generator of U, V and X (in that order).
        kappa: κ(A) ≥ 1 (1e5, the notebook's intended value; 1e10 the stress variant).
        n: N, the number of samples.
        d_in: the input size (6); d_in ≤ d_out, so A has d_in singular values.
        d_out: the output size (10).
        hidden: the hidden width (6).
        init_std: σ of the weights' N(0, σ²) initialisation (1: the notebook's randn).
        init_seed: the default seed of `make_model` (None: `seed`).

    Raises:
        ValueError: sizes that are not positive, d_in > d_out, kappa < 1 or not finite, init_std < 0.

    Examples:
        >>> p = ill_conditioned_regression(0)
        >>> p.A.shape, p.X.shape, p.Y.shape
        (torch.Size([10, 6]), torch.Size([1000, 6]), torch.Size([1000, 10]))
        >>> round(float(torch.linalg.cond(p.A)))
        100000
    """
    for name, value in (("n", n), ("d_in", d_in), ("d_out", d_out), ("hidden", hidden)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"ill_conditioned_regression: {name} must be a positive int; got {value!r}")
    if d_in > d_out:
        raise ValueError(f"ill_conditioned_regression: d_in ({d_in}) must be ≤ d_out ({d_out})")
    if not init_std >= 0 or not math.isfinite(init_std):
        raise ValueError(f"ill_conditioned_regression: init_std must be finite and ≥ 0; got {init_std!r}")
    s = log_spaced_singular_values(d_in, float(kappa))
    gen = torch.Generator().manual_seed(int(seed))
    U = _haar_orthonormal(d_out, d_in, gen)
    V = _haar_orthonormal(d_in, d_in, gen)
    A = (U * s) @ V.mT
    X = torch.randn(n, d_in, generator=gen, dtype=F64)
    Y = X @ A.mT
    config = {
        "problem": "two-layer linear regression y = A x, f(x) = W2 W1 x (Rahimi & Recht 2017; APO-E2)",
        "seed": int(seed),
        "kappa": float(kappa),
        "n": n,
        "d_in": d_in,
        "d_out": d_out,
        "hidden": hidden,
        "A": "U diag(s) V^T; U (d_out x d_in), V (d_in x d_in): Q of the QR of a Gaussian matrix "
        "(sign-fixed, Haar) from torch.Generator().manual_seed(seed), U drawn first, then V",
        "singular_values": s.tolist(),
        "X": "N x d_in, rows ~ N(0, I), drawn after V from the same generator",
        "Y": "X A^T (no noise)",
        "model": f"Sequential(Linear({d_in}, {hidden}, bias=False), Linear({hidden}, {d_out}, bias=False)), "
        "float64",
        "loss": "mean over the batch of ||f(x) - y||^2 summed over the outputs (= 10 x F.mse_loss)",
        "init": f"every weight entry ~ N(0, {init_std:g}^2) (S6 notebook: randn), generator seed "
        f"init_seed + {_INIT_STREAM}",
        "init_std": float(init_std),
        "init_seed": int(seed if init_seed is None else init_seed),
        "dtype": "float64",
    }
    return IllConditionedRegression(A=A, U=U, V=V, singular_values=s, X=X, Y=Y, config=config)


def _fisher_kind(opt: torch.optim.Optimizer, fisher: str) -> tuple[bool, bool]:
    """(whether the optimizer is APO's proximal row, whether K-FAC's statistics are sampled)."""
    from precondalg.objectives import LayerStatistics

    if fisher not in ("empirical", "sampled"):
        raise ValueError(f"train: fisher must be 'empirical' or 'sampled'; got {fisher!r}")
    if fisher == "sampled" and not isinstance(getattr(opt, "objective", None), LayerStatistics):
        raise ValueError("train: fisher='sampled' needs an optimizer with LayerStatistics (KFAC)")
    return is_proximal(opt), fisher == "sampled"


def train(
    problem: IllConditionedRegression,
    model: nn.Sequential,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    fisher: str = "empirical",
    seed: int = 0,
    diverge_factor: float = 100.0,
) -> TrainResult:
    """Full-batch training of `model` (from `IllConditionedRegression.make_model`) on the whole sample
    for `steps` steps; every step computes J, backpropagates it and steps `opt`.

    - An APO optimizer (objective `precondalg.objectives.Proximal`) is stepped with
      ``opt.step(batch=(X, Y), fsd_batch=X)``: the proximal objective's B and B′ are the whole sample.
    - ``fisher="sampled"`` (K-FAC only): the gradient of J is taken from a functional forward pass
      (``F.linear`` on the weights, which K-FAC's module hooks do not see), and the statistics from a
      second pass through the modules whose backpropagated loss is J(f(X), Ŷ) with
      Ŷ = f(X) + √½·ε, ε ~ N(0, I) (from a generator seeded by `seed`): J is the negative
      log-likelihood of N(f(x), ½I) up to a constant, so E[Ḡ] = 2I, the Hessian of J's per-example
      term in the output (K-FAC with the true Fisher = Gauss–Newton, Martens & Grosse §5); then the
      true gradient is put in ``.grad`` and the optimizer steps.
    - The run stops where J is non-finite or above ``diverge_factor`` × its starting value (then
      ``final`` is inf and ``diverged_at`` the step).

    Raises:
        ValueError: steps < 0, diverge_factor ≤ 1; an unknown fisher, or fisher="sampled" without K-FAC's
            statistics.
    """
    if steps < 0:
        raise ValueError(f"train: steps must be ≥ 0; got {steps}")
    if not diverge_factor > 1:
        raise ValueError(f"train: diverge_factor must be > 1; got {diverge_factor!r}")
    proximal, sampled = _fisher_kind(opt, fisher)
    X, Y = problem.X, problem.Y
    weights = [layer.weight for layer in model]
    gen = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    diverged_at = None
    with counting_skips() as skipped:
        start = time.perf_counter()
        for t in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            if sampled:
                out = X
                for W in weights:
                    out = nn.functional.linear(out, W)
                loss = regression_loss(out, Y)
                grads = torch.autograd.grad(loss, weights)
            else:
                loss = regression_loss(model(X), Y)
            value = loss.item()
            losses.append(value)
            if not math.isfinite(value) or value > diverge_factor * losses[0]:
                diverged_at = t
                break
            if sampled:
                out = model(X)
                noise = torch.randn(out.shape, generator=gen, dtype=out.dtype)
                regression_loss(out, out.detach() + math.sqrt(0.5) * noise).backward()
                for W, g in zip(weights, grads):
                    W.grad = g
            else:
                loss.backward()
            if proximal:
                opt.step(batch=(X, Y), fsd_batch=X)
            else:
                opt.step()
        seconds = time.perf_counter() - start
    if diverged_at is None:
        with torch.no_grad():
            final = problem.loss(model).item()
        if not math.isfinite(final) or (losses and final > diverge_factor * losses[0]):
            final, diverged_at = math.inf, steps + 1
    else:
        final = math.inf
    return TrainResult(
        losses=losses, final=final, diverged_at=diverged_at, seconds=seconds, skipped=skipped.value
    )
