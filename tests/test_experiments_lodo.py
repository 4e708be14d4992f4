"""LODO's registered experiments LODO-E1b (noise), LODO-E1c (frozen preconditioner) and LODO-E3 (ablations
on autoregressive digits): their exact pieces — σ²-proportional losses of the linear methods, the frozen G
staying bit for bit, the blow-up rule, the causal inputs, each ablation row's structure — and, in the slow
tier, that each ``--quick --strict`` run passes with the claim outcomes of the committed full run."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from precondalg.experiments import registered
from precondalg.experiments.harness import train
from precondalg.experiments.lodo import (
    ADAPTIVE,
    LODO_BOWL,
    NOISE_SIGMA2,
    blowup_step,
    frozen_copy,
    rescaled_losses,
    variation,
)
from precondalg.experiments.lodo_nets import (
    ABLATIONS,
    CHOSEN,
    NEIGHBOURS,
    ROWS,
    causal_digits,
    causal_inputs,
    pixel_model,
)
from precondalg.experiments.noisy_bowl import NewtonOracle, NoisyBowl, inverse_hessian_estimate, run
from precondalg.optim import LODO

EXPERIMENTS = registered()
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "results"
NEW = ("LODO-E1b", "LODO-E1c", "LODO-E3")


def test_the_lodo_experiments_are_registered_in_the_papers_order():
    names = [n for n in EXPERIMENTS if n.startswith("LODO-")]
    assert names == ["LODO-E1", "LODO-E1b", "LODO-E1c", "LODO-E2", "LODO-E3"]
    for name in NEW:
        assert EXPERIMENTS[name].seeds >= 3 and EXPERIMENTS[name].quick_minutes < EXPERIMENTS[name].minutes


# ------------------------------------------------------------------------------------------- LODO-E1b
@pytest.mark.parametrize(
    "make",
    [
        lambda p, bowl, seed: torch.optim.SGD(p, lr=1.6),
        lambda p, bowl, seed: torch.optim.SGD(p, lr=1.394, momentum=0.529),
        lambda p, bowl, seed: NewtonOracle(p, bowl),
    ],
    ids=["SGD", "Momentum", "Newton"],
)
def test_linear_methods_give_the_same_loss_over_sigma2_bit_for_bit(make):
    """σ ∈ {0.5, 1, 2} are powers of 2 and the walk is the same normals scaled by σ: every iterate of a
    method linear in the noise scales exactly, so loss/σ² is the same float at every σ²."""
    scaled = rescaled_losses(make, 300, seed=4)
    assert scaled[0] == scaled[1] == scaled[2] and math.isfinite(scaled[0]) and variation(scaled) == 0.0


def test_lodo_is_nearly_but_adam_is_not_invariant_to_the_noise_scale():
    """LODO's meta-optimizer (Adam) normalises the hypergradient, so its G follows the same path at every
    σ (up to ε = 1e-7); Adam's own step ignores the scale of the gradient, so its loss/σ² moves."""
    lodo = rescaled_losses(lambda p, bowl, seed: LODO(p, **LODO_BOWL, seed=seed), 150, seed=0)
    adam = rescaled_losses(lambda p, bowl, seed: torch.optim.Adam(p, lr=1.164, betas=(0.465, 0.9884)), 150, 0)
    assert variation(lodo) < 1e-4 < 0.1 < variation(adam)
    assert len(lodo) == len(NOISE_SIGMA2) and ADAPTIVE[0] == "Adam (paper-tuned)"


def test_variation_is_the_spread_over_the_smallest():
    assert variation([2.0, 3.0, 2.5]) == 0.5 and variation([1.0, 1.0]) == 0.0


# ------------------------------------------------------------------------------------------- LODO-E1c
def test_blowup_step_is_the_first_loss_above_a_million_times_the_first_or_non_finite():
    assert blowup_step(torch.tensor([2.0, 3.0, 2e6, 3e6])) == 3.0
    assert blowup_step(torch.tensor([2.0, math.nan, 1.0])) == 1.0
    assert blowup_step(torch.tensor([2.0, 2e6, 1.0])) == math.inf  # exactly 1e6 × is not above


