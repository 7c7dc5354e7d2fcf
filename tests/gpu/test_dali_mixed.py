"""DALI ``mixed`` (GPU) decoding: same contract as the CPU path, output on the GPU."""

from __future__ import annotations

import pytest
import torch

from tests.unit.data._datasets import make_synth

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("nvidia.dali")


def test_mixed_decoding_matches_cpu(tmp_path):
    from partialfc.data.dali import DaliLoader

    root = make_synth(tmp_path / "synth")
    gpu = DaliLoader(root, batch_size=72, device="gpu", shuffle=False, flip=False)
    cpu = DaliLoader(root, batch_size=72, device="cpu", shuffle=False, flip=False)
    (xg, yg), (xc, yc) = next(iter(gpu)), next(iter(cpu))
    assert xg.is_cuda and xg.dtype == torch.float32 and xg.shape == (72, 3, 112, 112)
    assert torch.equal(yg.cpu(), yc)
    # nvJPEG and the CPU decoder may differ by a few levels per pixel (IDCT, upsampling)
    diff = (xg.cpu() - xc).abs()
    assert diff.max() <= 8 / 127.5 and diff.mean() <= 1 / 127.5
