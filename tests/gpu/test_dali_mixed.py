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


def test_mixed_pipeline_checkpoint_resumes_exactly_and_names_a_damaged_record(tmp_path):
    import shutil

    from partialfc.data.dali import DaliLoader
    from partialfc.data.layout import DatasetError
    from tests.unit.data._datasets import damage_record

    root = make_synth(tmp_path / "synth")
    first = DaliLoader(root, batch_size=8, device="gpu", seed=3)
    it = iter(first)
    for _ in range(4):
        next(it)
    state, blob = first.state_dict(), first.pipeline_checkpoint()
    expected = [next(it) for _ in range(3)]
    restored = DaliLoader(root, batch_size=8, device="gpu", seed=3)
    restored.load_state_dict(state, blob)
    got = list(zip(range(3), restored, strict=False))
    for (_, (x, y)), (xe, ye) in zip(got, expected, strict=True):
        assert torch.equal(x, xe) and torch.equal(y, ye)

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    damage_record(bad, 40)
    with pytest.raises(DatasetError, match=r"key 40: damaged JPEG"):
        for _ in DaliLoader(bad, batch_size=8, device="gpu", seed=3):
            pass
