"""SIGTERM as a cluster sends it, on the shipped demo config with its data-loader worker: to
torchrun (Kubernetes signals the container's first process, which the launcher ``exec``s), and to
a lone trainer's whole process group (Ctrl-C, ``docker stop`` with an init that forwards to the
group). The run must write the checkpoint of the step it reached, exit as terminated, and its
restart must continue with the losses of an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from partialfc import checkpoint
from tests.integration._service import (
    demo_overrides,
    finish,
    make_dataset,
    popen_train,
    wait_for_step,
)
from tests.runlog import step_losses

STEPS = 12
STOP_AFTER = 4  # steps completed before the signal is sent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sigterm") / "data")


def _run(data: Path, out: Path, log: Path, ranks: int, loader: str):
    # The demo config as shipped (workers = 1, eval every 50 steps, ...), sized to this dataset.
    args = demo_overrides(data, out, f"--train.max_steps={STEPS}", f"--data.loader={loader}")
    return popen_train(*args, log=log, torchrun=ranks)


@pytest.mark.parametrize(
    ("launcher", "loader"), [("torchrun", "torch"), ("python", "torch"), ("torchrun", "dali")]
)
def test_sigterm_with_loader_workers_checkpoints_and_the_restart_continues_exactly(
    data: Path, tmp_path: Path, launcher: str, loader: str
) -> None:
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    ranks = 2 if launcher == "torchrun" else 0
    straight = tmp_path / "straight"
    proc = _run(data, straight, tmp_path / "straight.log", ranks, loader)
    assert finish(proc) == 0, (tmp_path / "straight.log").read_text()
    expected = step_losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _run(data, out, log, ranks, loader)
    wait_for_step(out, STOP_AFTER, proc, log)
    if launcher == "torchrun":
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to each worker's process group
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its loader worker together
    code = finish(proc, timeout=120)
    text = log.read_text()
    # torchrun prints a traceback of its own SignalException; the trainers print none.
    ours = text if launcher == "python" else "\n".join(re.findall(r"^\[rank\d+\]:.*$", text, re.M))
    assert "Traceback" not in ours and "killed by signal" not in text, text[-3000:]
    reached = max(step_losses(out))
    assert f"stopped by signal at step {reached}" in text, text[-3000:]
    assert reached < STEPS, "the signal stopped the run early"
    # torchrun reports its own SIGTERM as a failure (exit 1); the lone trainer exits 128 + 15.
    assert code == (143 if launcher == "python" else 1), text[-3000:]
    latest = checkpoint.latest_checkpoint(out)
    assert latest is not None and latest.name == f"step-{reached:08d}", (latest, reached)

    again = _run(data, out, tmp_path / "again.log", ranks, loader)
    assert finish(again) == 0, (tmp_path / "again.log").read_text()
    assert f"resumed from {latest} at step {reached}" in (tmp_path / "again.log").read_text()
    assert step_losses(out) == expected, "the resumed steps' losses are the uninterrupted run's"
