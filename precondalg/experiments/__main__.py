"""``python -m precondalg.experiments``: see `precondalg.experiments.cli`."""

import sys

from precondalg.experiments.cli import main

sys.exit(main())
