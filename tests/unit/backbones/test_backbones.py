"""Every registered backbone, tested by name: registering a backbone is what gets it tested.

The expensive checks (backward, float64, ONNX, checkpointing, batch-2 training forward) of the
big variants, and the dynamo ONNX export in float32 and float16 (10-60 s per model), carry the
``slow`` marker and run only with ``PARTIALFC_RUN_SLOW=1``::

    PARTIALFC_RUN_SLOW=1 python -m pytest -q tests/unit/backbones
"""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from partialfc import backbones

NAMES = backbones.list_backbones()
# Backbones whose expensive checks are opt-in. Listed rather than measured so that collecting the
# tests stays instant; test_every_big_backbone_is_listed_as_slow keeps the list honest. iresnet18
# runs every code path of its family: the deeper variants differ from it only in block counts.
SLOW_BACKBONES = frozenset(
    {"iresnet34", "iresnet50", "iresnet100", "iresnet200", "mbf_large", "vit_s", "vit_b",
     "vit_l_dp005_mask_005", "vit_h", "r2060"}
)  # fmt: skip
HEAVY_PARAMS = 30_000_000  # above this a float32 training step takes seconds on one CPU core
# Names whose modules are another registered name's (test_aliases_build_their_originals):
# arcface_torch's names for our iresnets, and its ViT recipes that change only drop-path and
# masking rates. Their numerical checks would repeat the original's, so they are opt-in as well.
ALIASES = {
    "r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100",
    "r200": "iresnet200", "vit_t_dp005_mask0": "vit_t", "vit_s_dp005_mask_0": "vit_s",
    "vit_b_dp005_mask_005": "vit_b",
}  # fmt: skip
# Even a default-width eval forward of these takes seconds (7.6e7 to 1.1e9 parameters).
HUGE_BACKBONES = frozenset({"r2060", "vit_s", "vit_b", "vit_l_dp005_mask_005", "vit_h"})
HUGE_PARAMS = 200_000_000
# Too big for any CPU test that stores them (r2060: 4.5 GB of float32 parameters, vit_h 3 GB, twice
# that in float64, and again for gradients): only their structure is tested, on the meta device;
# their code paths are iresnet18's and vit_t's.
META_ONLY = frozenset({"r2060", "vit_h"})
META_ONLY_PARAMS = 500_000_000
# Seconds to construct even on the meta device (r2060: 2065 convolutions, each initialised).
SLOW_TO_BUILD = frozenset({"r2060"})
RUN_SLOW = os.environ.get("PARTIALFC_RUN_SLOW") == "1"
SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(not RUN_SLOW, reason="slow: set PARTIALFC_RUN_SLOW=1"),
]
DIM = 64  # a narrow embedding keeps iresnet's 25088 x D fc small in the tests
IMAGE = (3, 112, 112)


def _meta_model(name: str, **kwargs: object) -> nn.Module:
    """The backbone without storage: structure and parameter shapes for free."""
    if not kwargs:
        return _default_meta_model(name)
    with torch.device("meta"):
        return backbones.create(name, **kwargs)


@functools.cache
def _default_meta_model(name: str) -> nn.Module:
    # Built once per name: r2060's 900 blocks take seconds to construct even without storage.
    with torch.device("meta"):
        return backbones.create(name)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _case(*values: str, slow: bool) -> object:
    if values[0] in META_ONLY:
        return pytest.param(*values, marks=pytest.mark.skip(reason="too big for a CPU test"))
    return pytest.param(*values, marks=SLOW if slow else ())


