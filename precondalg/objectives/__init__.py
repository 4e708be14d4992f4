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

Statistics objectives answer instead with a `Statistics` (second moments and the closed form of the
optimum in them) for the `ClosedForm` fitter; `Newton` and `Fisher` answer either way.

| objective | statistics | closed form | needs | papers |
| --- | --- | --- | --- | --- |
| `GradientStatistics` | Σ GGᵀ, Σ GᵀG, … of the gradient | ⊗ (S + εI)^(−1/2K) | gradient | Shampoo, AdaGrad |
| `LayerStatistics` | Ḡ = E[ssᵀ], Ā = E[aaᵀ] by module hooks | (Ḡ + γ_G I)⁻¹ ⊗ (Ā + γ_A I)⁻¹ | model | K-FAC |
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
from precondalg.objectives.statistics import (
    GradientStatistics,
    LayerStatistics,
    Statistics,
    factored_tikhonov,
    second_moments,
)

__all__ = [
    "BlockContext",
    "BlockwiseObjective",
    "Evaluation",
    "Fisher",
    "GradientStatistics",
    "Hypergradient",
    "LayerStatistics",
    "Newton",
    "Objective",
    "Proximal",
    "RelativeGradient",
    "Statistics",
    "closed_form_relative_gradient",
    "criterion",
    "factored_tikhonov",
    "kl_divergence",
    "second_moments",
    "squared_error",
]
