"""MobileFaceNet (Chen et al., 2018) as insightface's arcface_torch builds it (``mbf``).

The paper's table, for a 112x112 face (t: expansion, c: channels, n: repeats, s: stride)::

    conv3x3                 c=64          s=2     56 x 56
    depthwise conv3x3       c=64          s=1
    bottleneck      t=2     c=64   n=5    s=2     28 x 28
    bottleneck      t=4     c=128  n=1    s=2     14 x 14
    bottleneck      t=2     c=128  n=6    s=1
    bottleneck      t=4     c=128  n=1    s=2      7 x 7
    bottleneck      t=2     c=128  n=2    s=1
    conv1x1                 c=512
    linear GDConv7x7        c=512                  1 x 1
    linear conv1x1          c=D   (a bias-free Linear here), then BatchNorm1d

A bottleneck is ``1x1 expand -> depthwise 3x3/stride -> linear 1x1 project`` (BatchNorm after each
convolution, PReLU after the first two), with the identity shortcut when stride 1 and shape kept.
insightface writes the n repeats of a stage as one strided ``DepthWise`` followed by a
``Residual`` of n-1 blocks, with fixed hidden widths 128/256/512 (``groups``), and multiplies the
stage widths (not the hidden ones) by ``scale``. ``scale=1`` is the paper; insightface's ``mbf``
uses ``scale=2``. Module and parameter names follow insightface (``layers.<i>.layers...``,
``conv_sep``, ``features.layers.{0,2,3}``), so its checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from partialfc.backbones._common import check_input, run_blocks
from partialfc.backbones._registry import register


class ConvBlock(nn.Module):
    """Convolution (no bias) -> BatchNorm2d -> PReLU, as ``layers.{0,1,2}``."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_c, H, W) -> (N, out_c, H', W')."""
        return self.layers(x)


class LinearBlock(nn.Module):
    """Convolution (no bias) -> BatchNorm2d, no activation ("linear"), as ``layers.{0,1}``."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_c, H, W) -> (N, out_c, H', W')."""
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted-residual bottleneck: expand to ``hidden``, depthwise 3x3, linear projection.

    Args:
        in_c: input channels.
        out_c: output channels.
        hidden: expanded width (insightface's ``groups``).
        stride: stride of the depthwise convolution.
        residual: add the input to the output (needs stride 1 and ``in_c == out_c``).
    """

    def __init__(self, in_c: int, out_c: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        if residual and (stride != 1 or in_c != out_c):
            raise ValueError("a residual DepthWise block needs stride 1 and in_c == out_c")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_c, H, W) -> (N, out_c, H/stride, W/stride)."""
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual ``DepthWise`` blocks of constant width ``c``, as ``layers.<i>``."""

    def __init__(self, c: int, num_block: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(c, c, hidden, stride=1, residual=True) for _ in range(num_block))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, c, H, W) -> (N, c, H, W)."""
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise (linear) -> flatten -> Linear -> BN1d.

    ``dropout`` sits between flatten and Linear outside ``layers`` so that the parameter names
    (``layers.0`` GDConv, ``layers.2`` Linear, ``layers.3`` BatchNorm1d) stay insightface's.
    """

    def __init__(self, embedding_size: int, dropout: float = 0.0, channels: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=7, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, 7, 7) -> (N, embedding_size)."""
        gdconv, flatten, linear, bn = self.layers
        return bn(linear(self.dropout(flatten(gdconv(x)))))


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone: (N, 3, 112, 112) images -> (N, embedding_size) embeddings.

    Initialisation is insightface's: convolutions and the Linear ``kaiming_normal_`` (fan_out,
    ReLU gain), BatchNorm scale 1 and shift 0, PReLU slopes 0.25.

    Args:
        embedding_size: width D of the output embedding.
        blocks: repeats of the 56x56 stem stage (1: one depthwise conv, as the paper) and the
            residual blocks after each of the three strided bottlenecks; the paper's (1, 4, 6, 2).
        scale: width multiplier of the stages (1: the paper; 2: insightface's ``mbf``).
        dropout: dropout probability before the final Linear, in [0, 1) (not in insightface).
        checkpoint_activations: recompute each block's activations in backward instead of
            storing them (``torch.utils.checkpoint``, non-reentrant); same outputs and gradients.
        name: the name used in error messages.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 1,
        dropout: float = 0.0,
        checkpoint_activations: bool = False,
        name: str = "mobilefacenet",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise ValueError(f"blocks must be four positive counts, got {list(blocks)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.name = name
        self.embedding_size = int(embedding_size)
        self.checkpoint_activations = bool(checkpoint_activations)
        c64, c128 = 64 * scale, 128 * scale

        # insightface's grouping: groups=64 is depthwise at scale 1, 2 channels per group at 2.
        stem2: nn.Module = (
            ConvBlock(c64, c64, kernel=3, padding=1, groups=64)
            if blocks[0] == 1
            else Residual(c64, blocks[0], hidden=128)
        )
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, c64, kernel=3, stride=2, padding=1),  # 56 x 56
                stem2,
                DepthWise(c64, c64, hidden=128, stride=2, residual=False),  # 28 x 28
                Residual(c64, blocks[1], hidden=128),
                DepthWise(c64, c128, hidden=256, stride=2, residual=False),  # 14 x 14
                Residual(c128, blocks[2], hidden=256),
                DepthWise(c128, c128, hidden=512, stride=2, residual=False),  # 7 x 7
                Residual(c128, blocks[3], hidden=256),
            ]
        )
        self.conv_sep = ConvBlock(c128, 512)
        self.features = GDC(self.embedding_size, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _blocks(self) -> Iterator[nn.Module]:
        """The trunk as a flat sequence of checkpointable blocks (a Residual yields each block)."""
        for layer in self.layers:
            if isinstance(layer, Residual):
                yield from layer.layers
            else:
                yield layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 112, 112) -> embeddings (N, embedding_size), not normalised."""
        check_input(x, self.name)
        x = run_blocks(self._blocks(), x, self.checkpoint_activations)
        return self.features(self.conv_sep(x))


@register
def mobilefacenet(embedding_size: int = 512, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet as in the paper (``scale=1``: 1.0M parameters at D=128, 1.2M at D=512)."""
    kwargs.setdefault("name", "mobilefacenet")
    return MobileFaceNet(embedding_size=embedding_size, **kwargs)


@register
def mbf(embedding_size: int = 512, **kwargs: Any) -> MobileFaceNet:
    """insightface's ``mbf``: MobileFaceNet at ``scale=2``; options as :class:`MobileFaceNet`."""
    kwargs.setdefault("scale", 2)
    kwargs.setdefault("name", "mbf")
    return MobileFaceNet(embedding_size=embedding_size, **kwargs)


@register
def mbf_large(embedding_size: int = 512, **kwargs: Any) -> MobileFaceNet:
    """insightface's ``mbf_large``: MobileFaceNet at ``scale=4`` with blocks (2, 8, 12, 4)."""
    kwargs.setdefault("blocks", (2, 8, 12, 4))
    kwargs.setdefault("scale", 4)
    kwargs.setdefault("name", "mbf_large")
    return MobileFaceNet(embedding_size=embedding_size, **kwargs)
