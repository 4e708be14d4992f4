"""The built-in tasks of the comparison harness, and the one interface a user's own task meets.

A task is a callable ``task(seed) -> TaskInstance``: the model (built under that seed), the loss of the
model's outputs against targets, the training batches in the order every method sees them, and
optionally a held-out set for the accuracy.  The same seed gives the same initial weights and the same
batch order to every method (the fairness the harness promises rests on this).

Built-in (`TASKS`), all offline:

- ``digits_mlp``: scikit-learn's ``load_digits`` (pixels / 16), stratified 1297 / 500 train / test split,
  MLP 64-128-128-10 (ReLU), cross-entropy, batch 64.
- ``digits_cnn``: the same data as 1×8×8 images, conv 3×3 16 → pool → conv 3×3 32 → pool → linear 10.
- ``diabetes``: ``load_diabetes`` (442 × 10, standardised x and y), 342 / 100 split, MLP 10-100-1 (ReLU),
  mean squared error, batch 32 (the APO-E3 substitute of the paper's UCI regressions).
- ``noisy_bowl``: LODO's noisy quadratic bowl (Liao et al. 2023, §5.1) at n = 32: H = U diag(geomspace(
  1e-2, 1, 32)) Uᵀ, the centre takes a N(0, I) random-walk step before every loss evaluation; the
  "targets" of a batch are the centre of that step (20 000 steps at most: the walk does not start over).
- ``rosenbrock``: f = (1 − x)² + 100(y − x²)² from (−1, 1) (`precondalg.problems.Rosenbrock`), float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TASKS",
    "Point",
    "TaskInstance",
    "as_instance",
    "digits_cnn_model",
    "digits_split",
    "seeded",
    "shuffled_batches",
]

Batch = tuple[Any, Any]


@dataclasses.dataclass
class TaskInstance:
    """One seed's draw of a task.

    Attributes:
        model: the model, its parameters initialised under the seed.
        loss_fn: ``loss_fn(outputs, targets)`` → scalar tensor (mean over the batch).
        batches: the training batches ``(inputs, targets)``, one per step; a run of more steps cycles.
        eval_batch: the whole training set as one batch, for the final loss (None: the final loss is
            the mean batch loss of the last 10% of steps, for tasks whose loss moves every step).
        test_batch: a held-out batch for the accuracy (classification tasks), or None.
        target_loss: the default loss at which "steps and time to target" are counted.
        classification: whether accuracy (argmax of the outputs) is reported.
        seed: the run's seed, set by the harness before the method is built (methods with random draws
            seed them with it).
        cyclic: whether a run longer than ``batches`` may start over (False: the harness refuses it,
            e.g. the noisy bowl, whose centre would jump back to its start).
    """

    model: nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor]
    batches: Sequence[Batch]
    eval_batch: Batch | None = None
    test_batch: Batch | None = None
    target_loss: float | None = None
    classification: bool = False
    seed: int = 0
    cyclic: bool = True


def as_instance(value: Any, where: str) -> TaskInstance:
    """A user task's return value as a `TaskInstance`: the instance itself, or a tuple ``(model, loss_fn,
    batches)``.

    Raises:
        TypeError: anything else (named with `where`).
    """
    if isinstance(value, TaskInstance):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[0], nn.Module)
        and callable(value[1])
    ):
        model, loss_fn, batches = value
        batches = list(batches)
        if not batches:
            raise ValueError(f"{where}: the task returned no batches")
        return TaskInstance(model, loss_fn, batches)
    raise TypeError(
        f"{where}: a task must return a TaskInstance or a tuple (model: nn.Module, "
        f"loss_fn(outputs, targets), batches: list of (inputs, targets)); got {type(value).__name__}"
    )


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with torch's global generator seeded, then restored (the caller's draws are untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _split(n: int, n_test: int, labels: torch.Tensor | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices: a fixed permutation (seed 0: the split is the task's, not the run's),
    stratified by label when labels are given."""
    g = torch.Generator().manual_seed(0)
    if labels is None:
        order = torch.randperm(n, generator=g)
        return order[n_test:], order[:n_test]
    test = []
    classes = labels.unique()
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[: round(n_test * len(idx) / n)])
    test_idx = torch.cat(test)
    mask = torch.ones(n, dtype=torch.bool)
    mask[test_idx] = False
    return mask.nonzero().flatten(), test_idx


