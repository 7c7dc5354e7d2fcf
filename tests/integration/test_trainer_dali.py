"""The trainer on the DALI loader (CPU pipeline here, GPU decoding with CUDA), resumed mid-run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")


def _train(config: Path, out: Path, steps: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "partialfc.train", str(config), "--data.loader=dali",
         f"--train.output_dir={out}", f"--train.max_steps={steps}", "--train.checkpoint_every=2"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def test_dali_loader_trains_and_resumes(small_run_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(small_run_config, out, 2)
    _train(small_run_config, out, 4)  # resumes at step 2: the DALI stream is fast-forwarded
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4], "two runs, the second continuing where the first stopped"
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert (out / "step-00000004" / "COMPLETE").exists()
