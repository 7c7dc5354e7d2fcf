"""`partialfc export` and `partialfc eval` on a checkpoint the trainer wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def trained(small_run_config: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    subprocess.run(
        [sys.executable, "-m", "partialfc.train", str(small_run_config), f"--train.output_dir={out}", "--train.max_steps=3"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "partialfc", *args], capture_output=True, text=True, timeout=300
    )


def test_export_onnx_and_state_dict_match_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    done = _cli(
        "export",
        str(trained),
        "--onnx",
        str(tmp_path / "m.onnx"),
        "--state-dict",
        str(tmp_path / "m.pt"),
    )
    assert done.returncode == 0, done.stderr
    assert "onnxruntime matches PyTorch" in done.stdout
    from partialfc import backbones

    model = backbones.create("tinyface", embedding_size=16).eval()
    model.load_state_dict(torch.load(tmp_path / "m.pt"))
    images = torch.randn(5, 3, 112, 112)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(images).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.numpy()}
    )[0]
    assert got.shape == (5, 16)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_eval_reports_accuracy_per_set(trained: Path, small_run_config: Path) -> None:
    val = small_run_config.parent / "data" / "val.bin"
    done = _cli("eval", str(trained), str(val))
    assert done.returncode == 0, done.stderr
    match = re.search(r"val: accuracy ([\d.]+) \+- ([\d.]+) \(20 pairs\)", done.stdout)
    assert match, done.stdout
    assert 0.0 <= float(match.group(1)) <= 1.0


def test_export_without_a_checkpoint_fails_clearly(tmp_path: Path) -> None:
    done = _cli("export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx"))
    assert done.returncode != 0
    assert "no complete partialfc checkpoint" in done.stderr


def test_eval_and_eval_ijb_take_the_checkpoint_or_its_onnx(
    trained: Path, small_run_config: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from partialfc.data.synth_ijb import SynthIJBConfig, synth_ijb

    onnx = tmp_path / "m.onnx"
    assert _cli("export", str(trained), "--onnx", str(onnx)).returncode == 0
    val = small_run_config.parent / "data" / "val.bin"
    lines = [_cli("eval", model, str(val)).stdout for model in (str(trained), str(onnx))]
    assert lines[0] == lines[1] and "VAL" in lines[0] and "XNorm" in lines[0], lines
    tree = tmp_path / "ijb"
    synth_ijb(tree, SynthIJBConfig(subjects=3, templates_per_subject=2, max_medias=1), workers=1)
    features = []
    for model in (trained, onnx):
        out = tmp_path / f"out-{model.name}"
        done = _cli("eval-ijb", str(model), str(tree), "--out", str(out), "--workers", "0")
        assert done.returncode == 0, done.stderr
        features.append(np.load(out / "features.npy"))
    assert features[0].shape[1:] == (2, 16)
    np.testing.assert_allclose(features[0], features[1], rtol=1e-4, atol=1e-4)


def test_export_fp16_and_eval_on_it(trained: Path, small_run_config: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from partialfc.checkpoint import load_backbone
    from partialfc.eval.models import load_model
    from partialfc.export import FP16_ATOL

    half = tmp_path / "m16.onnx"
    done = _cli("export", str(trained), "--onnx", str(half), "--fp16")
    assert done.returncode == 0, done.stderr
    assert "(float16); onnxruntime matches PyTorch" in done.stdout
    model, _ = load_backbone(trained)
    onnx_model, _ = load_model(half)  # feeds float16 images to the float16 graph
    images = torch.randn(7, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(images), onnx_model(images)
    assert got.dtype == torch.float32 and got.shape == (7, 16)
    scale = max(1.0, float(expected.abs().max()))
    assert 0 < float((got - expected).abs().max()) / scale <= FP16_ATOL
    val = small_run_config.parent / "data" / "val.bin"
    done = _cli("eval", str(half), str(val))
    assert done.returncode == 0, done.stderr
    assert re.search(r"val: accuracy [\d.]+ \+- [\d.]+ \(20 pairs\)", done.stdout), done.stdout