def shuffled_batches(X: torch.Tensor, Y: torch.Tensor, size: int, epochs: int, seed: int) -> list[Batch]:
    """`epochs` shuffled passes of batches of `size` (the last short batch of a pass dropped), the
    shuffles drawn from a generator seeded by `seed`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=g)
        for i in range(0, len(X) - size + 1, size):
            idx = order[i : i + size]
            out.append((X[idx], Y[idx]))
    return out


def digits_split(image: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (pixels / 16) as the digits tasks split them: (X_train, y_train, X_test,
    y_test), 1297 / 500 stratified; X of shape (n, 64), or (n, 1, 8, 8) when `image`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    train, test = _split(len(X), 500, y, 0)
    if image:
        X = X.reshape(-1, 1, 8, 8)
    return X[train], y[train], X[test], y[test]


def digits_mlp(seed: int) -> TaskInstance:
    """The ``digits_mlp`` task (module docstring)."""
    X, y, Xt, yt = digits_split(image=False)
    model = seeded(
        seed,
        lambda: nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        ),
    )
    return TaskInstance(
        model,
        F.cross_entropy,
        shuffled_batches(X, y, 64, 30, seed),
        (X, y),
        (Xt, yt),
        target_loss=0.1,
        classification=True,
    )


def digits_cnn_model() -> nn.Module:
    """The digits CNN: 1×8×8 → conv 3×3 16 → pool → conv 3×3 32 → pool → 32×2×2 → linear 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def digits_cnn(seed: int) -> TaskInstance:
    """The ``digits_cnn`` task (module docstring)."""
    X, y, Xt, yt = digits_split(image=True)
    model = seeded(seed, digits_cnn_model)
    return TaskInstance(
        model, F.cross_entropy, shuffled_batches(X, y, 64, 30, seed), (X, y), (Xt, yt), 0.1, True
    )


def diabetes(seed: int) -> TaskInstance:
    """The ``diabetes`` task (module docstring)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    X = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32).unsqueeze(1)
    train, test = _split(len(X), 100, None, 0)
    mean, std = X[train].mean(0), X[train].std(0)
    ym, ys = y[train].mean(), y[train].std()
    X, y = (X - mean) / std, (y - ym) / ys
    model = seeded(seed, lambda: nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 1)))
    return TaskInstance(
        model,
        F.mse_loss,
        shuffled_batches(X[train], y[train], 32, 60, seed),
        (X[train], y[train]),
        target_loss=0.5,
    )


class Point(nn.Module):
    """A model that is a point θ: ``forward(x)`` returns θ (the inputs are ignored), so an optimizer of a
    function of θ meets the harness's (model, loss_fn, batches) interface."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, inputs: Any = None) -> torch.Tensor:
        return self.theta


@dataclasses.dataclass(frozen=True)
class BowlLoss:
    """½(θ − c)ᵀH(θ − c) for a centre c (the "targets" of a noisy-bowl batch)."""

    H: torch.Tensor

    def __call__(self, theta: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        d = theta - centre
        return 0.5 * d @ (self.H @ d)


def noisy_bowl(seed: int, n: int = 32, steps: int = 20_000) -> TaskInstance:
    """The ``noisy_bowl`` task (module docstring); the centre's walk is drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lam = torch.exp(torch.linspace(math.log(1e-2), 0.0, n, dtype=torch.float64))
    H = (U * lam) @ U.mT
    centres = torch.cumsum(torch.randn(steps, n, generator=g, dtype=torch.float64), 0)
    batches = [(None, c) for c in centres]
    return TaskInstance(Point(torch.zeros(n, dtype=torch.float64)), BowlLoss(H), batches, cyclic=False)


def rosenbrock(seed: int) -> TaskInstance:
    """The ``rosenbrock`` task (module docstring): deterministic, the seed only reaches stochastic methods."""
    from precondalg.problems import Rosenbrock

    problem = Rosenbrock()
    model = problem.make_model()
    inputs = problem.inputs
    return TaskInstance(
        model, lambda out, _: problem.loss_fn(out), [(inputs, None)], (inputs, None), target_loss=1e-6
    )


TASKS: dict[str, Callable[[int], TaskInstance]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
    "diabetes": diabetes,
    "noisy_bowl": noisy_bowl,
    "rosenbrock": rosenbrock,
}
"""The built-in tasks by name (``--task NAME``)."""
