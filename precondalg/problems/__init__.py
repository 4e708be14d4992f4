"""Test problems for the optimizers (tasks with their construction recorded): see each module."""

from precondalg.problems.ill_conditioned_regression import (
    IllConditionedRegression,
    TrainResult,
    ill_conditioned_regression,
    log_spaced_singular_values,
    regression_loss,
    train,
)

__all__ = [
    "IllConditionedRegression",
    "TrainResult",
    "ill_conditioned_regression",
    "log_spaced_singular_values",
    "regression_loss",
    "train",
]
