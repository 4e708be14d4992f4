"""Checkpoints (QUALITY.md §2): a run interrupted at step k, saved with `state_dict()`, loaded with
``torch.load(weights_only=True)`` in a fresh Python process into a freshly constructed model and optimizer
and continued, equals the uninterrupted run bit for bit — parameters and the whole optimizer state
(φ, caches, step counters, the meta-optimizer's state).  Also deepcopy and pickle round trips.

The fresh process builds its optimizer with another seed and its model from another initialisation, so
that everything the continuation needs must come from the checkpoint.
"""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import optim_helpers
import pytest
import torch
from optim_helpers import CONFIGS, assert_equal, assert_trees_equal, clone_params, make_model, run, snapshot

TOTAL, STOP = 8, 4
NAMES = sorted(CONFIGS)

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, sys.argv[1])
    import optim_helpers as h

    folder = Path(sys.argv[2])
    for name in sys.argv[3:]:
        kind, build = h.CONFIGS[name]
        checkpoint = torch.load(folder / f"{name}.pt", weights_only=True)
        model = h.make_model(kind, seed=123)
        model.load_state_dict(checkpoint["model"])
        opt = build(model.parameters(), 99)
        opt.load_state_dict(checkpoint["optim"])
        h.run(model, opt, kind, checkpoint["remaining"], start=checkpoint["step"])
        result = {"params": h.clone_params(model.parameters()), "state": opt.state_dict()}
        torch.save(result, folder / f"{name}.out.pt")
    """
)


def _uninterrupted(name: str) -> tuple[list[torch.Tensor], dict]:
    kind, build = CONFIGS[name]
    model = make_model(kind)
    opt = build(model.parameters(), 0)
    run(model, opt, kind, TOTAL)
    return clone_params(model.parameters()), snapshot(opt)


def _interrupted(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    kind, build = CONFIGS[name]
    model = make_model(kind)
    opt = build(model.parameters(), 0)
    run(model, opt, kind, STOP)
    return model, opt


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory) -> Path:
    """Checkpoints of every configuration at step STOP, continued to TOTAL by one fresh Python process."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for name in NAMES:
        model, opt = _interrupted(name)
        torch.save(
            {"model": model.state_dict(), "optim": opt.state_dict(), "step": STOP, "remaining": TOTAL - STOP},
            folder / f"{name}.pt",
        )
    script = folder / "resume.py"
    script.write_text(CHILD)
    tests_dir = str(Path(optim_helpers.__file__).parent)
    done = subprocess.run(
        [sys.executable, str(script), tests_dir, str(folder), *NAMES],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the resuming process failed:\n{done.stderr}"
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_resume_in_a_fresh_process_is_bit_exact(fresh_process, name):
    params, state = _uninterrupted(name)
    resumed = torch.load(fresh_process / f"{name}.out.pt", weights_only=True)
    assert_equal(params, resumed["params"])
    assert_trees_equal(state, resumed["state"])


def test_the_checkpoint_carries_the_learned_state():
    """Guard against a vacuous comparison: φ has moved by step STOP, and the fresh seed/initialisation
    differ from the original ones."""
    model, opt = _interrupted("fop-lowrank")
    fresh = CONFIGS["fop-lowrank"][1](make_model("mlp", seed=123).parameters(), 99)
    moved = [
        not torch.equal(a, b)
        for (_, P), (_, Q) in zip(opt.preconditioners(), fresh.preconditioners())
        for a, b in zip(torch.utils._pytree.tree_leaves(P), torch.utils._pytree.tree_leaves(Q))
    ]
    assert all(moved)


def _continue_and_compare(name: str, copy_fn) -> None:
    kind, _ = CONFIGS[name]
    params, state = _uninterrupted(name)
    model, opt = _interrupted(name)
    model2, opt2 = copy_fn((model, opt))
    run(model, opt, kind, TOTAL - STOP, start=STOP)  # the original goes on, independently of the copy
    run(model2, opt2, kind, TOTAL - STOP, start=STOP)
    for m, o in ((model, opt), (model2, opt2)):
        assert_equal(params, clone_params(m.parameters()))
        assert_trees_equal(state, snapshot(o))


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_continues_bit_exactly(name):
    _continue_and_compare(name, copy.deepcopy)


@pytest.mark.parametrize("name", NAMES)
def test_pickle_continues_bit_exactly(name):
    _continue_and_compare(name, lambda obj: pickle.loads(pickle.dumps(obj)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "name", ["fop-full", "fop-conv", "hd-layer-adam", "generic-rmsprop", "shampoo-ema-adam-graft-cnn", "kfac"]
)
def test_state_dict_round_trip_keeps_dtypes(name, dtype):
    """In-process save/load with low-precision parameters: the preconditioner (float32 for bfloat16
    parameters), the meta-optimizer's state and the skip counter (int64) must survive unrounded."""
    kind, build = CONFIGS[name]
    ref = make_model(kind, dtype)
    ref_opt = build(ref.parameters(), 0)
    run(ref, ref_opt, kind, TOTAL)
    model = make_model(kind, dtype)
    opt = build(model.parameters(), 0)
    run(model, opt, kind, STOP)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model2 = make_model(kind, dtype, seed=123)
    model2.load_state_dict(checkpoint["model"])
    opt2 = build(model2.parameters(), 99)
    opt2.load_state_dict(checkpoint["optim"])
    run(model2, opt2, kind, TOTAL - STOP, start=STOP)
    assert_equal(clone_params(ref.parameters()), clone_params(model2.parameters()))
    assert_trees_equal(snapshot(ref_opt), snapshot(opt2))
