"""Test problems for the optimizers (tasks with their construction recorded): see each module."""

from precondalg.problems.digits_mlp import (
    ClassifierRun,
    DigitsClassification,
    digits_classification,
    learned_learning_rate,
    train_classifier,
)
from precondalg.problems.ill_conditioned_regression import (
    IllConditionedRegression,
    TrainResult,
    ill_conditioned_regression,
    log_spaced_singular_values,
    regression_loss,
    train,
)
from precondalg.problems.rosenbrock import Rosenbrock, RosenbrockRun, minimize, rosenbrock

__all__ = [
    "ClassifierRun",
    "DigitsClassification",
    "IllConditionedRegression",
    "Rosenbrock",
    "RosenbrockRun",
    "TrainResult",
    "digits_classification",
    "ill_conditioned_regression",
    "learned_learning_rate",
    "log_spaced_singular_values",
    "minimize",
    "regression_loss",
    "rosenbrock",
    "train",
    "train_classifier",
]
