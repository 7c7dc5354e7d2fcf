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
