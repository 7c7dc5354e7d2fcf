"""IResNet (improved ResNet, Duta et al. 2020) as insightface's arcface_torch builds it.

Layout, for a 112x112 RGB face::

    conv1 3x3/1 (3->64) -> bn1 -> prelu                                   64 x 112 x 112
    layer1..layer4: IBasicBlock stages, widths 64/128/256/512, the first
                    block of each with stride 2                            512 x 7 x 7
    bn2 -> flatten -> dropout -> fc (512*7*7 -> D) -> features (BatchNorm1d)    D

An ``IBasicBlock`` is ``bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3/stride -> bn3`` plus the
shortcut, which is ``downsample = Sequential(conv 1x1/stride, BatchNorm2d)`` where the shape
changes (so in every stage's first block).

Parameter and buffer names are insightface's (``conv1, bn1, prelu, layer1..4, bn2, fc,
features``; in a block ``bn1, conv1, bn2, prelu, conv2, bn3, downsample.0, downsample.1``), so an
insightface ``state_dict`` loads by name. Convolutions have no bias, BatchNorm eps is 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from partialfc.backbones._common import check_input, run_blocks
from partialfc.backbones._registry import register

_WIDTHS = (64, 128, 256, 512)
_FINAL_MAP = 7 * 7  # 112 / 2**4 on each side


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet (see the module docstring).

    Args:
        in_channels: channels of the block input.
        channels: channels of the block output (and of its inner convolution).
        stride: stride of the second convolution and of the shortcut.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, channels, H/stride, W/stride)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _stage(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
    """One stage: a stride-2 block that changes the width, then ``blocks - 1`` plain ones."""
    first = IBasicBlock(in_channels, channels, stride=2)
    return nn.Sequential(first, *(IBasicBlock(channels, channels) for _ in range(int(blocks) - 1)))


class IResNet(nn.Module):
    """IResNet backbone: (N, 3, 112, 112) images -> (N, embedding_size) embeddings.

    Initialisation is insightface's: every convolution ``normal(0, 0.1)``, BatchNorm2d scale 1 and
    shift 0, ``fc`` PyTorch's default, and the scale of ``features`` fixed at 1 and frozen
    (``requires_grad=False``: only its shift learns), which arcface_torch does on purpose.
    With this init and BatchNorm's initial running statistics, the residual stream grows by 2x
    (first stage) to 18x (third stage) per block in *eval* mode, so an untrained iresnet50 or
    deeper returns inf/NaN there; training mode, and any trained weights, are fine.

    Args:
        layers: number of blocks in each of the four stages.
        embedding_size: width D of the output embedding.
        dropout: dropout probability before ``fc``, in [0, 1); insightface uses 0 except for
            some large-dataset recipes.
        zero_init_residual: zero the scale of each block's ``bn2`` as insightface's option of that
            name does (it zeroes ``bn2``, the middle BatchNorm, not the last one), so that every
            residual branch starts as zero and each block as the identity (plus its shortcut).
        checkpoint_activations: recompute each block's activations in backward instead of
            storing them (``torch.utils.checkpoint``, non-reentrant); same outputs and gradients.
        name: the name used in error messages.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        checkpoint_activations: bool = False,
        name: str = "iresnet",
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.name = name
        self.embedding_size = int(embedding_size)
        self.checkpoint_activations = bool(checkpoint_activations)

        self.conv1 = _conv3x3(3, _WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(_WIDTHS[0], eps=1e-5)
        self.prelu = nn.PReLU(_WIDTHS[0])
        self.layer1 = _stage(_WIDTHS[0], _WIDTHS[0], layers[0])
        self.layer2 = _stage(_WIDTHS[0], _WIDTHS[1], layers[1])
        self.layer3 = _stage(_WIDTHS[1], _WIDTHS[2], layers[2])
        self.layer4 = _stage(_WIDTHS[2], _WIDTHS[3], layers[3])
        self.bn2 = nn.BatchNorm2d(_WIDTHS[-1], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(_WIDTHS[-1] * _FINAL_MAP, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=1e-5)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 112, 112) -> embeddings (N, embedding_size), not normalised."""
        check_input(x, self.name)
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run_blocks(stage, x, self.checkpoint_activations)
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


# Blocks per stage. r2060 is arcface_torch's 2060-layer experiment (about 1.1e9 parameters).
_LAYERS = {
    "18": (2, 2, 2, 2),
    "34": (3, 4, 6, 3),
    "50": (3, 4, 14, 3),
    "100": (3, 13, 30, 3),
    "200": (6, 26, 60, 6),
    "2060": (3, 128, 1024 - 128, 3),
}


def _iresnet(name: str, depth: str, embedding_size: int, **kwargs: Any) -> IResNet:
    return IResNet(_LAYERS[depth], embedding_size=embedding_size, name=name, **kwargs)


@register
def iresnet18(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-18, stages [2, 2, 2, 2]; options as :class:`IResNet`."""
    return _iresnet("iresnet18", "18", embedding_size, **kwargs)


@register
def iresnet34(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-34, stages [3, 4, 6, 3]; options as :class:`IResNet`."""
    return _iresnet("iresnet34", "34", embedding_size, **kwargs)


@register
def iresnet50(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-50, stages [3, 4, 14, 3]; options as :class:`IResNet`."""
    return _iresnet("iresnet50", "50", embedding_size, **kwargs)


@register
def iresnet100(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-100, stages [3, 13, 30, 3]; options as :class:`IResNet`."""
    return _iresnet("iresnet100", "100", embedding_size, **kwargs)


@register
def iresnet200(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-200, stages [6, 26, 60, 6]; options as :class:`IResNet`."""
    return _iresnet("iresnet200", "200", embedding_size, **kwargs)


# arcface_torch's names (``config.network``) for the same models: identical modules, parameter
# names and initialisation; only the name in error messages differs.


@register
def r18(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r18``: :func:`iresnet18`."""
    return _iresnet("r18", "18", embedding_size, **kwargs)


@register
def r34(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r34``: :func:`iresnet34`."""
    return _iresnet("r34", "34", embedding_size, **kwargs)


@register
def r50(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r50``: :func:`iresnet50`."""
    return _iresnet("r50", "50", embedding_size, **kwargs)


@register
def r100(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r100``: :func:`iresnet100`."""
    return _iresnet("r100", "100", embedding_size, **kwargs)


@register
def r200(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r200``: :func:`iresnet200`."""
    return _iresnet("r200", "200", embedding_size, **kwargs)


@register
def r2060(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """arcface_torch's ``r2060``: stages [3, 128, 896, 3], checkpointed blocks by default (as
    arcface_torch checkpoints its second and third stages in training)."""
    kwargs.setdefault("checkpoint_activations", True)
    return _iresnet("r2060", "2060", embedding_size, **kwargs)
