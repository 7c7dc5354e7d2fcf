"""Running the shipped demo config as a user does, on a small synthetic face set.

Only what this machine forces is overridden: the data folder, the output folder, a batch that
fits 160 images, and the step counts; the data-loader workers, margin, sampling and the rest stay
as ``configs/demo_cpu.toml`` ships them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from partialfc.data.synth import SynthConfig, synth_dataset
from tests.runlog import step_losses

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo_cpu.toml"
IDENTITIES, IMAGES_PER_IDENTITY = 20, 8


def make_dataset(root: Path, shuffle: bool = True) -> Path:
    """160 images of 20 identities and a val.bin; ``shuffle=False`` stores them grouped by
    identity, with insightface's identity records after the images."""
    synth_dataset(
        root,
        SynthConfig(
            identities=IDENTITIES, images_per_identity=IMAGES_PER_IDENTITY, val_identities=4,
            val_pairs=20, shuffle=shuffle,
        ),
        workers=1,
    )  # fmt: skip
    return root


def demo_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"--data.root={data}", f"--train.output_dir={out}", f"--eval.sets={data / 'val.bin'}",
        "--data.global_batch_size=32", "--optim.warmup_steps=1", "--train.log_every=1", *extra,
    ]  # fmt: skip


def train(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m partialfc.train configs/demo_cpu.toml ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "partialfc.train", str(DEMO), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def popen_train(
    *args: str, log: Path, torchrun: int = 0, launcher_args: Sequence[str] = ()
) -> subprocess.Popen:
    """The same, in the background (under torchrun with ``torchrun`` processes when > 0, with
    torchrun's own ``launcher_args`` such as ``--max-restarts=1``)."""
    launcher = (
        ["-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--rdzv-backend=c10d",
         "--rdzv-endpoint=localhost:0", *launcher_args]
        if torchrun else []
    )  # fmt: skip
    cmd = [sys.executable, *launcher, "-m", "partialfc.train", str(DEMO), *args]
    out = open(log, "w")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Polls ``predicate`` until it holds; fails with the log's tail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(log.read_text()[-3000:])


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = 240):
    """Until ``out/metrics.jsonl`` holds a loss of step ``step`` or later."""

    def reached() -> bool:
        return (out / "metrics.jsonl").exists() and max(step_losses(out), default=0) >= step

    wait_for(reached, proc, log, timeout)


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    """The exit status; a run still going after ``timeout`` is SIGKILLed (its process group)."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds (one process reads any world size's checkpoint)."""
    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    state = {
        k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
        for k, m in meta.items()
        if hasattr(m, "size") and hasattr(m, "properties")
    }
    dcp.load(state, checkpoint_id=path, no_dist=True)
    return state
