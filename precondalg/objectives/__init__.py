"""Meta-objectives (layer 3): what a learned structure φ is fitted to.

An objective returns, per block, the Euclidean gradient of its scalar meta-loss with respect to φ's
leaves (a pytree of φ's type), or None when it has nothing yet (e.g. the first step of an online
hypergradient).  Fitters (`precondalg.fitters`) turn that gradient into a step on φ.
"""

from precondalg.objectives.hypergradient import BlockContext, Hypergradient, Objective

__all__ = ["BlockContext", "Hypergradient", "Objective"]
