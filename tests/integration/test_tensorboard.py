"""TensorBoard event files of a real run of configs/demo_cpu.toml, read back with TensorBoard's own
reader: every series the trainer promises, the values metrics.jsonl holds, and after a resume that
redoes steps, each step once with the values of the run that continued."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.integration._service import demo_overrides, make_dataset, train

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (requirements/ci.txt installs it)",
)

pytestmark = pytest.mark.slow


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(tb_dir))  # every event file, as TensorBoard reads
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _jsonl(out: Path) -> dict[int, dict[str, float]]:
    """Step -> the last record of that step's values (eval records merged in)."""
    by_step: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step.setdefault(record.pop("step"), {}).update(record)
    return by_step


def test_tensorboard_has_every_series_once_per_step_after_a_resume(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "data"), tmp_path / "run"
    # CurricularFace (it takes the shipped s and m) has a buffer, t, to show.
    args = demo_overrides(
        data, out, "--head.margin=curricularface", "--train.checkpoint_every=3", "--eval.every=3"
    )
    first = train(*args, "--train.max_steps=5")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _jsonl(out)
    # A crash after step 5 but before its checkpoint: the rerun resumes at 3 and redoes 4 and 5,
    # on a longer schedule (8 steps), so the redone steps have other learning rates.
    shutil.rmtree(out / "step-00000005")
    second = train(*args, "--train.max_steps=8")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at step 3" in second.stderr

    got, logged = _scalars(out / "tensorboard"), _jsonl(out)
    assert before[4]["lr"] != logged[4]["lr"], "the redone steps must differ for this test"
    expected = {
        "loss": "loss",
        "lr/backbone": "lr",
        "lr/head": "head_lr",
        "samples_per_second": "samples_per_second",
        "grad_norm": "grad_norm",
        "margin/t": "margin/t",
        "time/total": "time/total",
    }
    for tag, key in expected.items():
        assert [s for s, _ in got[tag]] == list(range(1, 9)), f"{tag}: each step once"
        for step, value in got[tag]:
            assert value == pytest.approx(logged[step][key], rel=1e-6), f"{tag} at step {step}"
    assert len({v for _, v in got["margin/t"]}) == 8, "CurricularFace's t moves every step"
    assert all(v > 0 for _, v in got["lr/head"])
    for what in ("accuracy", "std", "val", "val_std", "far", "xnorm", "best"):
        tag = f"eval/val/{what}"
        assert [s for s, _ in got[tag]] == [3, 6, 8], tag  # the eval of step 5 was purged
        key = "eval/val" if what == "accuracy" else tag
        assert [v for _, v in got[tag]] == pytest.approx([logged[s][key] for s in (3, 6, 8)])


def test_tensorboard_has_the_fp16_loss_scale(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "data"), tmp_path / "run"
    done = train(
        *demo_overrides(data, out, "--train.precision=fp16", "--train.max_steps=3", "--eval.sets=")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got, logged = _scalars(out / "tensorboard"), _jsonl(out)
    assert [s for s, _ in got["loss_scale"]] == [1, 2, 3]
    assert [v for _, v in got["loss_scale"]] == [logged[s]["loss_scale"] for s in (1, 2, 3)]
    assert all(v >= 1.0 and math.log2(v).is_integer() for _, v in got["loss_scale"])
