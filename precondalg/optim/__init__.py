"""torch.optim front-ends (layer 5): the generic `Preconditioned` optimizer and thin presets."""

from precondalg.optim._distributed import dcp_load, dcp_save
from precondalg.optim._watch import SkippedStepWarning
from precondalg.optim.apo import APO, fsd_batches
from precondalg.optim.base_rules import BASE_RULES, BaseRule, Graft, base_rule
from precondalg.optim.choices import ByNdim, Every, by_ndim, every
from precondalg.optim.fop import FOP
from precondalg.optim.hd import HD
from precondalg.optim.kfac import KFAC
from precondalg.optim.lodo import LODO
from precondalg.optim.preconditioned import Preconditioned, optimizer_generator
from precondalg.optim.psgd import PSGD
from precondalg.optim.shampoo import Shampoo

__all__ = [
    "APO",
    "BASE_RULES",
    "FOP",
    "HD",
    "KFAC",
    "LODO",
    "BaseRule",
    "ByNdim",
    "Every",
    "Graft",
    "PSGD",
    "Preconditioned",
    "Shampoo",
    "SkippedStepWarning",
    "base_rule",
    "by_ndim",
    "dcp_load",
    "dcp_save",
    "every",
    "fsd_batches",
    "optimizer_generator",
]
