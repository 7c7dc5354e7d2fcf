"""The CPU step-memory counter of benchmarks/head.py: it reports numbers, so it is tested."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def load_head_benchmark():
    """``benchmarks/head.py`` as a module (benchmarks/ is not a package)."""
    path = Path(__file__).parents[2] / "benchmarks" / "head.py"
    spec = importlib.util.spec_from_file_location("bench_head", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def head_bench():
    return load_head_benchmark()


MIB = 1 << 20


def test_counts_the_peak_of_live_temporaries(head_bench):
    def step():
        a = torch.ones(8 * MIB, dtype=torch.uint8)  # 8 MiB live ...
        b = torch.ones(4 * MIB, dtype=torch.uint8)  # ... plus 4 MiB: the peak, 12 MiB
        del a, b
        c = torch.ones(6 * MIB, dtype=torch.uint8)  # after the frees: below the peak
        del c

    peak = head_bench._cpu_step_bytes(step)
    assert 12 * MIB <= peak < 13 * MIB


def test_frees_lower_the_running_count(head_bench):
    def step():
        for _ in range(10):  # ten 4 MiB blocks one after another: the peak is one block
            torch.ones(4 * MIB, dtype=torch.uint8)

    peak = head_bench._cpu_step_bytes(step)
    assert 4 * MIB <= peak < 5 * MIB


def test_a_kept_result_counts(head_bench):
    kept = []

    def step():
        kept.append(torch.ones(3 * MIB, dtype=torch.uint8))
        torch.ones(2 * MIB, dtype=torch.uint8)

    peak = head_bench._cpu_step_bytes(step)
    assert 5 * MIB <= peak < 6 * MIB
