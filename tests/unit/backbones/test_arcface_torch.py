"""arcface_torch's backbones by its names: its state_dicts load strictly and embed identically.

The other side is ``_arcface_torch.py``, a test-only re-writing of arcface_torch's modules. With a
checkout of insightface, the same checks also run against its own source files (timm, which they
import, is stubbed)::

    PARTIALFC_ARCFACE_TORCH=/path/to/insightface/recognition/arcface_torch \\
        python -m pytest -q tests/unit/backbones/test_arcface_torch.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from partialfc import backbones
from tests.unit.backbones import _arcface_torch as reference

OFFICIAL = os.environ.get("PARTIALFC_ARCFACE_TORCH")
DIM = 512
RTOL = 1e-5  # the bar: float32 embeddings equal to 1e-5 of their largest entry
# In training, BatchNorm over a batch of 4 magnifies float32 rounding (our fused attention sums in
# another order: up to 3e-5 measured); another mask or drop-path draw changes it by ~1 (1.4).
TRAIN_RTOL = 1e-4
NUMERIC = ["r50", "mbf", "vit_t"]
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with BatchNorm statistics of real activations and non-trivial affine weights.

    At initialisation BatchNorm is (0, 1) everywhere and an iresnet's eval forward overflows; one
    training batch with momentum 1 sets the running statistics the way training would.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.momentum = 1.0
        model.train()
        model(_images(2, seed=seed))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _assert_same_embeddings(theirs: nn.Module, name: str) -> None:
    """Load ``theirs``'s state_dict into partialfc's ``name`` strictly; compare eval embeddings."""
    torch.manual_seed(1)
    ours = backbones.create(name, embedding_size=DIM).eval()
    x = _images(3, seed=5)
    with torch.no_grad():
        expected = theirs.eval()(x)
        assert _relative(ours(x), expected) > 1e-2, "before loading, the embeddings differ"
        ours.load_state_dict(theirs.state_dict(), strict=True)
        got = ours(x)
    assert got.shape == (3, DIM)
    assert _relative(got, expected) <= RTOL


# --- names and shapes -------------------------------------------------------------------------


def test_every_arcface_torch_name_is_registered() -> None:
    assert set(reference.NAMES) <= set(backbones.list_backbones())


SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("PARTIALFC_RUN_SLOW") != "1", reason="slow: PARTIALFC_RUN_SLOW=1"
    ),
]


def _case(*values: object) -> object:
    # r2060's 2065 convolutions take seconds to construct even on the meta device
    return pytest.param(*values, marks=SLOW if values[0] == "r2060" else ())


@pytest.mark.parametrize("name", [_case(n) for n in reference.NAMES])
def test_state_dict_names_and_shapes_are_arcface_torchs(name: str) -> None:
    with torch.device("meta"):
        theirs = reference.get_model(name, num_features=DIM)
        ours = backbones.create(name, embedding_size=DIM)
    assert _shapes(ours) == _shapes(theirs)


def _vit_formula(width: int, depth: int, embedding: int) -> int:
    """A ViT's parameter count from the architecture's description alone (144 patches of 9x9)."""
    patches, d = 144, width
    block = 2 * d + 3 * d * d + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    stem = 3 * 81 * d + d + patches * d + d  # patch conv, pos_embed, mask_token
    head = 2 * d + patches * d * d + 2 * d + d * embedding + 2 * embedding  # norm, feature
    return stem + depth * block + head


@pytest.mark.parametrize(
    "name,width,depth,millions",
    [
        ("vit_t", 256, 12, 19.1),
        ("vit_s", 512, 12, 76.0),
        ("vit_b", 512, 24, 113.8),
        ("vit_l_dp005_mask_005", 768, 24, 255.7),
        ("vit_h", 1024, 48, 756.4),
    ],
)
def test_vit_parameter_counts(name: str, width: int, depth: int, millions: float) -> None:
    with torch.device("meta"):
        count = sum(p.numel() for p in backbones.create(name).parameters())
    assert count == _vit_formula(width, depth, 512)
    assert round(count / 1e6, 1) == millions


def test_mbf_large_is_wider_and_deeper_than_mbf() -> None:
    with torch.device("meta"):
        large = backbones.create("mbf_large")
    assert large.layers[0].layers[0].out_channels == 256  # 64 x scale 4
    assert len(large.layers[3].layers) == 8 and len(large.layers[5].layers) == 12
    assert sum(p.numel() for p in large.parameters()) == 6_314_880


@pytest.mark.parametrize(
    "name,checkpointed",
    [_case(*c) for c in [("vit_t", False), ("vit_s", False), ("vit_b", True),
     ("vit_b_dp005_mask_005", True), ("vit_l_dp005_mask_005", True), ("vit_h", True),
     ("r50", False), ("r2060", True)]],
)  # fmt: skip
def test_gradient_checkpointing_defaults_are_arcface_torchs(name: str, checkpointed: bool) -> None:
    with torch.device("meta"):
        assert backbones.create(name).checkpoint_activations is checkpointed
        assert backbones.create(name, checkpoint_activations=None).checkpoint_activations is (
            checkpointed
        )  # what the trainer passes when the config leaves it unset
        assert backbones.create(name, checkpoint_activations=False).checkpoint_activations is False


@pytest.mark.parametrize(
    "name,drop_path,mask_ratio",
    [("vit_t", 0.1, 0.1), ("vit_t_dp005_mask0", 0.05, 0.0), ("vit_s", 0.1, 0.1),
     ("vit_s_dp005_mask_0", 0.05, 0.0), ("vit_b", 0.1, 0.1),
     # arcface_torch's forward masks 10% whatever the name says (random_masking's default)
     ("vit_b_dp005_mask_005", 0.05, 0.1), ("vit_l_dp005_mask_005", 0.05, 0.1), ("vit_h", 0.1, 0.0)],
)  # fmt: skip
def test_vit_hyper_parameters(name: str, drop_path: float, mask_ratio: float) -> None:
    with torch.device("meta"):
        model = backbones.create(name)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(drop_path)
    assert rates == sorted(rates)
    assert model.mask_ratio == mask_ratio
    assert model.mask_token.requires_grad is (mask_ratio > 0)
    assert {b.attn.num_heads for b in model.blocks} == {8}


# --- same embeddings ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NUMERIC)
def test_arcface_torch_weights_give_the_same_embeddings(name: str) -> None:
    torch.manual_seed(0)
    _assert_same_embeddings(_trained_like(reference.get_model(name, num_features=DIM), 3), name)


def test_vit_training_forward_masks_and_drops_as_arcface_torch() -> None:
    """Same seed, same masked patches and dropped branches: the training outputs agree too."""
    torch.manual_seed(0)
    theirs = _trained_like(reference.get_model("vit_t", num_features=DIM), 3)
    ours = backbones.create("vit_t", embedding_size=DIM)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = _images(4, seed=6)
    outs = {}
    for side, model in (("ours", ours), ("theirs", theirs)):
        model.train()
        for seed in (10, 11):
            torch.manual_seed(seed)
            with torch.no_grad():
                outs[side, seed] = model(x)
    assert _relative(outs["ours", 10], outs["theirs", 10]) <= TRAIN_RTOL
    assert _relative(outs["ours", 11], outs["theirs", 11]) <= TRAIN_RTOL
    assert _relative(outs["ours", 10], outs["ours", 11]) > 0.1, "the draws change the output"


def test_vit_masks_patches_in_training_only() -> None:
    torch.manual_seed(0)
    model = backbones.create("vit_t", embedding_size=16, drop_path_rate=0.0)
    seen: list[int] = []
    model.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
    with torch.no_grad():
        model.train()(_images(2, seed=1))
        model.eval()(_images(2, seed=1))
    assert seen == [129, 144]  # int(144 * 0.9) patches kept in training, all of them in eval


# --- against the official source files (opt-in) ------------------------------------------------


def _stub_timm() -> dict[str, types.ModuleType]:
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = reference.DropPath  # type: ignore[attr-defined]
    layers.trunc_normal_ = nn.init.trunc_normal_  # type: ignore[attr-defined]
    layers.to_2tuple = lambda v: v if isinstance(v, tuple) else (v, v)  # type: ignore[attr-defined]
    models = types.ModuleType("timm.models")
    models.layers = layers  # type: ignore[attr-defined]
    timm = types.ModuleType("timm")
    timm.models = models  # type: ignore[attr-defined]
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers}


@pytest.fixture(scope="module")
def official() -> Iterator[types.ModuleType]:
    if not OFFICIAL:
        pytest.skip("set PARTIALFC_ARCFACE_TORCH to insightface's recognition/arcface_torch")
    package = Path(OFFICIAL) / "backbones"
    spec = importlib.util.spec_from_file_location(
        "arcface_torch_backbones",
        package / "__init__.py",
        submodule_search_locations=[str(package)],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        for name, stub in _stub_timm().items():
            patch.setitem(sys.modules, name, stub)
        patch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        yield module


OFFICIAL_WARNINGS = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore:CUDA is not available:UserWarning"
)  # its torch.cuda.amp.autocast regions, run on a CPU


@OFFICIAL_WARNINGS
@pytest.mark.parametrize("name", NUMERIC)
def test_official_weights_give_the_same_embeddings(official: types.ModuleType, name: str) -> None:
    torch.manual_seed(0)
    theirs = _trained_like(official.get_model(name, num_features=DIM), 3)
    _assert_same_embeddings(theirs, name)
    if name.startswith("vit"):  # the training forward too, draw for draw
        ours = backbones.create(name, embedding_size=DIM)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = _images(4, seed=6)
        with torch.no_grad():
            torch.manual_seed(10)
            expected = theirs.train()(x)
            torch.manual_seed(10)
            got = ours.train()(x)
        assert _relative(got, expected) <= TRAIN_RTOL


# r2060 and vit_h (1.1e9 and 7.6e8 parameters) cannot be built on the meta device by the official
# code (it calls .item()): the reference stands in for them above.
@OFFICIAL_WARNINGS
@pytest.mark.parametrize("name", [n for n in reference.NAMES if n not in ("r2060", "vit_h")])
def test_official_names_and_shapes(official: types.ModuleType, name: str) -> None:
    theirs = official.get_model(name, num_features=DIM)
    with torch.device("meta"):
        ours = backbones.create(name, embedding_size=DIM)
        mirror = reference.get_model(name, num_features=DIM)
    assert _shapes(ours) == _shapes(theirs) == _shapes(mirror)
