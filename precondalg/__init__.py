"""precondalg: learned gradient preconditioners as composable structured matrices.

The structures and their algebra are re-exported here: ``import precondalg as pa; pa.Kronecker(...)``.
"""

from precondalg.structures import *  # noqa: F403
from precondalg.structures import __all__ as _structures_all

__version__ = "0.1.0"
__all__ = [*_structures_all, "__version__"]
