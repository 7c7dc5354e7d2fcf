"""Shared pytest wiring: GPU tests skip cleanly on machines without CUDA; without CUDA the fused
Triton kernels run in Triton's CPU interpreter (set before anything imports triton)."""

import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``).

    On a shared, busy CPU, intra-op threads spin against each other: a small convolution took
    40x longer with 2 threads than with 1, and torch's threads also contend with onnxruntime's.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
