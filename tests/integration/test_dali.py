"""DALI (CPU pipelines) reads what ``pack``/``synth`` wrote, with the torch loader's contract.

Pixel comparison: with PNG (lossless) both decoders must give the very same pixels, and
normalisation is computed identically ((x - 127.5) * (1/127.5) in float32), so the tolerance is 0.
With JPEG the two decoders are different programs (Pillow's libjpeg-turbo, DALI's nvImageCodec);
IDCT and chroma upsampling may differ by one or two levels, so we allow 3/127.5 per pixel and a
mean difference below 0.5/127.5 (in practice, on CPU, they are bit-identical here too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partialfc.data import FaceRecord, RecordLoader
from partialfc.data.layout import DatasetError
from tests.unit.data._datasets import damage_record, make_packed, make_synth, write_image_folder

pytest.importorskip("nvidia.dali")
from partialfc.data.dali import DaliLoader


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"))  # JPEG, 72 images, 12 classes


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    images = write_image_folder(tmp_path_factory.mktemp("img"), identities=5, per_identity=4)
    return make_packed(tmp_path_factory.mktemp("png"), images, ".png")  # 20 images


def _dali(root, **kw):
    kw.setdefault("num_threads", 1)
    return DaliLoader(root, device="cpu", **kw)


def _compare(root, atol, mean_atol):
    n = len(FaceRecord(root))
    dali = _dali(root, batch_size=n, shuffle=False, flip=False)
    x, y = next(iter(dali))
    torch_loader = RecordLoader(root, batch_size=n, shuffle=False, flip=False, num_workers=0)
    xt, yt = next(iter(torch_loader))
    assert torch.equal(y, yt)
    diff = (x - xt).abs()
    assert diff.max() <= atol and diff.mean() <= mean_atol
    dali.close()


def test_same_pixels_as_torch_loader_png_exact(png):
    _compare(png, atol=0.0, mean_atol=0.0)


def test_same_pixels_as_torch_loader_jpeg(synth):
    _compare(synth, atol=3 / 127.5, mean_atol=0.5 / 127.5)


def test_output_contract_and_labels(synth):
    dali = _dali(synth, batch_size=8, seed=1)
    batches = list(dali)
    assert len(batches) == len(dali) == 9
    x, y = batches[0]
    assert x.shape == (8, 3, 112, 112) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and x.min() >= -1 and x.max() <= 1
    labels = torch.cat([b[1] for b in batches])
    assert sorted(labels.tolist()) == sorted(FaceRecord(synth).labels().tolist())  # each once


def test_flip_mirrors(png):
    n = 20
    plain = next(iter(_dali(png, batch_size=n, shuffle=False, flip=False)))[0]
    flipped = next(iter(_dali(png, batch_size=n, shuffle=False, flip=True, seed=3)))[0]
    mirrored = [bool(torch.equal(f, p.flip(-1))) for f, p in zip(flipped, plain, strict=True)]
    same = [bool(torch.equal(f, p)) for f, p in zip(flipped, plain, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert 0 < sum(mirrored) < n


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_equal_batches_and_disjoint(synth, world_size):
    b = 5
    per_rank = []
    for rank in range(world_size):
        loader = _dali(synth, batch_size=b, world_size=world_size, rank=rank, shuffle=False)
        per_rank.append([[y for _, y in loader] for _ in range(2)])  # two epochs
    expected = 72 // (b * world_size)
    record = FaceRecord(synth)
    labels = record.labels()
    for epochs in per_rank:
        assert [len(e) for e in epochs] == [expected, expected]
    # epoch 0: each rank reads its own contiguous shard, in file order
    for rank, epochs in enumerate(per_rank):
        start = 72 * rank // world_size
        got = torch.cat(epochs[0]).numpy()
        np.testing.assert_array_equal(got, labels[start : start + expected * b])


def test_filtered_index_leaves_out_headers(synth, tmp_path):
    from partialfc.data.dali import write_image_index

    record = FaceRecord(synth)
    lines = write_image_index(record, tmp_path / "x.idx").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(1, 73))


def test_label_out_of_range_is_reported(synth, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    (root / "property").write_text("2,112,112")
    with pytest.raises(
        ValueError, match=r"train\.rec, key \d+: label \d+ is not a class in \[0, 2\)"
    ):
        next(iter(_dali(root, batch_size=72, shuffle=False)))


def test_image_size_differs_from_property(synth, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    (root / "property").write_text("12,100,100")
    with pytest.raises(
        ValueError, match=r"train\.rec, key \d+: DALI decoded an image of shape \(3, 112, 112\)"
    ):
        next(iter(_dali(root, batch_size=8)))


def test_argument_errors(synth):
    with pytest.raises(ValueError, match="rank=3, world_size=2"):
        DaliLoader(synth, 4, world_size=2, rank=3, device="cpu")
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        DaliLoader(synth, 40, world_size=2, device="cpu")
    with pytest.raises(ValueError, match="device must be"):
        DaliLoader(synth, 4, device="tpu")


def _copy(synth, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    return root


@pytest.mark.parametrize("soi", [False, True], ids=["garbage-pixels", "decoder-fails"])
def test_a_damaged_jpeg_is_named_by_key(synth, tmp_path, soi):
    """DALI decodes the first to wrong pixels without an error and fails on the second; either
    way no batch holding it is handed out, and the error names the record."""
    root = _copy(synth, tmp_path)
    damage_record(root, 40, soi=soi)
    loader = _dali(root, batch_size=8, seed=2)
    with pytest.raises(DatasetError, match=r"train\.rec, key 40: ") as err:
        for _ in loader:
            pass
    if soi:
        assert "not an image format Pillow knows (first bytes 00 00 ff e0)" in str(err.value)
        assert str(err.value).endswith("DALI cannot decode it")
    else:
        assert "damaged JPEG (byte " in str(err.value) and "DALI" not in str(err.value)
    assert err.value.key == 40


def _take(loader, n):
    """The next ``n`` batches of ``loader``, across epochs."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(a, b, strict=True)
    )


