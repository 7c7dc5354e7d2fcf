"""The torch loader with ``device="cuda"``: uint8 copied to the GPU and normalised there."""

from __future__ import annotations

import pytest
import torch

from tests.unit.data._datasets import make_synth

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def test_cuda_batches_equal_cpu_batches(tmp_path):
    from partialfc.data import RecordLoader

    root = make_synth(tmp_path / "synth")
    cpu = RecordLoader(root, batch_size=8, num_workers=0, seed=1)
    gpu = RecordLoader(root, batch_size=8, num_workers=0, seed=1, pin_memory=True, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
