"""``python -m theory_checks``: print the theory-check report (see `theory_checks.cli`)."""

import sys

from theory_checks.cli import main

sys.exit(main())