def test_the_frozen_copy_keeps_g_bit_for_bit_and_restarts_the_momentum():
    """After 200 trained steps: the copy's G equals the trained one's, its EMA starts at 0, and 40 steps on
    another bowl (meta_lr = 0) leave G unchanged bit for bit while x moves."""
    trained = run(functools.partial(LODO, **LODO_BOWL, seed=3), 200, bowl=NoisyBowl(20, 1.0, 1e-3, 3))
    G = inverse_hessian_estimate(trained.optimizer)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    frozen = frozen_copy(trained.optimizer, [x])
    assert torch.equal(inverse_hessian_estimate(frozen), G)
    assert torch.equal(frozen.state[x]["exp_avg"], torch.zeros(20, dtype=torch.float64))
    moved = run(lambda p: frozen_copy(trained.optimizer, p), 40, bowl=NoisyBowl(20, 1.0, 1e-3, 1003))
    assert torch.equal(inverse_hessian_estimate(moved.optimizer), G)
    assert not torch.equal(G, LODO_BOWL["lr"] * torch.eye(20, dtype=torch.float64))  # it did learn


# -------------------------------------------------------------------------------------------- LODO-E3
def test_causal_inputs_see_only_earlier_pixels_at_their_offsets():
    """Changing pixel p changes the inputs of no pixel at or before p in raster order, and a pixel's 12
    neighbour features are the image at its `NEIGHBOURS` offsets (/16, 0 outside the image)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(17, (1, 8, 8), generator=g)
    inputs, targets = causal_inputs(image)
    assert inputs.shape == (64, 14) and torch.equal(targets, image.flatten())
    for p in (0, 9, 27, 63):
        other = image.clone()
        other.view(-1)[p] = (other.view(-1)[p] + 5) % 17
        changed = (causal_inputs(other)[0] != inputs).any(1).nonzero().flatten()
        assert changed.numel() == 0 or int(changed.min()) > p
    y, x = 5, 1
    expected = [
        image[0, y + dy, x + dx] / 16 if 0 <= y + dy < 8 and 0 <= x + dx < 8 else 0.0 for dy, dx in NEIGHBOURS
    ]
    assert inputs[8 * y + x, :12].tolist() == pytest.approx([float(v) for v in expected], abs=0)
    assert inputs[8 * y + x, 12:].tolist() == pytest.approx([-1 + 2 / 7, -1 + 10 / 7])


def test_each_ablation_row_builds_the_intended_preconditioner():
    """Table 3's rows: structure, φ (the residual network has N = 64 layers), meta-optimizer and its lr,
    and β (0 without momentum), as `ABLATIONS` says."""
    task = causal_digits(0, 1)
    task.seed = 0
    expected = {
        "LODO": ("permutation_network_gram", "Adam"),
        "LODO-Diagonal": ("diagonal", "Adam"),
        "LODO-Global": ("scalar", "Adam"),
        "LODO-Residuals": ("residual_network_gram", "Adam"),
        "LODO-No-Momentum": ("permutation_network_gram", "Adam"),
        "LODO-SGD": ("permutation_network_gram", "SGD"),
    }
    assert set(expected) == set(ABLATIONS)
    for name, (structure, fitter) in expected.items():
        opt = ROWS[name].make(task.model, task, lr=0.5)
        config = opt.configuration()
        (block,) = config["blocks"]
        assert (block["structure"], config["fitter"]) == (structure, f"TorchOptimizer({fitter})"), name
        assert opt._fitter.kwargs["lr"] == ABLATIONS[name]["meta_lr"], name
        assert opt.param_groups[0]["momentum"] == ABLATIONS[name].get("beta", 0.0), name
        assert opt.param_groups[0]["lr"] == 0.5
        assert ("leaves 64×" in block["phi"]) == (name == "LODO-Residuals"), block["phi"]
    assert {len(m.grid) for m in ROWS.values()} == {5}


def test_the_task_gives_every_row_the_same_model_and_batches_and_trains():
    a, b = causal_digits(2, 30), causal_digits(2, 30)
    assert sum(p.numel() for p in pixel_model().parameters()) == 557
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert all(torch.equal(a.batches[t][0], b.batches[t][0]) for t in (0, 29))
    with pytest.raises(ValueError, match="does not cycle"):
        train(ROWS["Adam"], {"lr": 0.03}, lambda s: causal_digits(s, 30), 0, 31)
    record = train(ROWS["Adam"], {"lr": 0.03}, lambda s: causal_digits(s, 30), 0, 30)
    assert record.curve[0][1] > record.final_loss  # 30 Adam steps lower the training loss from ln-ish 17


def test_quick_points_are_the_committed_full_runs_choices():
    """``--quick`` runs `CHOSEN` without tuning: they must be what the committed full run chose."""
    full = json.loads((RESULTS / "LODO-E3" / "results.json").read_text())
    assert not full["config"]["quick"]
    assert {k: v["chosen"]["lr"] for k, v in full["tuning"].items()} == CHOSEN
    assert set(CHOSEN) == set(ROWS)

