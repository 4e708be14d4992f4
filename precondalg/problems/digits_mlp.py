"""Mini-batch classification of scikit-learn's ``load_digits`` with a ReLU MLP: the offline stand-in for
the MNIST MLP of Bae et al. 2022 (APO, §6.3, Fig. 5: learning-rate adaptation of SGD-momentum and
RMSprop; a two-layer MLP with 1000 hidden units, batch 100, 100 epochs).

The task:

- Data: the 1797 8×8 images of ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no network),
  pixels / 16 ∈ [0, 1] as 64 float32 features, labels 0–9; every image is a training example (the
  criterion of Fig. 5 is the training loss).
- Model: ``Sequential(Linear(64, 256), ReLU, Linear(256, 256), ReLU, Linear(256, 10))`` (`hidden` sets
  the widths), float32, PyTorch's default initialisation drawn under ``torch.manual_seed(seed)`` inside
  ``torch.random.fork_rng`` (the global generator is left as it was).
- Loss: cross-entropy (the mean over the batch), ``torch.nn.functional.cross_entropy``.
- Batches: a shuffled ``DataLoader`` of batch 100 (the last batch of an epoch holds the 97 left over)
  whose generator is seeded by the run's seed, so that every optimizer sees the same batches in the same
  order; APO's B′ (its function-space batch) comes from a second shuffled loader with its own generator
  (seed + 1 000 003), read through `precondalg.optim.fsd_batches`, one batch per step.

`train_classifier` is the loop; the training loss on all 1797 examples is measured before training and
after every epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from precondalg.problems._loop import counting_skips, is_proximal

__all__ = [
    "ClassifierRun",
    "DigitsClassification",
    "digits_classification",
    "learned_learning_rate",
    "train_classifier",
]

_FSD_STREAM = 1_000_003
"""Offset of the B′ loader's seed from the training loader's (distinct streams)."""


@dataclasses.dataclass(frozen=True, eq=False)
class DigitsClassification:
    """The task (see the module docstring); build it with `digits_classification`.

    Attributes:
        X: the N × 64 inputs (float32, pixels / 16).
        y: the N labels (int64, 0–9).
        hidden: the hidden widths of the MLP.
        batch_size: the mini-batch size (B and B′).
        config: the construction, as plain numbers and strings (for a results file).
    """

    X: torch.Tensor
    y: torch.Tensor
    hidden: tuple[int, ...]
    batch_size: int
    config: dict[str, Any]

    @property
    def n(self) -> int:
        """N, the number of training examples."""
        return self.X.shape[0]

    def steps_per_epoch(self) -> int:
        """⌈N / batch_size⌉ (the last batch is kept)."""
        return math.ceil(self.n / self.batch_size)

    def make_model(self, seed: int) -> nn.Sequential:
        """A fresh MLP 64-hidden…-10 (ReLU) with PyTorch's default initialisation drawn under
        ``torch.manual_seed(seed)``; the same seed gives the same weights."""
        widths = (self.X.shape[1], *self.hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            for n_in, n_out in zip(widths[:-1], widths[1:]):
                layers += [nn.Linear(n_in, n_out), nn.ReLU()]
            layers.append(nn.Linear(widths[-1], 10))
            return nn.Sequential(*layers)

    def loader(self, seed: int) -> torch.utils.data.DataLoader:
        """The training batches: shuffled every epoch by a generator seeded by `seed`."""
        return self._loader(seed)

    def fsd_loader(self, seed: int) -> torch.utils.data.DataLoader:
        """APO's B′ batches: another shuffled loader, its generator seeded by seed + 1 000 003."""
        return self._loader(seed + _FSD_STREAM)

    def _loader(self, seed: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.X, self.y),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def loss(self, model: nn.Module) -> float:
        """The cross-entropy of `model` on all N training examples."""
        with torch.no_grad():
            return F.cross_entropy(model(self.X), self.y).item()

    def accuracy(self, model: nn.Module) -> float:
        """The fraction of the N training examples that `model` classifies correctly."""
        with torch.no_grad():
            return (model(self.X).argmax(1) == self.y).double().mean().item()


