"""The arithmetic floor of benchmarks/floor.py (the suite's floor per preset, benchmarks/suite.py): its
counts against hand counts and against FlopCounterMode's count of the same steps, the suite's "fitting
disabled" variant, and the rewriting of the docs page between its markers.  No timing is asserted."""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from precondalg.optim import FOP, PSGD, Shampoo
from precondalg.placement import InputSide

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = ("floor", "suite", "models", "optimizers", "psgd")


@contextlib.contextmanager
def _benchmarks_on_path() -> Iterator[tuple[ModuleType, ModuleType]]:
    """benchmarks/floor.py and suite.py imported as when the suite runs (benchmarks/ first on sys.path);
    afterwards sys.path and the modules of benchmarks/ are as before."""
    saved = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("floor"), importlib.import_module("suite")
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    with _benchmarks_on_path() as pair:
        yield pair


@pytest.fixture(scope="module")
def floor(modules: tuple[ModuleType, ModuleType]) -> ModuleType:
    return modules[0]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


B = 5
X, Y = torch.randn(B, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 1, 0])


def _backward_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), Y).backward()
    opt.step()


def test_a_linear_layers_forward_is_two_flops_per_multiply_add(floor):
    layer = nn.Linear(7, 4)
    assert floor.flops_of(lambda: layer(torch.randn(3, 7))) == 2 * 7 * 4 * 3


def test_forward_and_backward_of_an_mlp_by_hand(floor):
    forward = 2 * B * (8 * 6 + 6 * 3)
    backward = 2 * B * (8 * 6) + 2 * 2 * B * (6 * 3)  # no input gradient for the first layer
    assert floor.forward_backward_flops(_mlp(), X, Y) == forward + backward


def test_dense_input_side_application_by_hand(floor):
    """FOP's P = MᵀM (8×8) on the input side of a (6, 8) weight: two 8×8 products on 6 columns."""
    model = _mlp()
    opt = FOP(model.parameters(), 0.1)
    blocks = opt.preconditioners()
    params, P = blocks[0]
    assert floor.columns(params, P) == 6
    hand = 2 * (2 * 8 * 8) * 6 + 2 * (2 * 6 * 6) * 3
    assert floor.apply_flops(blocks) == hand
    G = InputSide().view([torch.randn(6, 8)])
    assert floor.flops_of(lambda: P @ G) == 2 * (2 * 8 * 8) * 6


def test_fop_step_is_its_application_and_twice_it_for_the_fit(floor):
    model = _mlp()
    opt = FOP(model.parameters(), 0.1)
    _backward_step(model, opt)
    counted = floor.flops_of(lambda: _backward_step(model, opt)) - floor.forward_backward_flops(
        copy.deepcopy(model), X, Y
    )
    blocks = opt.preconditioners()
    assert counted == floor.apply_flops(blocks) + floor.fit_flops("Hypergradient", blocks)
    assert floor.fit_flops("Hypergradient", blocks, probability=0.0) == 0


def test_shampoo_statistics_and_roots_by_hand(floor):
    """Every step the mode-i Grams; the roots by eigh (not counted by FlopCounterMode: 9n³) and
    V diag Vᵀ (counted: 2n³)."""
    model = _mlp()
    opt = Shampoo(model.parameters(), 0.01)
    _backward_step(model, opt)
    counted = floor.flops_of(lambda: _backward_step(model, opt)) - floor.forward_backward_flops(
        copy.deepcopy(model), X, Y
    )
    blocks = opt.preconditioners()
    sizes = [[6, 8], [6], [3, 6], [3]]
    assert [floor.factor_sizes(P) for _, P in blocks] == sizes
    entries = [48, 6, 18, 3]
    grams = sum(2 * n * N for ns, N in zip(sizes, entries) for n in ns)
    cubes = sum(n**3 for ns in sizes for n in ns)
    fit = floor.fit_flops("GradientStatistics", blocks, root_every=1)
    assert fit == grams + floor.ROOT_FLOPS * cubes
    every_10 = floor.fit_flops("GradientStatistics", blocks, root_every=10)
    assert every_10 == pytest.approx(grams + floor.ROOT_FLOPS * cubes / 10)
    assert counted == floor.apply_flops(blocks) + grams + 2 * cubes


