"""The fair-comparison harness: every method tuned with the same number of trials over its grid, then run
on the same seeds, with the same initial weights and the same batch order, and measured the same way.

Protocol (what ``python -m precondalg.experiments compare`` runs):

1. Tuning: for each method, ``budget`` points of its grid (all of it when the grid has exactly ``budget``
   points; evenly spaced points when it has more; fewer points is refused: the budgets would differ),
   each trained once on the tuning seed `TUNE_SEED` (not one of the evaluation seeds); the point with the
   lowest final loss wins (a diverged trial scores +inf).
2. Evaluation: the chosen point on seeds 0 … seeds − 1; each seed fixes the model's initial weights and
   the batch order, the same for every method.
3. Measures per run (`RunRecord`): the final loss (on the whole training set where the task has one,
   else the mean batch loss of the last 10% of steps), the test accuracy of classifiers, the steps and
   the training seconds until the loss first reaches the target (evaluated every ``steps // 50`` steps),
   the median seconds of one training step (forward, backward, optimizer), and the optimizer-state bytes
   per parameter at the end.  The step-time ratio to Adam divides by Adam's median step time on the same
   task in the same process (Adam at lr 1e-3, timed after the evaluation runs, when Adam is not compared).

A method that cannot run on a task (e.g. K-FAC on a model with no Linear or Conv2d layer) is not left out
silently: its construction error is recorded and shown in the table.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from precondalg.experiments.memory import state_bytes
from precondalg.experiments.methods import Method
from precondalg.experiments.output import mean_std
from precondalg.experiments.tasks import TaskInstance, as_instance
from precondalg.objectives import Newton
from precondalg.problems._loop import counting_skips, is_proximal

__all__ = [
    "TUNE_SEED",
    "MethodResult",
    "at_grid_edge",
    "RunRecord",
    "choose_points",
    "optimizer_step",
    "summarise",
    "train",
    "tune_and_evaluate",
    "tuning_record",
]

TUNE_SEED = 1000
DIVERGE_FACTOR = 1e6
"""A run stops, diverged, when its batch loss is non-finite or above this factor × the first one."""
CURVE_POINTS = 50
WARMUP = 5
"""Steps left out of the median step time (first-call allocations, lazily built state)."""


def optimizer_step(
    opt: torch.optim.Optimizer,
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: tuple[Any, Any],
    next_batch: tuple[Any, Any],
) -> float:
    """One training step of any optimizer on ``loss_fn(model(inputs), targets)``; returns the batch loss.

    - `torch.optim.LBFGS`: a closure that zeroes the gradients, backpropagates and returns the loss.
    - A `Preconditioned` whose objective is `Newton` (PSGD): a closure that returns the loss without
      backward (the optimizer differentiates it twice).
    - APO's proximal row: backward, then ``step(batch=batch, fsd_batch=next_batch's inputs)``.
    - Any other optimizer (torch.optim's, and `Preconditioned` rows): zero_grad, backward, ``step()``.
    """
    inputs, targets = batch

    def loss() -> torch.Tensor:
        return loss_fn(model(inputs), targets)

    if isinstance(opt, torch.optim.LBFGS):

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            value = loss()
            value.backward()
            return value

        return float(opt.step(closure).detach())
    if isinstance(getattr(opt, "objective", None), Newton):
        opt.zero_grad(set_to_none=True)
        return float(opt.step(loss))
    opt.zero_grad(set_to_none=True)
    value = loss()
    value.backward()
    if is_proximal(opt):
        opt.step(batch=batch, fsd_batch=next_batch[0])
    else:
        opt.step()
    return float(value.detach())


@dataclasses.dataclass
class RunRecord:
    """One training run (see the module docstring for each measure).

    Attributes:
        curve: (step, loss) at the evaluation points (step 0 included).
        final_loss: the final loss (+inf when the run diverged).
        accuracy: test accuracy of a classifier in [0, 1], else None.
        steps_to_target: the first evaluation step at which the loss ≤ target (None: never, or no target).
        seconds_to_target: training seconds until then.
        step_seconds: median seconds of one training step.
        state_bytes_per_param: optimizer-state bytes / number of parameters.
        diverged_at: the step at which the run stopped, diverged (None: it did not).
        skipped_steps: the optimizer's skipped-step warnings (NaN/Inf guarded steps).
        seconds: training seconds in all (evaluation excluded).
        error: the exception that stopped the run during training (counted as diverged), else None.
    """

    curve: list[tuple[int, float]]
    final_loss: float
    accuracy: float | None
    steps_to_target: int | None
    seconds_to_target: float | None
    step_seconds: float
    state_bytes_per_param: float
    diverged_at: int | None
    skipped_steps: int
    seconds: float
    error: str | None = None


def _evaluate(task: TaskInstance, losses: list[float]) -> float:
    """The loss on the task's whole training batch; without one, the mean of `losses` (batch losses)."""
    if task.eval_batch is None:
        return statistics.fmean(losses) if losses else math.nan
    with torch.no_grad():
        x, y = task.eval_batch
        return float(task.loss_fn(task.model(x), y))


def _accuracy(task: TaskInstance) -> float | None:
    if not task.classification or task.test_batch is None:
        return None
    with torch.no_grad():
        x, y = task.test_batch
        return float((task.model(x).argmax(-1) == y).float().mean())


def train(
    method: Method,
    hp: dict[str, Any],
    task_fn: Callable[[int], Any],
    seed: int,
    steps: int,
    target: float | None = None,
) -> RunRecord:
    """Train ``method`` at hyperparameters ``hp`` on ``task_fn(seed)`` for ``steps`` steps.

    The seed reaches every random draw of the run: the task's (weights, batch order), the method's own
    (built-in rows take ``task.seed``: PSGD's probes, LODO's permutations, FOP's low-rank start, APO's
    and HD's generators), and torch's global generator, seeded with it for the run and restored after.

    A method that cannot run on the task raises from its construction (`tune_and_evaluate` records it).
    """
    with torch.random.fork_rng(devices=[]):  # the run's global draws follow its seed; the caller's stay put
        torch.manual_seed(seed)
        task = as_instance(task_fn(seed), f"task for seed {seed}")
        task.seed = seed
        return _train(method, hp, task, steps, task.target_loss if target is None else target)


def _train(
    method: Method, hp: dict[str, Any], task: TaskInstance, steps: int, target: float | None
) -> RunRecord:
    opt = method.make(task.model, task, **hp)
    every = max(1, steps // CURVE_POINTS)
    batches = task.batches
    recent: list[float] = []
    curve = [(0, _evaluate(task, []))]
    times: list[float] = []
    reached: tuple[int, float] | None = None
    diverged_at, first = None, None
    if not task.cyclic and steps > len(batches):
        raise ValueError(f"the task has {len(batches)} batches and does not cycle them; got {steps} steps")
    error = None
    with counting_skips() as skips:
        for t in range(steps):
            batch, nxt = batches[t % len(batches)], batches[(t + 1) % len(batches)]
            start = time.perf_counter()
            try:
                value = optimizer_step(opt, task.model, task.loss_fn, batch, nxt)
            except (RuntimeError, ValueError, FloatingPointError) as e:  # e.g. a linalg failure at a large lr
                error, diverged_at = f"step {t + 1}: {type(e).__name__}: {e}", t + 1
                break
            times.append(time.perf_counter() - start)
            first = value if first is None else first
            recent.append(value)
            params_finite = all(bool(torch.isfinite(p).all()) for p in task.model.parameters())
            if (
                not math.isfinite(value)
                or abs(value) > DIVERGE_FACTOR * max(abs(first), 1e-12)
                or not params_finite
            ):
                diverged_at = t + 1
                break
            if (t + 1) % every == 0 or t + 1 == steps:
                current = _evaluate(task, recent[-every:])
                curve.append((t + 1, current))
                if reached is None and target is not None and current <= target:
                    reached = (t + 1, sum(times))
    final = math.inf if diverged_at is not None else _evaluate(task, recent[-max(1, len(recent) // 10) :])
    n_params = sum(p.numel() for p in task.model.parameters())
    return RunRecord(
        curve=curve,
        final_loss=final,
        accuracy=None if diverged_at is not None else _accuracy(task),
        steps_to_target=None if reached is None else reached[0],
        seconds_to_target=None if reached is None else reached[1],
        step_seconds=statistics.median(times[WARMUP:] or times) if times else math.nan,
        state_bytes_per_param=state_bytes(opt)["total"] / n_params,
        diverged_at=diverged_at,
        skipped_steps=skips.value,
        seconds=sum(times),
        error=error,
    )


def choose_points(method: Method, budget: int) -> list[dict[str, Any]]:
    """`budget` points of the method's grid: all of it when it has exactly `budget`, evenly spaced ones
    when it has more.

    Raises:
        ValueError: budget < 1, or a grid with fewer than `budget` points (the budgets would differ).
    """
    if budget < 1:
        raise ValueError(f"budget must be ≥ 1; got {budget}")
    grid = list(method.grid)
    if len(grid) < budget:
        raise ValueError(
            f"method {method.name!r} has {len(grid)} grid points, fewer than the budget {budget}: every "
            "method must get the same number of trials; lower --budget or give it a larger grid"
        )
    if len(grid) == budget:
        return grid
    idx = (
        [round(i * (len(grid) - 1) / (budget - 1)) for i in range(budget)] if budget > 1 else [len(grid) // 2]
    )
    return [grid[i] for i in idx]


@dataclasses.dataclass
class MethodResult:
    """A method's tuning and evaluation on a task.

    Attributes:
        name: the method's name.
        trials: (hyperparameters, final loss on the tuning seed) per trial.
        chosen: the winning hyperparameters (None when every trial failed).
        runs: the evaluation runs, one per seed.
        error: why the method could not run on the task (its construction error), else None.
    """

    name: str
    trials: list[tuple[dict[str, Any], float]]
    chosen: dict[str, Any] | None
    runs: list[RunRecord]
    error: str | None = None


def tune_and_evaluate(
    method: Method,
    task_fn: Callable[[int], Any],
    *,
    budget: int,
    seeds: Iterable[int],
    steps: int,
    target: float | None = None,
    tick: Callable[[], None] = lambda: None,
) -> MethodResult:
    """Steps 1 and 2 of the protocol (module docstring) for one method; `tick` is called after each run.

    The method is first built on the tuning seed's task: an error there (the method cannot run on the
    task) is the result's ``error``.  An error during a run's training ends that run as diverged (its
    ``error`` says why): a trial then scores +inf, an evaluation run counts as diverged.
    """
    points = choose_points(method, budget)
    try:
        with torch.random.fork_rng(devices=[]):
            task = as_instance(task_fn(TUNE_SEED), f"task for seed {TUNE_SEED}")
            task.seed = TUNE_SEED
            method.make(task.model, task, **points[0])
    except (TypeError, ValueError, RuntimeError) as e:
        return MethodResult(method.name, [], None, [], error=f"{type(e).__name__}: {e}")
    trials: list[tuple[dict[str, Any], float]] = []
    for hp in points:
        trials.append((hp, train(method, hp, task_fn, TUNE_SEED, steps, target).final_loss))
        tick()
    finite = [(hp, loss) for hp, loss in trials if math.isfinite(loss)]
    if not finite:
        return MethodResult(method.name, trials, None, [], error="every tuning trial diverged")
    chosen = min(finite, key=lambda t: t[1])[0]
    runs = []
    for seed in seeds:
        runs.append(train(method, chosen, task_fn, seed, steps, target))
        tick()
    return MethodResult(method.name, trials, chosen, runs)


def at_grid_edge(result: MethodResult) -> bool:
    """Whether the chosen point is the first or the last of the points tried (of more than two)."""
    tried = [hp for hp, _ in result.trials]
    return result.chosen is not None and len(tried) > 2 and result.chosen in (tried[0], tried[-1])


def tuning_record(result: MethodResult) -> dict[str, Any]:
    """A tuned method's record for `Result.tuning`: the points tried, the choice, the trials (point, final
    loss on the tuning seed), whether the choice is at a grid edge, and why the method could not run."""
    return {
        "grid": [hp for hp, _ in result.trials],
        "chosen": result.chosen,
        "trials": [[hp, loss] for hp, loss in result.trials],
        "at_grid_edge": at_grid_edge(result),
        "error": result.error,
    }


def summarise(result: MethodResult, adam_step_seconds: float | None) -> dict[str, Any]:
    """The method's row: each measure's mean and std over seeds, counts of seeds that reached the target,
    the step-time ratio to Adam and the state bytes per parameter."""
    runs = result.runs
    row: dict[str, Any] = {"method": result.name, "chosen": result.chosen, "error": result.error}
    if not runs:
        return row
    row["final_loss"] = mean_std([r.final_loss for r in runs])
    acc = [r.accuracy for r in runs if r.accuracy is not None]
    row["accuracy"] = mean_std(acc) if len(acc) == len(runs) else None
    reached = [r for r in runs if r.steps_to_target is not None]
    row["reached_target"] = f"{len(reached)}/{len(runs)}"
    row["steps_to_target"] = mean_std([float(r.steps_to_target) for r in reached]) if reached else None
    row["seconds_to_target"] = mean_std([r.seconds_to_target for r in reached]) if reached else None
    step = statistics.median([r.step_seconds for r in runs])
    row["step_seconds"] = step
    row["step_time_vs_adam"] = step / adam_step_seconds if adam_step_seconds else None
    row["state_bytes_per_param"] = runs[-1].state_bytes_per_param
    row["diverged_runs"] = sum(r.diverged_at is not None for r in runs)
    row["run_errors"] = [r.error for r in runs if r.error]
    row["skipped_steps"] = sum(r.skipped_steps for r in runs)
    row["at_grid_edge"] = at_grid_edge(result)
    return row
