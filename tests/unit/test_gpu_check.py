"""benchmarks/gpu_check.py on CPU: the no-CUDA exit, the per-step timeout, and the whole check at
toy sizes (``--device cpu --tiny``) writing its JSON and Markdown."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gpu-check: no CUDA device here" in done.stdout
    assert list(tmp_path.iterdir()) == [], "nothing measured, nothing written"


def test_a_hung_step_is_killed_at_its_timeout_and_later_steps_get_what_is_left() -> None:
    gpu_check = _module()
    hung = gpu_check.Step("hung", ["bash", "-c", "sleep 60 & sleep 60"], timeout_s=1)
    start = time.monotonic()
    gpu_check.run_step(hung, deadline=start + 100, env={"PATH": "/usr/bin:/bin"})
    assert hung.status == "timeout" and time.monotonic() - start < 10
    late = gpu_check.Step("late", ["true"], timeout_s=100)
    gpu_check.run_step(late, deadline=time.monotonic() + 0.5, env={"PATH": "/usr/bin:/bin"})
    assert late.status == "not run" and "no time left" in late.output_tail
    failing = gpu_check.Step("failing", ["bash", "-c", "echo broken; exit 3"], timeout_s=10)
    gpu_check.run_step(failing, deadline=time.monotonic() + 10, env={"PATH": "/usr/bin:/bin"})
    assert (failing.status, failing.returncode, failing.output_tail) == ("fail", 3, "broken\n")


def test_pytest_counts_read_the_summary_line() -> None:
    gpu_check = _module()
    output = "..s.\n1 failed, 12 passed, 2 skipped in 3.10s\n"
    assert gpu_check.pytest_counts(output) == {"failed": 1, "passed": 12, "skipped": 2}
    assert gpu_check.pytest_counts("39 skipped in 0.5s") == {"skipped": 39}
    assert gpu_check.pytest_counts("ERROR collecting") == {}


@pytest.mark.slow  # about 15 s: three subprocesses, each importing torch
def test_the_tiny_check_runs_every_step_and_writes_json_and_markdown(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report_path,) = tmp_path.glob("gpu-*-tiny-cpu.json")
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "pass"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["tests", "head", "train"]
    assert all(s["status"] == "pass" for s in steps.values()), steps
    assert steps["train"]["metrics"]["steps"] == 3
    assert steps["train"]["metrics"]["loader"] == "torch"
    assert {r["impl"] for r in steps["head"]["metrics"]["rows"]} == {"dense-v2", "partialfc"}
    markdown = report_path.with_suffix(".md").read_text()
    assert "| train | pass |" in markdown and "## Head (benchmarks/head.py)" in markdown
