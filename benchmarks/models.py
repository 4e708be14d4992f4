"""The benchmark models and their data, shared by benchmarks/optimizers.py, psgd.py and suite.py.

Every model is trained with cross-entropy on ``(x, y)`` batches fixed in advance from a seed, so that every
method of a run sees the same sequence of batches:

- ``digits-mlp``: MLP 64-100-100-10 (ReLU) on scikit-learn's ``load_digits`` (pixels / 16), batch 128;
- ``digits-cnn``: conv 3×3 16 → pool → conv 3×3 32 → pool → linear 128 → 10 on the digits as 1×8×8
  images, batch 128;
- ``mlp3x256``: MLP 256-256-256-256-10 (ReLU) on x ~ N(0, I₂₅₆) labelled by a fixed random linear
  teacher, batch 128;
- ``transformer``: embedding (vocabulary 64, width 128) → one ``nn.TransformerEncoderLayer(128, 4 heads,
  feed-forward 256, dropout 0, batch first)`` with a causal mask → linear head 64, on the next token of
  32 sequences of 32 tokens drawn from a fixed random Markov chain;
- ``mlp4x1024``: MLP 1024-1024-1024-1024-1024-10 (ReLU) on x ~ N(0, I₁₀₂₄) and a fixed random linear
  teacher, batch 256.

The transformer returns its logits flattened to (batch·32, 64) and its targets are the next tokens
flattened to (batch·32,), so that ``cross_entropy(model(x), y)`` is its loss as for the other models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from precondalg.experiments.tasks import digits_cnn_model

BATCH = 128
VOCAB, WIDTH, HEADS, FEEDFORWARD, SEQUENCE, SEQUENCES = 64, 128, 4, 256, 32, 32


# ----------------------------------------------------------------------------------------------- models
def make_mlp() -> nn.Module:
    """The digits MLP 64-100-100-10 (ReLU)."""
    return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


make_cnn = digits_cnn_model
"""1×8×8 → conv3×3 16 → pool → 16×4×4 → conv3×3 32 → pool → 32×2×2 → linear 128 → 10 (the digits CNN of
`precondalg.experiments.tasks`)."""


def make_wide_mlp(width: int, depth: int) -> nn.Module:
    """`depth` hidden layers Linear(width, width) + ReLU on `width` inputs, then Linear(width, 10)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def make_mlp3x256() -> nn.Module:
    return make_wide_mlp(256, 3)


def make_mlp4x1024() -> nn.Module:
    return make_wide_mlp(1024, 4)


class TokenBlock(nn.Module):
    """A transformer block on tokens: embedding → `nn.TransformerEncoderLayer` (causal mask, no dropout,
    batch first) → linear head; the logits come out flattened to (batch·sequence, vocabulary)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        width: int = WIDTH,
        heads: int = HEADS,
        feedforward: int = FEEDFORWARD,
        sequence: int = SEQUENCE,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.TransformerEncoderLayer(width, heads, feedforward, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, vocab)
        mask = nn.Transformer.generate_square_subsequent_mask(sequence)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.block(self.embed(tokens), src_mask=self.mask, is_causal=True)
        return self.head(hidden).reshape(-1, self.head.out_features)


# ------------------------------------------------------------------------------------------------- data
def digits_batches(device: torch.device, n_batches: int, seed: int) -> tuple[list, list]:
    """Fixed shuffled batches of load_digits (pixels / 16): (x_flat, y) and (x_image, y) per batch."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    flat, image = [], []
    order = torch.empty(0, dtype=torch.long)
    while len(flat) < n_batches:
        if order.numel() < BATCH:
            order = torch.cat([order, torch.randperm(len(X), generator=g)])
        idx, order = order[:BATCH], order[BATCH:]
        xb, yb = X[idx].to(device), y[idx].to(device)
        flat.append((xb, yb))
        image.append((xb.reshape(-1, 1, 8, 8), yb))
    return flat, image


def synthetic_batches(
    device: torch.device, n_batches: int, seed: int, dim: int = 256, batch: int = BATCH
) -> list:
    """Fixed batches of x ~ N(0, I_dim) labelled by a fixed random linear teacher (10 classes)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, 10, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, dim, generator=g)
        out.append((x.to(device), (x @ teacher).argmax(1).to(device)))
    return out


def token_batches(
    device: torch.device,
    n_batches: int,
    seed: int,
    vocab: int = VOCAB,
    sequence: int = SEQUENCE,
    batch: int = SEQUENCES,
) -> list:
    """Fixed batches of `batch` sequences of `sequence` + 1 tokens from a fixed random Markov chain
    (transition rows softmax(3·N(0, 1))): inputs the first `sequence` tokens, targets the next ones,
    flattened."""
    g = torch.Generator().manual_seed(seed)
    transitions = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), dim=1)
    out = []
    for _ in range(n_batches):
        tokens = torch.empty(batch, sequence + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(vocab, (batch,), generator=g)
        for t in range(sequence):
            tokens[:, t + 1] = torch.multinomial(transitions[tokens[:, t]], 1, generator=g).squeeze(1)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].reshape(-1).to(device)))
    return out


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its description, its constructor and its batches."""

    description: str
    make: Callable[[], nn.Module]
    batches: Callable[[torch.device, int, int], list]


MODELS: dict[str, ModelSpec] = {
    "digits-mlp": ModelSpec(
        "digits MLP 64-100-100-10 (ReLU), load_digits, batch 128",
        make_mlp,
        lambda device, n, seed: digits_batches(device, n, seed)[0],
    ),
    "digits-cnn": ModelSpec(
        "digits CNN conv16-conv32-linear, load_digits as 1x8x8 images, batch 128",
        make_cnn,
        lambda device, n, seed: digits_batches(device, n, seed)[1],
    ),
    "mlp3x256": ModelSpec(
        "MLP 256-256-256-256-10 (ReLU), synthetic N(0,1) inputs, batch 128",
        make_mlp3x256,
        lambda device, n, seed: synthetic_batches(device, n, seed, 256, BATCH),
    ),
    "transformer": ModelSpec(
        f"embedding {VOCAB}x{WIDTH} + nn.TransformerEncoderLayer(d_model={WIDTH}, nhead={HEADS}, "
        f"dim_feedforward={FEEDFORWARD}, dropout=0, causal) + linear head; next token of "
        f"{SEQUENCES} synthetic Markov-chain sequences of length {SEQUENCE}",
        TokenBlock,
        lambda device, n, seed: token_batches(device, n, seed),
    ),
    "mlp4x1024": ModelSpec(
        "MLP 1024-1024-1024-1024-1024-10 (ReLU), synthetic N(0,1) inputs, batch 256",
        make_mlp4x1024,
        lambda device, n, seed: synthetic_batches(device, n, seed, 1024, 256),
    ),
}


def model_and_batches(kind: str, device: torch.device, n_batches: int, seed: int) -> tuple[nn.Module, list]:
    """The model `kind` of `MODELS`, initialised from `seed`, on `device`, and its `n_batches` batches."""
    spec = MODELS[kind]
    torch.manual_seed(seed)
    model = spec.make().to(device)
    return model, spec.batches(device, n_batches, seed)
