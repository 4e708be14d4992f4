"""Test configuration: hypothesis profiles.

The ``default`` profile draws fresh examples each run; ``ci`` (selected when the environment variable
``CI`` is set) derandomizes them so that a CI run is reproducible.  Per-test ``@settings`` choose
``max_examples``; both profiles disable the per-example deadline (first calls pay torch's warm-up).

Torch runs on one intra-op thread: every tensor in the suite is tiny, and on a shared 2-core machine
two threads contending made whole files 5–20× slower without changing a single result.
"""

import os
from collections.abc import Mapping

import pytest
import torch
from hypothesis import HealthCheck, settings

from theory_checks.runner import check_environment

torch.set_num_threads(1)

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)


def profile_name(environ: Mapping[str, str]) -> str:
    """The hypothesis profile an environment selects: "ci" when ``CI`` is set (non-empty), else "default"."""
    return "ci" if environ.get("CI") else "default"


settings.load_profile(profile_name(os.environ))


@pytest.fixture(scope="session")
def records():
    """Every registered theory check (and its mutants), run once per session through the runner API:
    id → record."""
    from theory_checks import REGISTRY, run

    return {r.id: r for r in run(REGISTRY)}


@pytest.fixture
def float64():
    """Run the test in the theory checks' environment (float64 default dtype, one thread)."""
    with check_environment():
        yield
