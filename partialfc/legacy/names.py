"""Parameter names: insightface MXNet ``fresnet`` <-> partialfc ``iresnet`` (no MXNet needed).

=====================================  =====================================
MXNet (fresnet, unit version 3)        partialfc iresnet
=====================================  =====================================
``conv0_weight``                       ``conv1.weight``
``bn0_*``                              ``bn1.*``
``relu0_gamma``                        ``prelu.weight``
``stage{s}_unit{u}_bn1_*``             ``layer{s}.{u-1}.bn1.*``
``stage{s}_unit{u}_conv1_weight``      ``layer{s}.{u-1}.conv1.weight``
``stage{s}_unit{u}_bn2_*``             ``layer{s}.{u-1}.bn2.*``
``stage{s}_unit{u}_relu1_gamma``       ``layer{s}.{u-1}.prelu.weight``
``stage{s}_unit{u}_conv2_weight``      ``layer{s}.{u-1}.conv2.weight``
``stage{s}_unit{u}_bn3_*``             ``layer{s}.{u-1}.bn3.*``
``stage{s}_unit{u}_conv1sc_weight``    ``layer{s}.{u-1}.downsample.0.weight``
``stage{s}_unit{u}_sc_*``              ``layer{s}.{u-1}.downsample.1.*``
``bn1_*``                              ``bn2.*``
``pre_fc1_weight``, ``pre_fc1_bias``   ``fc.weight``, ``fc.bias``
``fc1_*``                              ``features.*``
``fc7_weight``, ``fc7_bias``           checkpoint ``head.weight``, ``head.bias``
=====================================  =====================================

BatchNorm ``*``: ``gamma, beta, moving_mean, moving_var`` <-> ``weight, bias, running_mean,
running_var``. Array layouts are the same on both sides (OIHW convolutions, (out, in) fully
connected on the same C-order flattening of the 512x7x7 map, per-channel PReLU slopes), so values
are copied bit for bit. ``num_batches_tracked`` has no MXNet counterpart (written as 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
}
_BN_BACK = {v: k for k, v in _BN.items()}
_SUFFIXES = ("moving_mean", "moving_var", "gamma", "beta", "weight")

# Top-level layers: MXNet name -> (torch module, kind).
_TOP = {
    "conv0": ("conv1", "conv"),
    "bn0": ("bn1", "bn"),
    "relu0": ("prelu", "prelu"),
    "bn1": ("bn2", "bn"),
    "pre_fc1": ("fc", "fc"),
    "fc1": ("features", "bn"),
}
# Layers inside a unit: MXNet suffix -> (torch module inside the block, kind).
_UNIT = {
    "bn1": ("bn1", "bn"),
    "conv1": ("conv1", "conv"),
    "bn2": ("bn2", "bn"),
    "relu1": ("prelu", "prelu"),
    "conv2": ("conv2", "conv"),
    "bn3": ("bn3", "bn"),
    "conv1sc": ("downsample.0", "conv"),
    "sc": ("downsample.1", "bn"),
}
_UNIT_NAME = re.compile(r"^stage([1-4])_unit([1-9]\d*)_(.+)$")
_BLOCK_NAME = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")

HEAD_NAMES = {"fc7_weight": "head.weight", "fc7_bias": "head.bias"}
"""Class centres (and softmax bias): MXNet argument -> partialfc checkpoint key."""


def _split(name: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if name.endswith("_" + suffix):
            return name[: -len(suffix) - 1], suffix
    if name.endswith("_bias"):
        return name[: -len("_bias")], "bias"
    return None


def _torch_param(kind: str, suffix: str) -> str | None:
    if kind == "bn":
        return _BN.get(suffix)
    if kind == "prelu":
        return "weight" if suffix == "gamma" else None
    if kind == "conv":
        return "weight" if suffix == "weight" else None
    return suffix if suffix in ("weight", "bias") else None  # fc


def mxnet_to_torch(name: str) -> str | None:
    """The iresnet ``state_dict`` key of a fresnet parameter, or None if it does not map."""
    parts = _split(name)
    if parts is None:
        return None
    layer, suffix = parts
    unit = _UNIT_NAME.match(layer)
    if unit:
        stage, index, inner = unit.groups()
        if inner not in _UNIT:
            return None
        module, kind = _UNIT[inner]
        prefix = f"layer{stage}.{int(index) - 1}.{module}"
    elif layer in _TOP:
        prefix, kind = _TOP[layer]
    else:
        return None
    param = _torch_param(kind, suffix)
    return f"{prefix}.{param}" if param else None


def torch_to_mxnet(key: str) -> str | None:
    """The fresnet parameter name of an iresnet ``state_dict`` key, or None (e.g. counters)."""
    module, _, param = key.rpartition(".")
    block = _BLOCK_NAME.match(module)
    if block:
        stage, index, inner = block.groups()
        table = {v[0]: (k, v[1]) for k, v in _UNIT.items()}
        if inner not in table:
            return None
        mx_layer, kind = table[inner]
        layer = f"stage{stage}_unit{int(index) + 1}_{mx_layer}"
    else:
        table = {v[0]: (k, v[1]) for k, v in _TOP.items()}
        if module not in table:
            return None
        layer, kind = table[module]
    if kind == "bn":
        suffix = _BN_BACK.get(param)
    elif kind == "prelu":
        suffix = "gamma" if param == "weight" else None
    elif kind == "conv":
        suffix = "weight" if param == "weight" else None
    else:
        suffix = param if param in ("weight", "bias") else None
    return f"{layer}_{suffix}" if suffix else None


def is_aux(mx_name: str) -> bool:
    """MXNet keeps BatchNorm running statistics as auxiliary states, not arguments."""
    return mx_name.endswith(("_moving_mean", "_moving_var"))


def fresnet_units(names: Iterable[str]) -> tuple[int, int, int, int] | None:
    """Units per stage of the fresnet whose parameter names are ``names`` (None: no stages)."""
    counts = [0, 0, 0, 0]
    for name in names:
        unit = _UNIT_NAME.match(name)
        if unit:
            stage, index = int(unit.group(1)), int(unit.group(2))
            counts[stage - 1] = max(counts[stage - 1], index)
    return None if not any(counts) else (counts[0], counts[1], counts[2], counts[3])
