"""A real fault under real torchrun: SIGKILL of a worker mid-run.

A run killed at a random step and restarted by torchrun (``--max-restarts``) must produce the
same per-step losses as an uninterrupted run. SIGTERM (an eviction) is tests/integration/
test_sigterm.py, on the shipped config with its loader workers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._service import finish, wait_for_step
from tests.integration.conftest import STEPS
from tests.runlog import step_losses


@pytest.fixture
def config(small_run_config: Path) -> Path:
    return small_run_config


def _torchrun(
    config: Path, out: Path, *, world: int = 2, restarts: int = 0, extra: tuple = ()
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--max-restarts={restarts}",
        "-m", "partialfc.train", str(config), f"--train.output_dir={out}", *extra,
    ]  # fmt: skip
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _workers(agent: int) -> list[int]:
    """PIDs of the processes whose parent is ``agent`` (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == agent:
                found.append(int(entry.name))
    return found


def test_sigkill_mid_run_and_torchrun_restart_reproduce_every_loss(
    config: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    assert finish(_torchrun(config, straight)) == 0
    expected = step_losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    kill_at = random.Random().randint(3, STEPS - 2)  # a random step, past the first checkpoint
    faulty = tmp_path / "faulty"
    proc = _torchrun(config, faulty, restarts=1)
    wait_for_step(faulty, kill_at, proc, tmp_path / "faulty.log", timeout=300)
    victims = _workers(proc.pid)
    assert len(victims) == 2, f"expected two workers under torchrun, found {victims}"
    os.kill(victims[-1], signal.SIGKILL)
    assert finish(proc) == 0, (tmp_path / "faulty.log").read_text()[-3000:]
    log = (tmp_path / "faulty.log").read_text()
    assert "resumed from" in log, "the restarted workers resumed from a checkpoint"
    got = step_losses(faulty)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (
            f"step {step} (killed at {kill_at})"
        )
