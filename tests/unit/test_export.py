"""partialfc.export: the dynamo ONNX exporter, a dynamic batch, float32 and float16 models, each
checked here against onnxruntime independently of the exporter's own check."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from partialfc import backbones
from partialfc.export import FP16_ATOL, export_onnx

# Each dynamo export takes 5-30 s on the two shared cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # tests/conftest.py
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DIM = 16


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """tinyface with BatchNorm statistics of real activations: O(1) outputs, as after training
    (at initialisation eval-mode activations grow by orders of magnitude and overflow float16)."""
    torch.manual_seed(0)
    net = backbones.create("tinyface", embedding_size=DIM)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 112, 112))
    return net.eval()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(100 + batch))


def _export_strict(model: nn.Module, path: Path, **kwargs: object) -> float:
    # Any warning during the export fails the test: the TorchScript exporter's deprecation above
    # all, which torch 2.13 emits for dynamo=False.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return export_onnx(model, path, **kwargs)


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model exported in float32 and in float16 (a few seconds each), and what the exporter's
    own check found."""
    out = tmp_path_factory.mktemp("onnx")
    worst = {"fp32": _export_strict(model, out / "fp32.onnx")}
    worst["fp16"] = _export_strict(model, out / "fp16.onnx", fp16=True)
    assert worst["fp32"] < 1e-5 and worst["fp16"] <= FP16_ATOL, worst
    return {"fp32": out / "fp32.onnx", "fp16": out / "fp16.onnx"}


def test_float32_export_is_dynamo_warning_free_and_matches_at_batch_1_and_7(
    model: nn.Module, exported: dict[str, Path]
) -> None:
    path = exported["fp32"]
    proto = onnx.load(str(path))
    (images,) = proto.graph.input
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    session = _session(path)
    for batch in (1, 7):
        x = _images(batch)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == (batch, DIM)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_float16_export_halves_the_model_and_stays_within_its_tolerance(
    model: nn.Module, exported: dict[str, Path]
) -> None:
    full, half = exported["fp32"], exported["fp16"]
    proto = onnx.load(str(half))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    weights = {init.data_type for init in proto.graph.initializer if len(init.dims) > 1}
    assert weights == {onnx.TensorProto.FLOAT16}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert next(model.parameters()).dtype == torch.float32, "the caller's model is not converted"
    session = _session(half)
    for batch in (1, 7):
        x = _images(batch)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"images": x.half().numpy()})
        assert got.dtype == np.float16 and got.shape == (batch, DIM)
        error = np.abs(got.astype(np.float32) - expected).max() / max(1.0, np.abs(expected).max())
        # Really float16 arithmetic (not float32 behind float16 inputs), and within tolerance.
        assert 1e-6 < error <= FP16_ATOL, error


def test_a_difference_beyond_atol_is_an_error(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"onnxruntime differs from PyTorch by .* \(> 1e-07"):
        export_onnx(model, tmp_path / "m.onnx", fp16=True, atol=1e-7)
