"""/healthz of a real trainer (partialfc/configs/demo_cpu.toml under torchrun, loader workers as shipped):
200 while steps complete, 503 while a peer rank is stopped (SIGSTOP), 200 again once it resumes;
and a busy metrics port, which is one line naming the port and exit 2."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from partialfc.data.synth import SynthConfig, synth_dataset
from tests.http import http_get

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "partialfc" / "configs" / "demo_cpu.toml"
STALL = 10  # metrics.stall_seconds: several steady steps of the demo on two loaded cores
BUSY = (
    "is already in use by another process; stop what holds it, or set metrics.port to a free port "
    "(local rank r serves on metrics.port + r; 0 turns the server off)"
)

pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic face set in the demo's layout (one global batch of 128 per epoch)."""
    root = tmp_path_factory.mktemp("healthz") / "data"
    config = SynthConfig(identities=16, images_per_identity=10, val_identities=4, val_pairs=20)
    synth_dataset(root, config, workers=1)
    return root


def _demo(data: Path, output: Path, *overrides: str) -> list[str]:
    """The shipped demo config with this machine's paths (and the given overrides)."""
    paths = [
        f"--data.root={data}",
        f"--eval.sets={data / 'val.bin'}",
        f"--train.output_dir={output}",
        "--data.global_batch_size=32",  # 160 images: 5 steps an epoch, more than the warmup
    ]
    return ["-m", "partialfc.train", str(DEMO), *paths, *overrides]


def _free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are free (one per local rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count < 65536 and all(_free(port + i) for i in range(count)):
            return port
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _step(port: int) -> float | None:
    """Rank 0's ``partialfc_step`` gauge (None before the server answers or the first step)."""
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    except OSError:
        return None
    found = re.search(r'^partialfc_step\{rank="0"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def _healthcheck(port: int) -> int:
    """Exit status of the Docker image's HEALTHCHECK command against ``port``."""
    env = {**os.environ, "PARTIALFC_METRICS_PORT": str(port)}
    script = REPO / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True).returncode


def _workers(launcher: int) -> dict[int, int]:
    """torchrun's worker processes (its children), by LOCAL_RANK."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if ppid == launcher:
            ranks = [v for v in environ if v.startswith(b"LOCAL_RANK=")]
            if ranks:
                found[int(ranks[0].split(b"=")[1])] = int(stat.parent.name)
    return found


def _wait(what: str, ready, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"the run exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        )
        value = ready()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _torchrun(data: Path, output: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        *_demo(data, output, *overrides),
    ]


def test_healthz_is_503_while_a_peer_rank_is_stopped_and_200_while_steps_complete(
    demo_data: Path, tmp_path: Path
) -> None:
    port = _free_ports(2)
    healthz = f"http://127.0.0.1:{port}/healthz"
    log = tmp_path / "torchrun.log"
    overrides = ("--train.max_steps=100000", f"--metrics.port={port}")
    cmd = _torchrun(demo_data, tmp_path / "run", *overrides, f"--metrics.stall_seconds={STALL}")
    # One thread per process (two processes, two cores).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    workers: dict[int, int] = {}

    def answer_unless_ok() -> tuple[int, str] | None:
        answer = http_get(healthz)
        return None if answer[0] == 200 else answer

    try:
        first = _wait("the first step", lambda: _step(port), 120, proc, log)
        # Stepping: every answer is 200 while three more steps complete.
        answers = []
        while (_step(port) or 0) < first + 3:
            assert proc.poll() is None, log.read_text()[-3000:]
            answers.append(http_get(healthz))
            time.sleep(0.5)
        assert answers and set(answers) == {(200, "ok\n")}
        assert _healthcheck(port) == 0
        workers = _workers(proc.pid)
        assert sorted(workers) == [0, 1], workers

        # Rank 1 stops (as a hung GPU or a frozen node would): rank 0 waits in a collective, its
        # server thread still answers, and reports the stall after metrics.stall_seconds.
        os.kill(workers[1], signal.SIGSTOP)
        stopped_at, step_at_stop = time.monotonic(), _step(port)
        status, body = _wait("a 503", answer_unless_ok, STALL + 30, proc, log)
        waited = time.monotonic() - stopped_at
        assert status == 503, body
        seconds = int(re.fullmatch(r"unhealthy: no training step for (\d+) s\n", body).group(1))
        assert seconds >= STALL
        assert waited < STALL + 10, "reported soon after the stall"
        step_at_503 = _step(port)
        assert step_at_503 in (step_at_stop, step_at_stop + 1), (step_at_stop, step_at_503)
        assert _healthcheck(port) == 1
        time.sleep(1.0)
        assert http_get(healthz)[0] == 503 and _step(port) == step_at_503, (
            "no progress while stopped"
        )

        # The peer resumes: steps complete again and /healthz follows.
        os.kill(workers[1], signal.SIGCONT)
        _wait("a step after SIGCONT", lambda: (_step(port) or 0) > step_at_503, 60, proc, log)
        assert http_get(healthz) == (200, "ok\n")
        assert _healthcheck(port) == 0
    finally:
        for pid in workers.values():  # each worker leads its own process group (loader workers)
            with _gone():
                os.kill(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=60)


class _gone:
    """Ignore ProcessLookupError: the process already exited."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, *_: object) -> bool:
        return kind is ProcessLookupError


def test_a_busy_metrics_port_is_one_line_naming_it_and_exit_2(
    demo_data: Path, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, *_demo(demo_data, tmp_path / "run", f"--metrics.port={port}")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        f"error: metrics.port = {port}: rank 0 (local rank 0) serves /metrics and /healthz on port "
        f"{port} (metrics.port + local rank), but port {port} on 0.0.0.0 {BUSY}\n"
    )
    # Found before any work: nothing but the output_dir lock (taken first) is written.
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == [".partialfc.lock"], written


def test_a_busy_port_of_local_rank_1_names_that_rank_under_torchrun(
    demo_data: Path, tmp_path: Path
) -> None:
    port = _free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))
        busy.listen()
        cmd = _torchrun(demo_data, tmp_path / "run", f"--metrics.port={port}")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode != 0
    line = (
        f"error (rank 1): metrics.port = {port}: rank 1 (local rank 1) serves /metrics and /healthz on port "
        f"{port + 1} (metrics.port + local rank), but port {port + 1} on 0.0.0.0 {BUSY}"
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert sum(line in text for text in lines) == 1, out.stderr
