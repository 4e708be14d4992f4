"""``python -m precondalg.experiments``: see `precondalg.experiments.cli`."""

import sys

from precondalg.experiments.cli import main

if __name__ == "__main__":  # importing the module (e.g. by the API docs' inspection) runs nothing
    sys.exit(main())
