"""insightface's MXNet ``fresnet`` embedding (LResNetxxE-IR), the layout our iresnet mirrors.

The configuration built here is the one insightface's published IResNet models use
(``version_input=1, version_unit=3, version_act='prelu', version_output='E'``)::

    data -> (x - 127.5) * 0.0078125                      (optional: ``input_scale``)
    conv0 3x3/1 (3->64) -> bn0 -> relu0 (PReLU)
    stage{s}_unit{u}, s = 1..4, widths 64/128/256/512, unit 1 with stride 2:
        _bn1 -> _conv1 3x3 -> _bn2 -> _relu1 (PReLU) -> _conv2 3x3/stride -> _bn3
        + shortcut: identity, or _conv1sc 1x1/stride -> _sc (BatchNorm) in unit 1
    bn1 -> Dropout -> pre_fc1 (FullyConnected to emb_size) -> fc1 (BatchNorm, fix_gamma=True)

Convolutions have no bias; every BatchNorm has ``fix_gamma=False`` except ``fc1``; insightface's
BatchNorm ``eps`` is 2e-5 (partialfc's iresnet uses 1e-5; see docs/legacy.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from partialfc.legacy._mx import import_mxnet

WIDTHS = (64, 128, 256, 512)
INSIGHTFACE_BN_EPS = 2e-5
INSIGHTFACE_INPUT_SCALE = 0.0078125
PARTIALFC_BN_EPS = 1e-5
PARTIALFC_INPUT_SCALE = 1.0 / 127.5


def fresnet_embedding(
    units: Sequence[int],
    emb_size: int = 512,
    bn_eps: float = INSIGHTFACE_BN_EPS,
    bn_mom: float = 0.9,
    dropout: float = 0.4,
    input_scale: float | None = INSIGHTFACE_INPUT_SCALE,
) -> Any:
    """The ``fc1`` embedding symbol (N, emb_size) of an insightface fresnet on (N, 3, 112, 112).

    Args:
        units: residual units in each of the four stages ([3, 4, 14, 3] is LResNet50E-IR).
        emb_size: embedding width D.
        bn_eps: BatchNorm epsilon of every BatchNorm.
        bn_mom: BatchNorm momentum (MXNet's convention: weight of the old running value).
        dropout: dropout probability before ``pre_fc1`` (insightface: 0.4).
        input_scale: start with ``(data - 127.5) * input_scale`` on 0-255 pixels: insightface's
            0.0078125 (1/128), or 1/127.5 to compute exactly what partialfc's backbones compute
            on their [-1, 1] input; None: the symbol takes already normalised images.

    Raises:
        ValueError: ``units`` is not four positive counts.
    """
    if len(units) != 4 or any(int(n) < 1 for n in units):
        raise ValueError(f"units must be four positive counts, got {list(units)}")
    mx = import_mxnet()

    def bn(x: Any, name: str, fix_gamma: bool = False) -> Any:
        return mx.sym.BatchNorm(data=x, fix_gamma=fix_gamma, eps=bn_eps, momentum=bn_mom, name=name)

    def conv(x: Any, channels: int, kernel: int, stride: int, name: str) -> Any:
        pad = (kernel // 2, kernel // 2)
        return mx.sym.Convolution(
            data=x, num_filter=channels, kernel=(kernel, kernel), stride=(stride, stride),
            pad=pad, no_bias=True, name=name,
        )  # fmt: skip

    def prelu(x: Any, name: str) -> Any:
        return mx.sym.LeakyReLU(data=x, act_type="prelu", name=name)

    x = mx.sym.Variable("data")
    if input_scale is not None:
        x = (x - 127.5) * input_scale
    x = prelu(bn(conv(x, WIDTHS[0], 3, 1, "conv0"), "bn0"), "relu0")
    in_channels = WIDTHS[0]
    for s, (width, count) in enumerate(zip(WIDTHS, units, strict=True), start=1):
        for u in range(1, int(count) + 1):
            name = f"stage{s}_unit{u}"
            stride = 2 if u == 1 else 1
            body = conv(bn(x, f"{name}_bn1"), width, 3, 1, f"{name}_conv1")
            body = prelu(bn(body, f"{name}_bn2"), f"{name}_relu1")
            body = bn(conv(body, width, 3, stride, f"{name}_conv2"), f"{name}_bn3")
            if u == 1 and (stride != 1 or in_channels != width):
                shortcut = bn(conv(x, width, 1, stride, f"{name}_conv1sc"), f"{name}_sc")
            else:
                shortcut = x
            x = body + shortcut
            in_channels = width
    x = bn(x, "bn1")
    x = mx.sym.Dropout(data=x, p=dropout)
    x = mx.sym.FullyConnected(data=x, num_hidden=emb_size, name="pre_fc1")
    return bn(x, "fc1", fix_gamma=True)
