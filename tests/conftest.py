"""Test configuration: hypothesis profiles.

The ``default`` profile draws fresh examples each run; ``ci`` (selected when the environment variable
``CI`` is set) derandomizes them so that a CI run is reproducible.  Per-test ``@settings`` choose
``max_examples``; both profiles disable the per-example deadline (first calls pay torch's warm-up).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
