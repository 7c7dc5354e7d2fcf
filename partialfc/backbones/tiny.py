"""``tinyface``: a small residual CNN (about 0.5M parameters) for CPU demos, smoke runs and tests.

Same contract as the production backbones: aligned 112x112 RGB faces in, an embedding out, built
by name from the registry. Four stride-2 stages (16, 32, 64, 128 channels) end on a 7x7 map, then
BN-dropout-FC-BN as in iresnet. It trains on two CPU cores in minutes (the embedded demo).

``norm="group"`` replaces BatchNorm with GroupNorm: the output of each image then depends on that
image only, so training on N ranks equals training on one process exactly (BatchNorm's running and
per-rank batch statistics differ by design); the trainer's equivalence tests rely on it.
"""

from __future__ import annotations

import torch
from torch import nn

from partialfc.backbones._common import check_input, run_blocks
from partialfc.backbones._registry import register

WIDTHS = (16, 32, 64, 128)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class _Block(nn.Module):
    """conv3x3(stride) - norm - PReLU - conv3x3 - norm, plus a projected shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            _norm(norm, cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            _norm(norm, cout),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout)
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class TinyFace(nn.Module):
    def __init__(
        self,
        embedding_size: int,
        dropout: float,
        checkpoint_activations: bool,
        norm: str,
        name: str,
    ) -> None:
        super().__init__()
        self.name = name
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        chans = (3, *WIDTHS)
        self.blocks = nn.ModuleList(
            _Block(chans[i], chans[i + 1], 2, norm) for i in range(4)
        )  # 112 -> 7
        self.bn2 = _norm(norm, WIDTHS[-1])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(WIDTHS[-1] * 7 * 7, embedding_size)
        self.features = (
            nn.BatchNorm1d(embedding_size) if norm == "batch" else nn.LayerNorm(embedding_size)
        )
        self.checkpoint_activations = checkpoint_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.name)
        x = run_blocks(self.blocks, x, self.checkpoint_activations)
        x = self.dropout(self.bn2(x)).flatten(1)
        return self.features(self.fc(x))


@register
def tinyface(
    embedding_size: int = 512,
    dropout: float = 0.0,
    checkpoint_activations: bool = False,
    norm: str = "batch",
) -> nn.Module:
    """A ~0.5M-parameter residual CNN for CPU demos and tests (see the module docstring)."""
    return TinyFace(embedding_size, dropout, checkpoint_activations, norm, "tinyface")


@register
def tinyface_gn(
    embedding_size: int = 512, dropout: float = 0.0, checkpoint_activations: bool = False
) -> nn.Module:
    """tinyface with GroupNorm: each image's embedding depends on that image alone, so small
    per-rank batches do not skew statistics and N ranks reproduce one process exactly."""
    return TinyFace(embedding_size, dropout, checkpoint_activations, "group", "tinyface_gn")