CASES = [_case(n, slow=n in SLOW_BACKBONES or n in ALIASES) for n in NAMES]
EVAL_CASES = [_case(n, slow=n in HUGE_BACKBONES or n in ALIASES) for n in NAMES]
# The exporter partialfc ships (partialfc.export: dynamo), in float32 and float16.
ONNX_CASES = [_case(n, precision, slow=True) for n in NAMES for precision in ("fp32", "fp16")]
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _model(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    return backbones.create(name, embedding_size=DIM, **kwargs)


def _images(batch: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, *IMAGE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _calibrate(model: nn.Module, batch: int = 4) -> nn.Module:
    """Set BatchNorm running statistics from one batch, then switch to eval.

    At initialisation the running statistics are (0, 1), and an eval forward then scales
    activations by orders of magnitude over the depth (1e-6 to 1e8 at the output); with statistics
    of real activations, eval outputs are O(1) and absolute tolerances mean something.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(_images(batch, seed=7))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_family() -> None:
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"} <= set(NAMES)
    assert {"mobilefacenet", "mbf", "mbf_large"} <= set(NAMES)
    assert {"vit_t", "vit_s", "vit_b", "vit_h"} <= set(NAMES)
    assert {"r18", "r34", "r50", "r100", "r200", "r2060"} <= set(NAMES)
    assert sorted(NAMES) == NAMES


def test_every_big_backbone_is_listed_as_slow() -> None:
    assert SLOW_TO_BUILD <= SLOW_BACKBONES & HUGE_BACKBONES
    for name in sorted(set(NAMES) - SLOW_TO_BUILD):
        count = _num_params(_meta_model(name))
        if count > HEAVY_PARAMS and name not in ALIASES:
            assert name in SLOW_BACKBONES, f"add {name} to SLOW_BACKBONES"
        if count > HUGE_PARAMS:
            assert name in HUGE_BACKBONES, f"add {name} to HUGE_BACKBONES"
        if count > META_ONLY_PARAMS:
            assert name in META_ONLY, f"add {name} to META_ONLY"


@pytest.mark.parametrize("alias,original", sorted(ALIASES.items()))
def test_aliases_build_their_originals(alias: str, original: str) -> None:
    ours, theirs = _meta_model(alias), _meta_model(original)
    assert type(ours) is type(theirs) and ours.name == alias
    assert len(list(ours.modules())) == len(list(theirs.modules()))
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


def test_an_alias_initialises_as_its_original() -> None:
    first, second = (_model(name).state_dict() for name in ("r18", "iresnet18"))
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'") as info:
        backbones.create("resnet50")
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("size", [0, -3, 1.5, True])
def test_bad_embedding_size(size: object) -> None:
    with pytest.raises(ValueError, match="embedding_size"):
        backbones.create("mobilefacenet", embedding_size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "vit_t"])
@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_bad_dropout(name: str, dropout: float) -> None:
    with pytest.raises(ValueError, match="dropout"):
        _meta_model(name, dropout=dropout)


def test_registering_a_name_twice_fails() -> None:
    def iresnet50(embedding_size: int = 512) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        backbones.register(iresnet50)
    assert backbones.list_backbones() == NAMES


# --- structure: parameter counts and insightface names ---------------------------------------


def _iresnet_formula(layers: tuple[int, ...], dim: int) -> int:
    """IResNet's parameter count from the architecture's description alone."""
    bn = 2  # weight and bias per channel
    total = 3 * 64 * 9 + bn * 64 + 64  # stem: conv, bn1, prelu
    c_in = 64
    for c, n in zip((64, 128, 256, 512), layers, strict=True):
        for i in range(n):
            block_in = c_in if i == 0 else c
            total += bn * block_in + block_in * c * 9 + bn * c + c + c * c * 9 + bn * c
            if i == 0:
                total += block_in * c + bn * c  # downsample: conv1x1 + BatchNorm
        c_in = c
    return total + bn * 512 + (512 * 49 * dim + dim) + bn * dim  # bn2, fc, features


@pytest.mark.parametrize(
    "name,layers,published_millions",
    [
        ("iresnet18", (2, 2, 2, 2), 24.0),
        ("iresnet34", (3, 4, 6, 3), 34.1),
        ("iresnet50", (3, 4, 14, 3), 43.6),  # insightface's model zoo, embedding 512
        ("iresnet100", (3, 13, 30, 3), 65.2),  # likewise
        ("iresnet200", (6, 26, 60, 6), None),
    ],
)
def test_iresnet_parameter_counts(
    name: str, layers: tuple[int, ...], published_millions: float | None
) -> None:
    count = _num_params(_meta_model(name))
    assert count == _iresnet_formula(layers, 512)
    if published_millions is not None:
        assert round(count / 1e6, 1) == published_millions


def test_iresnet_parameter_counts_grow_with_depth() -> None:
    depths = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]
    counts = [_num_params(_meta_model(n)) for n in depths]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_mobilefacenet_parameter_count_is_the_papers() -> None:
    # Chen et al. report 0.99M parameters for their 128-d MobileFaceNet.
    assert abs(_num_params(_meta_model("mobilefacenet", embedding_size=128)) - 0.99e6) < 0.02e6
    assert _num_params(_meta_model("mbf")) > _num_params(_meta_model("mobilefacenet"))


def test_iresnet_names_are_insightfaces() -> None:
    keys = set(_meta_model("iresnet50").state_dict())
    expected = {
        "conv1.weight", "bn1.running_mean", "prelu.weight", "bn2.weight", "fc.weight", "fc.bias",
        "features.weight", "features.running_var",
        "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.bias", "layer1.0.prelu.weight",
        "layer1.0.conv2.weight", "layer1.0.bn3.num_batches_tracked",
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
        "layer3.13.conv2.weight", "layer4.2.bn3.weight",
    }  # fmt: skip
    assert expected <= keys
    assert not any(k.startswith("layer1.1.downsample") for k in keys)
    assert not any(k.startswith(("layer3.14.", "layer5.")) for k in keys)


def test_iresnet_freezes_the_embedding_scale_as_insightface() -> None:
    model = _meta_model("iresnet18")
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["features.weight"]


def test_mobilefacenet_names_are_insightfaces() -> None:
    keys = set(_meta_model("mbf").state_dict())
    expected = {
        "layers.0.layers.0.weight", "layers.0.layers.1.running_mean", "layers.0.layers.2.weight",
        "layers.1.layers.0.weight", "layers.2.layers.0.layers.0.weight",
        "layers.2.layers.2.layers.1.running_var", "layers.3.layers.3.layers.1.layers.0.weight",
        "layers.7.layers.1.layers.2.layers.1.bias", "conv_sep.layers.0.weight",
        "features.layers.0.layers.0.weight", "features.layers.2.weight",
        "features.layers.3.running_mean",
    }  # fmt: skip
    assert expected <= keys


def test_zero_init_residual_makes_blocks_start_as_their_shortcut() -> None:
    torch.manual_seed(0)
    block = backbones.create("iresnet18", zero_init_residual=True).layer2[1].train()
    x = torch.randn(2, 128, 14, 14)
    assert_close(block(x), x, rtol=0, atol=0)


# --- input contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=SLOW if n in SLOW_TO_BUILD else ()) for n in NAMES]
)
@pytest.mark.parametrize(
    "shape", [(2, 3, 96, 96), (2, 1, 112, 112), (3, 112, 112), (1, 3, 112, 96)]
)
def test_wrong_input_shape_is_a_clear_error(name: str, shape: tuple[int, ...]) -> None:
    model = _meta_model(name)
    with pytest.raises(ValueError, match=rf"{name} expects images of shape \(N, 3, 112, 112\)"):
        model(torch.zeros(shape, device="meta"))


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVAL_CASES)
def test_eval_forward_is_shaped_and_deterministic(name: str) -> None:
    # Default width, no grad: cheap enough for the largest variants too. Calibrated, because with
    # insightface's init (conv std 0.1) an untrained iresnet100/200 overflows to NaN in eval mode.
    torch.manual_seed(0)
    model = _calibrate(backbones.create(name), batch=2)
    x = _images(1)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (1, 512) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", CASES)
def test_batch_of_two_in_train_and_eval(name: str) -> None:
    model = _model(name)
    x = _images(2)
    assert model.train()(x).shape == (2, DIM)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, DIM)


@pytest.mark.parametrize("name", CASES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _model(name).train()
    model(_images(2)).square().sum().backward()
    for param_name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, param_name
            assert torch.isfinite(p.grad).all(), param_name


@pytest.mark.parametrize("name", CASES)
def test_float64(name: str) -> None:
    model = _model(name).double().train()
    out = model(_images(2, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CASES)
def test_checkpointing_changes_nothing_but_memory(name: str) -> None:
    plain = _model(name, dropout=0.2).train()
    ckpt = _model(name, dropout=0.2, checkpoint_activations=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = _images(2)
    outs, activation_calls = [], []
    for model in (plain, ckpt):
        calls: list[None] = []  # one entry per activation forward, recomputations included
        for m in model.modules():
            if isinstance(m, (nn.PReLU, nn.ReLU6)):  # the CNNs' and the ViTs' activations
                m.register_forward_hook(lambda *_, calls=calls: calls.append(None))
        torch.manual_seed(3)  # the same dropout mask for both
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        activation_calls.append(len(calls))
    assert activation_calls[1] > activation_calls[0], "checkpointed blocks are recomputed"
    assert_close(outs[1], outs[0], rtol=0, atol=0)
    grads = dict(ckpt.named_parameters())
    for param_name, p in plain.named_parameters():
        assert_close(grads[param_name].grad, p.grad, rtol=0, atol=0, msg=param_name)
    # Recomputation must not update BatchNorm statistics a second time.
    buffers = dict(ckpt.named_buffers())
    for buffer_name, b in plain.named_buffers():
        assert_close(buffers[buffer_name], b, rtol=0, atol=0, msg=buffer_name)


def test_vit_attention_softmax_stays_float32_under_autocast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _calibrate(_model("vit_t"))
    seen: list[torch.dtype] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.append(q.dtype)
        return real(q, *args, **kwargs)

    x = _images(2)
    with torch.no_grad():
        expected = model(x)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert seen == [torch.float32] * len(model.blocks)
    assert got.dtype == torch.bfloat16  # the Linear layers did run in bf16
    assert_close(got.float(), expected, rtol=0.1, atol=0.1 * float(expected.abs().max()))


@pytest.mark.parametrize("name,precision", ONNX_CASES)
def test_onnx_matches_torch_at_two_batch_sizes(name: str, precision: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from partialfc.export import FP16_ATOL, onnx_program

    model = _calibrate(_model(name))
    dtype = torch.float16 if precision == "fp16" else torch.float32
    exported = copy.deepcopy(model).to(dtype)
    program = onnx_program(exported, _images(2, dtype=dtype))
    program.save(str(tmp_path / "m.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # see the one_thread fixture (tests/conftest.py)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), options)
    tolerance = FP16_ATOL if precision == "fp16" else 1e-4
    for batch in (1, 7):  # neither is the exported example's batch
        x = _images(batch, seed=batch)
        with torch.no_grad():
            expected = model(x)
        (got,) = session.run(None, {"images": x.to(dtype).numpy()})
        assert got.shape == (batch, DIM)
        got = torch.from_numpy(got).float()
        if precision == "fp32":
            assert_close(got, expected, rtol=tolerance, atol=tolerance)
        else:  # against the float32 model, on the scale export_onnx checks: what --fp16 promises
            scale = max(1.0, float(expected.abs().max()))
            assert float((got - expected).abs().max()) / scale <= tolerance
            assert_close(F.normalize(got), F.normalize(expected), rtol=0, atol=tolerance)
