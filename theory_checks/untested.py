"""Claims of the papers that are not numerically checkable as stated, listed as "not tested".

They appear in the report with their reason and never count as failures.  A reason names only checks
that are registered, or marks a check as "(planned)" when it is not implemented yet.
"""

from __future__ import annotations

from theory_checks.registry import not_tested

CLAIMS = (
    {
        "id": "FOP-THM1",
        "paper": "FOP Thm 1, §6 (Moskovitz 2019)",
        "statement": "Convergence of normalized FOP, as a rigorous theorem.",
        "reason": "The proof is heuristic: it relies on the rotation angle induced by P staying below 90° "
        "(an observation, Supplementary Fig. A.1) and on a cited result ('fa-2016' in the paper text) that "
        "such a rotation does not impede convergence.  Its consequence, convergence of normalized FOP on a "
        "convex smooth problem, is checked by FOP-2.",
        "provenance": "PAPER",
    },
    {
        "id": "PSGD-SCALEINV",
        "paper": "PSGD §3 scale invariance (Li 2019)",
        "statement": "Preconditioned SGD inherits the scale-invariance of the Newton method.",
        "reason": "Only partly testable.  Criterion (8) is covariant: under θ′ = Dθ its solution maps to "
        "P′ = DPDᵀ, which PSGD-1 checks as a sub-case.  But with v ~ N(0, I) drawn afresh in "
        "each coordinate system the fixed point is invariant only for a noiseless positive definite "
        "Hessian; for an indefinite or noisy Ĥ it depends on E[vvᵀ] (a limitation, not a bug).",
        "provenance": "PAPER+DERIVED",
    },
    {
        "id": "LODO-THM4.2",
        "paper": "LODO Thm 4.2, Eqs. 15-16 (Liao 2023)",
        "statement": "The exact probability bound of the expressiveness theorem.",
        "reason": "The function f of Def. 4.1 and Eq. 15 are stripped from the paper text, and f is only "
        "hypothesised to behave like 1 − C e^{−cN/…}; the constructive parts of the theorem are "
        "checked by LODO-9.",
        "provenance": "PAPER",
    },
    {
        "id": "APO-ROBUST",
        "paper": "APO §5 experiments (Bae 2022)",
        "statement": "APO is robust to the initial learning rate and to the meta-update interval.",
        "reason": "An empirical claim about training runs, not a theorem: it is for experiments that sweep "
        "the initial learning rate and the meta-update interval (planned), not for a numerical check.",
        "provenance": "PAPER",
    },
)
"""The claims, each with the reason it is not checked."""

for claim in CLAIMS:
    not_tested(**claim)
