"""The papers' experiments, one command each, and the fair-comparison harness.

    python -m precondalg.experiments list
    python -m precondalg.experiments run FOP-E1 [--seeds N] [--steps N] [--out DIR] [--quick]
    python -m precondalg.experiments compare --task digits_mlp --methods FOP,PSGD,Adam,SGD

Modules: `core` (the registry, `run_experiment`, the files a run writes), `harness` (the comparison
protocol), `tasks` and `methods` (what `compare` takes), `toy` (two-dimensional test functions), one
module per paper (`fop`, …), `noisy_bowl` (LODO's task), `machine` and `memory` (what is recorded
beside the figures).  Running them needs the ``experiments`` extra (matplotlib, scikit-learn, tqdm).
"""

from __future__ import annotations

import importlib

__all__ = ["PAPER_MODULES", "registered"]

PAPER_MODULES = ("fop", "fop_nets", "psgd", "lodo", "lodo_nets", "apo", "apo_nets")
"""The modules whose import registers the papers' experiments, in the papers' order."""


def registered() -> dict:
    """Import the experiment modules (registering every experiment) and return the registry."""
    for name in PAPER_MODULES:
        importlib.import_module(f"precondalg.experiments.{name}")
    from precondalg.experiments.core import EXPERIMENTS

    return EXPERIMENTS