def test_psgd_fit_is_counted_but_for_the_triangular_solves(floor):
    model = _mlp()
    opt = PSGD(model.parameters(), 1e-3, preconditioner="kron", criterion="fisher")

    def step() -> None:
        opt.step(lambda: nn.functional.cross_entropy(model(X), Y))

    step()
    counted = floor.flops_of(step) - floor.forward_backward_flops(copy.deepcopy(model), X, Y)
    blocks = opt.preconditioners()
    solves = 0
    for params, P in blocks:
        N = sum(p.numel() for p in params)
        for f in floor.factors(P):
            solves += 2 * (N // f.Q.shape[0]) * f.Q.cost().solve
    fit = floor.fit_flops("Fisher", blocks)
    assert counted == floor.apply_flops(blocks) + fit - solves
    assert floor.fit_flops("Fisher", blocks, probability=0.25) == pytest.approx(fit / 4)


def test_layer_rows(floor):
    """K-FAC's statistics rows: the batch for a Linear, batch × output pixels for a conv; none for a
    layer its parent calls without its forward (MultiheadAttention's out_proj)."""
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert floor.layer_rows(conv, torch.randn(B, 1, 4, 4)) == {"0.weight": B * 16, "2.weight": B}
    block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    rows = floor.layer_rows(block, torch.randn(B, 3, 8))
    assert rows == {"linear1.weight": B * 3, "linear2.weight": B * 3}
    with pytest.raises(ValueError, match="2 row counts for 1 blocks"):
        floor.layer_statistics_fit([([], None)], rows=[1, 2])


def test_unknown_objective_and_uncounted_fit_are_refused(floor):
    with pytest.raises(ValueError, match="no floor rule"):
        floor.fit_flops("Newton", [])
    with pytest.raises(ValueError, match="counted"):
        floor.fit_flops("Proximal", [])
    assert floor.fit_flops("Proximal", [], counted=100.0, probability=0.1) == pytest.approx(10.0)


def test_peak_memory_holds_the_step(floor):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    peak = floor.peak_step_memory(
        lambda: _backward_step(model, opt),
        torch.device("cpu"),
        lambda: floor.tensor_bytes([*params, *(p.grad for p in params)]),
    )
    n = sum(p.numel() for p in params)
    assert peak["held_bytes"] == 2 * 4 * n
    assert peak["excess_bytes"] > 0
    over_two = floor.peak_step_memory(
        lambda: _backward_step(model, opt), torch.device("cpu"), lambda: 0, steps=2
    )
    assert over_two["steps"] == 2 and over_two["excess_bytes"] == peak["excess_bytes"]


def test_the_no_fit_entries_keep_phi(modules):
    """Every "no fit" entry of the suite applies P and never moves φ (its public update_probability=0)."""
    _, suite = modules
    entries = [e for e in suite.entries() if e.group == "no fit"]
    assert len(entries) == 5
    for entry in entries:
        model = _mlp()
        opt = entry.make(model)
        before = suite._phi(opt)
        assert before, entry.name
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), Y).backward()
            opt.step(batch=(X, Y), fsd_batch=X) if entry.with_batches else opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, suite._phi(opt), strict=True)), entry.name


def test_the_page_is_rewritten_between_its_markers(modules, tmp_path):
    _, suite = modules
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nprose\n\n{suite.BEGIN}\nold\n{suite.END}\n\nmore prose\n")
    suite.write_page(page, "new table")
    assert page.read_text() == f"# Title\n\nprose\n\n{suite.BEGIN}\nnew table\n{suite.END}\n\nmore prose\n"
    page.write_text("no markers")
    with pytest.raises(ValueError, match="expected exactly one"):
        suite.write_page(page, "x")


def test_the_tree_state_reads_git_status_paths_whole(modules, tmp_path, monkeypatch):
    """A modified tracked file's status line starts with a space (" M path"): the first line's path must
    not lose its first letter (it had, and the suite's own output then counted as a change of the tree)."""
    _, suite = modules
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "out.json").write_text("1")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    (tmp_path / "out.json").write_text("2")  # the run's own output: not a change of the tree
    assert suite.tree_state([tmp_path / "out.json"])["tree_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    state = suite.tree_state([tmp_path / "out.json"])
    assert state["changed"] == ["M code.py"] and state["fingerprint"]