def digits_classification(
    *, hidden: tuple[int, ...] = (256, 256), batch_size: int = 100
) -> DigitsClassification:
    """The APO-E8 stand-in task (see the module docstring): load_digits, an MLP with `hidden` widths,
    mini-batches of `batch_size`.

    Raises:
        ValueError: an empty `hidden`, a width or batch size that is not a positive int.

    Examples:
        >>> task = digits_classification()
        >>> task.X.shape, task.y.shape, task.steps_per_epoch()
        (torch.Size([1797, 64]), torch.Size([1797]), 18)
        >>> task.make_model(0)
        Sequential(
          (0): Linear(in_features=64, out_features=256, bias=True)
          (1): ReLU()
          (2): Linear(in_features=256, out_features=256, bias=True)
          (3): ReLU()
          (4): Linear(in_features=256, out_features=10, bias=True)
        )
    """
    hidden = tuple(hidden)
    if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"digits_classification: hidden must be positive ints; got {hidden!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"digits_classification: batch_size must be a positive int; got {batch_size!r}")
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    config = {
        "problem": "sklearn load_digits classification (for the MNIST MLP of Bae et al. 2022, Fig. 5)",
        "n": int(X.shape[0]),
        "features": "64 pixels / 16 in [0, 1], float32",
        "model": "MLP " + "-".join(str(w) for w in (64, *hidden, 10)) + ", ReLU, PyTorch default init "
        "under torch.manual_seed(seed)",
        "loss": "cross-entropy (mean over the batch)",
        "batch_size": batch_size,
        "batches": "DataLoader(shuffle=True), generator seed = the run's seed; last batch of an epoch "
        f"holds {X.shape[0] - (math.ceil(X.shape[0] / batch_size) - 1) * batch_size}",
        "fsd_batches": f"a second shuffled DataLoader, generator seed = seed + {_FSD_STREAM}, one per step",
    }
    return DigitsClassification(X=X, y=y, hidden=hidden, batch_size=batch_size, config=config)


def learned_learning_rate(opt: torch.optim.Optimizer) -> float:
    """η of an `precondalg.optim.APO` optimizer in mode "lr" with one param group: the learned learning
    rate (the preconditioner η·I) that its next step applies.

    Raises:
        ValueError: the optimizer does not hold exactly one scalar preconditioner.
    """
    blocks = opt.preconditioners() if hasattr(opt, "preconditioners") else []
    alphas = [getattr(P, "alpha", None) for _, P in blocks]
    if len(alphas) != 1 or alphas[0] is None:
        kinds = [type(P).__name__ for _, P in blocks]
        raise ValueError(
            "learned_learning_rate: needs an APO optimizer in mode 'lr' with one param group (one "
            f"scalar preconditioner); got {len(alphas)} block(s) of types {kinds}"
        )
    return float(alphas[0])


@dataclasses.dataclass
class ClassifierRun:
    """What `train_classifier` returns.

    Attributes:
        epoch_losses: the training loss on all N examples before training and after each epoch, as far
            as the run went (``epoch_losses[e]`` after e epochs).
        final: the training loss after the last epoch; inf where the run diverged.
        watched: ``watch(opt)`` after every step (empty without `watch`).
        diverged_at: the step (1-based) whose batch loss or parameters were non-finite; None.
        steps: the number of optimizer steps taken.
        seconds: wall time of the loop (the per-epoch evaluations included).
        skipped: the number of `precondalg.optim.SkippedStepWarning` warnings the optimizer issued.
    """

    epoch_losses: list[float]
    final: float
    watched: list[float]
    diverged_at: int | None
    steps: int
    seconds: float
    skipped: int


def train_classifier(
    task: DigitsClassification,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epochs: int,
    *,
    seed: int,
    watch: Callable[[torch.optim.Optimizer], float] | None = None,
) -> ClassifierRun:
    """`epochs` passes over ``task.loader(seed)``: per batch, cross-entropy, backward, step.  An APO
    optimizer (objective `precondalg.objectives.Proximal`) is stepped with
    ``opt.step(batch=(x, y), fsd_batch=next(fsd))``, fsd = ``fsd_batches(task.fsd_loader(seed))``
    (a B′ drawn at every step, used on the meta-update steps).  The run stops at the first step whose
    batch loss is non-finite or after which the parameters are (``final`` = inf).

    Raises:
        ValueError: epochs < 0.
    """
    if epochs < 0:
        raise ValueError(f"train_classifier: epochs must be ≥ 0; got {epochs}")
    from precondalg.optim import fsd_batches

    proximal = is_proximal(opt)
    fsd = fsd_batches(task.fsd_loader(seed)) if proximal else None
    loader = task.loader(seed)
    params = [p for p in model.parameters()]
    epoch_losses = [task.loss(model)]
    watched: list[float] = []
    steps, diverged_at = 0, None
    with counting_skips() as skipped:
        start = time.perf_counter()
        for _ in range(epochs):
            for x, t in loader:
                steps += 1
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), t)
                if not math.isfinite(loss.item()):
                    diverged_at = steps
                    break
                loss.backward()
                if proximal:
                    opt.step(batch=(x, t), fsd_batch=next(fsd))
                else:
                    opt.step()
                if watch is not None:
                    watched.append(watch(opt))
                if not all(torch.isfinite(p).all() for p in params):
                    diverged_at = steps
                    break
            if diverged_at is not None:
                break
            epoch_losses.append(task.loss(model))
        seconds = time.perf_counter() - start
    final = epoch_losses[-1] if diverged_at is None and math.isfinite(epoch_losses[-1]) else math.inf
    if diverged_at is None and final == math.inf:
        diverged_at = steps
    return ClassifierRun(
        epoch_losses=epoch_losses,
        final=final,
        watched=watched,
        diverged_at=diverged_at,
        steps=steps,
        seconds=seconds,
        skipped=skipped.value,
    )
