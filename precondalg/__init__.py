"""precondalg: learned gradient preconditioners as composable structured matrices.

The structures and their algebra are re-exported here (``import precondalg as pa; pa.Kronecker(...)``);
the other layers are subpackages: `pa.placement`, `pa.families`, `pa.objectives`, `pa.fitters` and
`pa.optim` (the generic `Preconditioned` optimizer and the presets).
"""

from precondalg import families, fitters, objectives, optim, placement
from precondalg.structures import *  # noqa: F403
from precondalg.structures import __all__ as _structures_all

__version__ = "0.1.0"
__all__ = [*_structures_all, "__version__", "families", "fitters", "objectives", "optim", "placement"]
