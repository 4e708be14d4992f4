"""THEORY.md §7: claims that are not numerically checkable as stated, listed as "not tested".

They appear in the report with their reason and never count as failures.
"""

from __future__ import annotations

from theory_checks.registry import not_tested

CLAIMS = (
    {
        "id": "FOP-THM1",
        "paper": "FOP Thm 1, §6 (Moskovitz 2019)",
        "statement": "Convergence of normalized FOP, as a rigorous theorem.",
        "reason": "The proof is heuristic (it relies on a rotation angle < 90° and on 'fa-2016'); its "
        "consequence is tested as FOP-2 instead.",
        "provenance": "PAPER",
    },
    {
        "id": "PSGD-SCALEINV",
        "paper": "PSGD §3 scale invariance (Li 2019)",
        "statement": "Preconditioned SGD inherits the scale-invariance of the Newton method.",
        "reason": "Only partly testable: criterion (8) is covariant (a PSGD-1 sub-case), but with "
        "v ~ N(0, I) drawn afresh in each coordinate system the fixed point is invariant only for a "
        "noiseless PD Hessian; for indefinite or noisy Ĥ it depends on E[vvᵀ] (a limitation, not a bug).",
        "provenance": "PAPER+DERIVED",
    },
    {
        "id": "LODO-THM4.2",
        "paper": "LODO Thm 4.2, Eqs. 15-16 (Liao 2023)",
        "statement": "The exact probability bound of the expressiveness theorem.",
        "reason": "The function f of Def. 4.1 and Eq. 15 are stripped from the paper text, and f is only "
        "hypothesised to behave like 1 − C e^{−cN/…}; the constructive parts are LODO-9.",
        "provenance": "PAPER",
    },
    {
        "id": "APO-ROBUST",
        "paper": "APO §5 experiments (Bae 2022)",
        "statement": "APO is robust to the initial learning rate and to the meta-update interval.",
        "reason": "An empirical claim about training runs, not a theorem: covered by experiments "
        "APO-E12/E13.",
        "provenance": "PAPER",
    },
)
"""The §7 claims, with THEORY.md's reasons."""

for claim in CLAIMS:
    not_tested(**claim)