def test_pipeline_checkpoint_resumes_exactly_across_an_epoch(synth):
    """9 batches an epoch; the state is taken in epoch 1, after DALI's shuffle buffer and the
    flip generator have moved on: the restored loader yields exactly what the first yields next,
    and a fresh one fast-forwarded by batch count does not."""
    first = _dali(synth, batch_size=8, seed=3, initial_fill=64)
    _take(first, 13)  # epoch 1, batch 4
    state, blob = first.state_dict(), first.pipeline_checkpoint()
    assert state == {"epoch": 1, "batch": 4}
    expected = _take(first, 10)  # through the end of epoch 1 into epoch 2
    restored = _dali(synth, batch_size=8, seed=3, initial_fill=64)
    restored.load_state_dict(state, blob)
    assert _same(_take(restored, 10), expected)
    counted = _dali(synth, batch_size=8, seed=3, initial_fill=64)
    counted.load_state_dict(state)  # no DALI checkpoint: the same count of batches, not the same
    batches = _take(counted, 10)
    assert [len(batches), counted.epoch] == [10, 2] and not _same(batches, expected)


def test_state_survives_close(synth):
    loader = _dali(synth, batch_size=8, seed=4)
    _take(loader, 5)
    loader.close()  # what the trainer does on SIGTERM before its last checkpoint
    state, blob = loader.state_dict(), loader.pipeline_checkpoint()
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))
    uninterrupted = _dali(synth, batch_size=8, seed=4)
    _take(uninterrupted, 5)
    restored = _dali(synth, batch_size=8, seed=4)
    restored.load_state_dict(state, blob)
    assert _same(_take(restored, 6), _take(uninterrupted, 6))


def test_trainer_files_restore_each_rank_and_another_world_size_falls_back(synth, tmp_path, caplog):
    """The trainer's per-rank files: rank 1 of 2 comes back exactly from its own; a run resumed
    on 1 rank finds none of its own, warns, and runs the used part of the epoch unseen."""
    from partialfc.train.data import load_loader_state, loader_files

    folder = tmp_path / "step-00000003"
    folder.mkdir()
    for rank in range(2):
        two = _dali(synth, batch_size=4, world_size=2, rank=rank, seed=5)
        _take(two, 3)
        for name, blob in loader_files(two).items():
            (folder / name).write_bytes(blob)
        state = two.state_dict()
    expected = _take(two, 4)  # rank 1's next batches
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["dali-rank0-of2-epoch0-batch3.bin", "dali-rank1-of2-epoch0-batch3.bin"]
    restored = _dali(synth, batch_size=4, world_size=2, rank=1, seed=5)
    load_loader_state(restored, state, folder)
    assert _same(_take(restored, 4), expected)

    one = _dali(synth, batch_size=8, seed=5)
    with caplog.at_level("WARNING", logger="partialfc.train.data"):
        load_loader_state(one, state, folder)
    assert (
        f"{folder} holds no DALI reader state for rank 0 of 1 (it has {', '.join(names)}): "
        "epoch 0 continues from a fresh reader, 3 batches run unseen" in caplog.text
    )
    assert len(list(one)) == len(one) - 3 and one.state_dict() == {"epoch": 1, "batch": 0}
