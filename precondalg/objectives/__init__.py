"""Meta-objectives (layer 3): what a learned structure φ is fitted to.

An objective returns, per block, the Euclidean gradient of its scalar meta-loss with respect to φ's
leaves (a pytree of φ's type), or None when it has nothing yet (e.g. the first step of an online
hypergradient).  Fitters (`precondalg.fitters`) turn that gradient into a step on φ.

| objective | meta-loss | needs | papers |
| --- | --- | --- | --- |
| `Hypergradient` | L(θ_t) as a function of the φ that made the step | cached u, g_t | FOP, HD, LODO |
| `Newton` | Σ hᵀPh + vᵀP⁻¹v, h = Hv | closure returning the loss | PSGD |
| `Fisher` | Σ hᵀPh + vᵀP⁻¹v, h = g + λv | gradient | PSGD |
| `Proximal` | J_B(θ′) + λ_FSD·FSD(B′) + λ_WSD/2‖θ′ − θ‖², θ′ = θ − P_φ u | model, batches B and B′ | APO |
"""

from precondalg.objectives.base import (
    BlockContext,
    BlockwiseObjective,
    Evaluation,
    Objective,
    RelativeGradient,
)
from precondalg.objectives.criteria import Fisher, Newton, closed_form_relative_gradient, criterion
from precondalg.objectives.hypergradient import Hypergradient
from precondalg.objectives.proximal import Proximal, kl_divergence, squared_error

__all__ = [
    "BlockContext",
    "BlockwiseObjective",
    "Evaluation",
    "Fisher",
    "Hypergradient",
    "Newton",
    "Objective",
    "Proximal",
    "RelativeGradient",
    "closed_form_relative_gradient",
    "criterion",
    "kl_divergence",
    "squared_error",
]
