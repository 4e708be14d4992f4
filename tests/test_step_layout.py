"""Layout and batching of the step: the base rule's foreach operations get contiguous tensors, all of a
param group's blocks at once.

A placement's unview gives transposes (`InputSide`: G ↦ Gᵀ) and column slices (`Layer`: [W | b]), on
which `torch._foreach_*` operations ran 6.6× slower here (CPU, four 1024×1024 tensors).  Pinned:
(a) `matmul_in_layout` is A @ X and keeps a column-major X's layout (a `Dense`, and FOP's MᵀM through it,
    then unviews to a contiguous tensor without a copy);
(b) every preset hands the base rule contiguous directions, whatever its placement;
(c) the base rule runs once per param group and step, for P before it (position "gradient") and after
    it ("direction": HD per parameter had run it per block, through the per-tensor rule).
"""

from __future__ import annotations

import pytest
import torch

from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo
from precondalg.placement import InputSide
from precondalg.structures import Dense, gram
from precondalg.structures._base import matmul_in_layout


def test_matmul_in_layout_is_the_product_in_the_operands_layout():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 4, generator=g, dtype=torch.float64)
    X_rows = torch.randn(4, 3, generator=g, dtype=torch.float64)
    X_cols = torch.randn(3, 4, generator=g, dtype=torch.float64).mT  # column-major (4, 3)
    for X in (X_rows, X_cols):
        Y = matmul_in_layout(A, X)
        torch.testing.assert_close(Y, A @ X, rtol=1e-14, atol=1e-14)
        assert Y.is_contiguous() == X.is_contiguous() and Y.mT.is_contiguous() != X.is_contiguous()
    G = torch.randn(6, 4, generator=g, dtype=torch.float64)  # a weight's gradient (out, in)
    P = gram(Dense(torch.randn(4, 4, generator=g, dtype=torch.float64)))  # FOP's MᵀM
    placement = InputSide()
    (direction,) = placement.unview(P @ placement.view([G]), [G.shape])
    assert direction.is_contiguous()
    torch.testing.assert_close(direction, G @ P.to_dense().mT, rtol=1e-13, atol=1e-13)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


PRESETS = {
    "FOP": lambda m: FOP(m.parameters(), 0.1, base="adam", momentum=0.0),
    "HD": lambda m: HD(m.parameters(), 0.1, 1e-3),
    "PSGD": lambda m: PSGD(m.parameters(), 0.1),
    "LODO": lambda m: LODO(m.parameters(), 0.1),
    "Shampoo": lambda m: Shampoo(m.parameters(), 0.1),
    "KFAC": lambda m: KFAC(m.parameters(), 0.1, model=m),
    "APO": lambda m: APO(m.parameters(), 0.1, model=m, loss_fn=torch.nn.functional.mse_loss, base="adam"),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_base_rule_gets_contiguous_directions(preset, monkeypatch):
    model = _model()
    opt = PRESETS[preset](model)
    seen = []
    base_steps = opt._base_steps

    def spy(group, params, inputs):
        seen.extend((tuple(d.shape), d.is_contiguous()) for d in inputs)
        return base_steps(group, params, inputs)

    monkeypatch.setattr(opt, "_base_steps", spy)
    x, y = torch.randn(4, 6), torch.randn(4, 3)

    def loss():
        return torch.nn.functional.mse_loss(model(x), y)

    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        if preset == "PSGD":
            opt.step(loss)
        elif preset == "APO":
            opt.step(batch=(x, y), fsd_batch=x)
        else:
            opt.step()
    assert seen and all(contiguous for _, contiguous in seen), seen


@pytest.mark.parametrize("preset", ["HD", "FOP", "LODO"])
def test_the_base_rule_runs_once_per_group_and_step(preset, monkeypatch):
    model = _model()
    opt = {
        "HD": lambda m: HD(m.parameters(), 0.1, 1e-3, base="adam", granularity="parameter"),
        "FOP": lambda m: FOP(m.parameters(), 0.1, base="adam", momentum=0.0),
        "LODO": lambda m: LODO(m.parameters(), 0.1),
    }[preset](model)
    calls = []
    base_steps = opt._base_steps

    def spy(group, params, inputs):
        calls.append(len(params))
        return base_steps(group, params, inputs)

    monkeypatch.setattr(opt, "_base_steps", spy)
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert calls == [4, 4, 4], calls
