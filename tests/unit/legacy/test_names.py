"""fresnet <-> iresnet parameter names (pure Python: runs without MXNet)."""

from __future__ import annotations

import pytest

from partialfc.backbones.iresnet import IResNet
from partialfc.legacy import names


@pytest.fixture(scope="module")
def keys() -> list[str]:
    return list(IResNet((1, 2, 1, 1), embedding_size=8).state_dict())


def test_every_iresnet_key_maps_and_comes_back(keys: list[str]) -> None:
    for key in keys:
        mx_name = names.torch_to_mxnet(key)
        if key.endswith("num_batches_tracked"):
            assert mx_name is None
            continue
        assert mx_name is not None, key
        assert names.mxnet_to_torch(mx_name) == key


@pytest.mark.parametrize(
    ("mx_name", "key"),
    [
        ("conv0_weight", "conv1.weight"),
        ("bn0_gamma", "bn1.weight"),
        ("relu0_gamma", "prelu.weight"),
        ("stage1_unit1_conv1_weight", "layer1.0.conv1.weight"),
        ("stage2_unit2_bn3_moving_var", "layer2.1.bn3.running_var"),
        ("stage3_unit1_relu1_gamma", "layer3.0.prelu.weight"),
        ("stage4_unit1_conv1sc_weight", "layer4.0.downsample.0.weight"),
        ("stage4_unit1_sc_moving_mean", "layer4.0.downsample.1.running_mean"),
        ("bn1_beta", "bn2.bias"),
        ("pre_fc1_weight", "fc.weight"),
        ("pre_fc1_bias", "fc.bias"),
        ("fc1_gamma", "features.weight"),
        ("fc1_moving_var", "features.running_var"),
    ],
)
def test_insightface_names(mx_name: str, key: str) -> None:
    assert names.mxnet_to_torch(mx_name) == key
    assert names.torch_to_mxnet(key) == mx_name


@pytest.mark.parametrize(
    "mx_name",
    ["fc7_weight", "stage1_unit1_se_conv1_weight", "conv0_bias", "relu0_beta", "dropout0"],
)
def test_names_that_do_not_map(mx_name: str) -> None:
    assert names.mxnet_to_torch(mx_name) is None


def test_units_from_names() -> None:
    got = names.fresnet_units(["stage1_unit3_bn1_gamma", "stage2_unit1_conv1_weight", "x"])
    assert got == (3, 1, 0, 0)
    assert names.fresnet_units(["fc7_weight"]) is None
