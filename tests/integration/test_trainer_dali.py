"""The trainer on the DALI loader (CPU pipeline here, GPU decoding with CUDA): an exact resume
through DALI's checkpoints, and a damaged record that stops the run naming its key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._service import error_lines
from tests.unit.data._datasets import damage_record

pytest.importorskip("nvidia.dali")

# The small run's 40 images in global batches of 12: 3 batches an epoch.
STEPS, STOP = 8, 4  # stopped in epoch 1, after DALI's shuffle buffer and flips have moved on


def _train(
    config: Path, out: Path, steps: int, *extra: str, loader: str = "dali"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "partialfc.train", str(config), f"--data.loader={loader}",
         f"--train.output_dir={out}", f"--train.max_steps={steps}", "--train.checkpoint_every=2",
         *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_a_resumed_dali_run_reproduces_every_loss(small_run_config: Path, tmp_path: Path) -> None:
    """Stopped at step 4 and resumed, the run's losses are the uninterrupted run's, step for step:
    each rank's reader, shuffle buffer and flip generator come back from its DALI checkpoint
    (fast-forwarding a fresh reader by 1 batch would read epoch 0's order again)."""
    constant = "--optim.decay_power=0"  # a step's learning rate must not depend on max_steps
    straight = tmp_path / "straight"
    done = _train(small_run_config, straight, STEPS, constant)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    resumed = tmp_path / "resumed"
    first = _train(small_run_config, resumed, STOP, constant)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = sorted(p.name for p in (resumed / f"step-{STOP:08d}").glob("dali-*"))
    assert saved == [f"dali-rank0-of1-epoch1-batch{STOP - 3}.bin"]
    second = _train(small_run_config, resumed, STEPS, constant)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {resumed / f'step-{STOP:08d}'} at step {STOP}" in second.stderr
    assert "no DALI reader state" not in second.stderr
    got = _losses(resumed)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), f"step {step}"


@pytest.mark.parametrize(
    "loader, soi", [("dali", False), ("torch", False), ("dali", True)],
    ids=["dali", "torch", "dali-decoder-fails"],
)  # fmt: skip
def test_a_damaged_jpeg_stops_the_run_naming_its_key(
    small_run_config: Path, tmp_path: Path, loader: str, soi: bool
) -> None:
    """64 inverted bytes inside one record's entropy-coded data: DALI and Pillow would decode
    them to wrong pixels and train on them; the run stops at that batch instead, exit 2, one
    line naming the file and the key, no traceback. With its SOI marker gone DALI's decoder
    fails (a DALI traceback before); the line names the record too."""
    data = tmp_path / "data"
    shutil.copytree(small_run_config.parent / "data", data)
    damage = damage_record(data, 17, soi=soi)
    done = _train(small_run_config, tmp_path / "run", 4, f"--data.root={data}", loader=loader)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    what = (
        "not an image format Pillow knows (first bytes 00 00 ff e0); DALI cannot decode it"
        if soi
        else f"damaged JPEG ({damage})"
    )
    assert error_lines(done.stderr) == [f"error: {data / 'train.rec'}, key 17: {what}"]
