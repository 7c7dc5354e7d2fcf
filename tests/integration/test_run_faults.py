"""Faults a running service meets, on the shipped demo config (loader workers as shipped):
two runs on one output_dir, a streak of non-finite steps, a crafted file in a checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from partialfc import checkpoint
from tests.integration._service import (
    checkpoint_tensors,
    demo_overrides,
    error_lines,
    make_dataset,
    popen_train,
    train,
    wait_for,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "data")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_all(proc) -> None:
    """SIGKILL torchrun and every process under it at once (a node lost, a pod killed):
    torchrun's workers sit in process groups of their own."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_second_run_on_one_output_dir_exits_2_and_a_killed_run_never_blocks(
    data, tmp_path
) -> None:
    out = tmp_path / "run"
    args = demo_overrides(data, out, "--train.max_steps=100000", "--eval.sets=")
    first = popen_train(*args, log=tmp_path / "first.log", torchrun=2)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists(), first, tmp_path / "first.log")
        second = train(*args, timeout=120)
        errors = error_lines(second.stderr)
        assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
        assert f"train.output_dir: {out} is in use by another run (pid " in errors[0]
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run goes on"
        assert not (out / "step-00000000").exists()
        # Nothing of the second run reached the first one's metrics: one line a step.
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if "loss" in r]
        assert steps == list(range(1, len(steps) + 1)), steps
    finally:
        _kill_all(first)  # no clean-up at all
    # The killed run's lock does not block its restart (checked right away, workers or not).
    again = train(*demo_overrides(data, out, "--train.max_steps=3", "--eval.sets="))
    assert again.returncode == 0, again.stderr[-3000:]


def test_nonfinite_streak_keeps_the_finite_checkpoints_and_a_sane_rerun_resumes(
    data, tmp_path
) -> None:
    out = tmp_path / "run"
    good = train(*demo_overrides(data, out, "--train.max_steps=10", "--train.checkpoint_every=5"))
    assert good.returncode == 0, good.stderr[-3000:]
    before = {p.name: (p / ".metadata").read_bytes() for p in checkpoint.list_checkpoints(out)}
    assert sorted(before) == ["step-00000005", "step-00000010"]

    # The command: an exploding learning rate, a checkpoint every 5 steps.
    boom = train(*demo_overrides(
        data, out, "--optim.lr=1e6", "--train.max_steps=400", "--train.checkpoint_every=5",
        "--eval.sets=",
    ))  # fmt: skip
    errors = error_lines(boom.stderr)
    assert boom.returncode == 2 and len(errors) == 1, boom.stderr[-3000:]
    assert errors[0].startswith("error: train.max_nonfinite_steps: 10 consecutive steps")
    assert f"the newest checkpoint {out / 'step-00000010'}" in errors[0]
    assert "no checkpoint written" in boom.stderr  # a log line (stderr)
    after = {p.name: (p / ".metadata").read_bytes() for p in checkpoint.list_checkpoints(out)}
    assert after == before, "no new checkpoint, none rotated out, none rewritten"
    for path in checkpoint.list_checkpoints(out):
        for name, t in checkpoint_tensors(path).items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), (path, name)

    # Rerun with a sane rate, as the message advises: it resumes the newest finite checkpoint.
    rerun = train(*demo_overrides(data, out, "--train.max_steps=12", "--eval.sets="))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {out / 'step-00000010'} at step 10" in rerun.stderr


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_runs_no_code_from_the_checkpoint_folder(data, tmp_path) -> None:
    out = tmp_path / "run"
    first = train(*demo_overrides(data, out, "--train.max_steps=2", "--eval.sets="))
    assert first.returncode == 0, first.stderr[-3000:]
    rng = out / "step-00000002" / "rng-rank0-of1.pt"
    assert rng.exists()
    marker = tmp_path / "code-ran"
    torch.save({"torch": _Payload(marker)}, rng)  # unpickling it would create the marker
    resumed = train(*demo_overrides(data, out, "--train.max_steps=4", "--eval.sets="))
    assert not marker.exists(), "resume executed code from the checkpoint"
    errors = error_lines(resumed.stderr)
    assert resumed.returncode == 2 and len(errors) == 1, resumed.stderr[-3000:]
    assert errors[0].startswith(f"error: {rng}: not a random-generator state written by partialfc")
