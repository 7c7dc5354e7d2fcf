"""The torch loader: world-size independent global batches, resumption, flips, workers."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from partialfc.data import FaceRecord, GlobalBatchSampler, RecordDataset, RecordLoader
from partialfc.data.layout import DatasetError
from tests.unit.data._datasets import damage_record, make_synth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"))  # 72 images, 12 classes


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_output_contract(synth):
    loader = RecordLoader(synth, batch_size=8, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 112, 112) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64
    assert -1 <= x.min() < -0.9 and 0.9 < x.max() <= 1
    # the same sample, unflipped, normalised by hand: (x/255 - 0.5)/0.5
    raw = RecordLoader(synth, batch_size=8, num_workers=0, shuffle=False, flip=False)
    x0 = next(iter(raw))[0][0]
    u8 = torch.from_numpy(RecordDataset(synth).load(0)[0].copy()).permute(2, 0, 1).double()
    torch.testing.assert_close(x0.double(), (u8 / 255 - 0.5) / 0.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_global_batch_is_world_size_independent(synth, world_size):
    b = 4
    single = _epoch(RecordLoader(synth, batch_size=b * world_size, num_workers=0, seed=5))
    ranks = [
        _epoch(
            RecordLoader(synth, batch_size=b, world_size=world_size, rank=r, num_workers=0, seed=5)
        )
        for r in range(world_size)
    ]
    assert len(single) == 72 // (b * world_size)
    assert all(len(r) == len(single) for r in ranks)  # equal number of batches on every rank
    for g, (x, y) in enumerate(single):
        torch.testing.assert_close(torch.cat([r[g][0] for r in ranks]), x, atol=0, rtol=0)
        assert torch.equal(torch.cat([r[g][1] for r in ranks]), y)


def test_drops_the_last_incomplete_global_batch():
    sampler = GlobalBatchSampler(num_samples=10, batch_size=2, world_size=3, rank=2)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 1  # 10 // 6
    seen = set()
    for r in range(3):
        seen |= {i for i, _ in next(iter(GlobalBatchSampler(10, 2, 3, r)))}
    assert len(seen) == 6  # the ranks' slices are disjoint


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        s = GlobalBatchSampler(100, 10, seed=seed)
        s.epoch = epoch
        return [i for batch in s for i, _ in batch]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == list(range(100))


def test_flips_are_mirror_images_and_deterministic(synth):
    ds = RecordDataset(synth)
    a, _ = ds[(3, False)]
    b, _ = ds[(3, True)]
    np.testing.assert_array_equal(b, a[:, ::-1])
    assert not np.array_equal(a, b)
    assert np.array_equal(ds[3][0], a)  # a bare index is unflipped
    s = GlobalBatchSampler(len(ds), 8, seed=1)
    flips = [f for batch in s for _, f in batch]
    assert 0.2 < np.mean(flips) < 0.8
    assert flips == [f for batch in GlobalBatchSampler(len(ds), 8, seed=1) for _, f in batch]


def test_workers_give_the_same_batches(synth):
    ref = _epoch(RecordLoader(synth, batch_size=8, num_workers=0, seed=2))
    got = _epoch(RecordLoader(synth, batch_size=8, num_workers=2, seed=2))
    assert len(ref) == len(got) == 9
    for (xr, yr), (xg, yg) in zip(ref, got, strict=True):
        assert torch.equal(xr, xg) and torch.equal(yr, yg)


@pytest.mark.parametrize("stop", [3, 9, 11])
def test_resume_mid_epoch_gives_the_exact_next_batch(synth, stop):
    """Stop after `stop` batches (9 a epoch), save, resume elsewhere: same stream of batches."""
    ref = RecordLoader(synth, batch_size=8, num_workers=0, seed=4)
    stream = list(itertools.islice(_forever(ref), stop + 4))

    first = RecordLoader(synth, batch_size=8, num_workers=2, seed=4)
    gen = _forever(first)
    for _ in range(stop):
        next(gen)
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == divmod(stop, 9)

    resumed = RecordLoader(synth, batch_size=8, num_workers=2, seed=4)
    resumed.load_state_dict(state)
    for want, got in zip(stream[stop:], _forever(resumed), strict=False):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_resume_on_another_world_size_with_the_same_global_batch(synth):
    one = RecordLoader(synth, batch_size=12, num_workers=0, seed=3)
    it = iter(one)
    next(it)
    next(it)
    want = next(it)
    two = [
        RecordLoader(synth, batch_size=6, world_size=2, rank=r, num_workers=0, seed=3)
        for r in range(2)
    ]
    state = {"epoch": 0, "batch": 2, "seed": 3, "global_batch_size": 12, "num_samples": 72}
    for loader in two:
        loader.load_state_dict(state)
    got = [next(iter(loader)) for loader in two]
    assert torch.equal(torch.cat([g[0] for g in got]), want[0])


def _forever(loader):
    while True:
        yield from loader


def test_load_state_dict_rejects_another_order(synth):
    loader = RecordLoader(synth, batch_size=8, num_workers=0, seed=4)
    with pytest.raises(ValueError, match="seed=5"):
        loader.load_state_dict({"epoch": 0, "batch": 1, "seed": 5})
    with pytest.raises(ValueError, match="global_batch_size=16"):
        loader.load_state_dict({"epoch": 0, "batch": 1, "global_batch_size": 16})
    with pytest.raises(ValueError, match="batch=10"):
        loader.load_state_dict({"epoch": 0, "batch": 10})


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        GlobalBatchSampler(10, 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="cannot fill one global batch of 12"):
        GlobalBatchSampler(10, 4, world_size=3, rank=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_jpeg_pillow_would_decode_is_named_by_key(synth, tmp_path, workers):
    """64 inverted bytes in key 30's entropy-coded data: Pillow decodes them to wrong pixels
    without an error; the loader refuses the record by key, from a worker process too (where
    DataLoader alone would re-raise a RuntimeError holding a traceback's text)."""
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    damage = damage_record(root, 30)
    _, payload = FaceRecord(root).read_image_record(30)
    from partialfc.data.images import decode_image

    assert decode_image(payload).shape == (112, 112, 3)  # what the torch loader did before
    loader = RecordLoader(root, batch_size=8, num_workers=workers, seed=1)
    with pytest.raises(DatasetError) as err:
        for _ in loader:
            pass
    assert str(err.value) == f"{root / 'train.rec'}, key 30: damaged JPEG ({damage})"
    assert err.value.key == 30


def test_corrupt_record_raises_unless_skipping_is_asked(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    offset = FaceRecord(root).reader.idx[1]
    with open(root / "train.rec", "r+b") as f:
        f.seek(offset)
        f.write(b"\0\0\0\0")
    loader = RecordLoader(root, batch_size=72, num_workers=0, shuffle=False)
    with pytest.raises(ValueError, match=rf"train\.rec, key 1, offset {offset}: bad magic"):
        next(iter(loader))
    skipping = RecordLoader(
        RecordDataset(root, skip_corrupt=True), batch_size=72, num_workers=0, shuffle=False
    )
    x, y = next(iter(skipping))
    assert len(x) == len(y) == 71


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_outlive_a_group_sigterm_and_stop_on_close(synth):
    """torchrun and Kubernetes signal the whole process group; the trainer stops its workers itself
    (close), so a worker must not die first and break the trainer's last checkpoint."""
    loader = RecordLoader(synth, batch_size=8, num_workers=2, seed=3)
    batches = iter(loader)
    next(batches), next(batches)
    pids = [w.pid for w in loader._loader._iterator._workers]
    for pid in pids:  # sent by another process, as torchrun's killpg is: not the parent
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        subprocess.run(["kill", "-INT", str(pid)], check=True)
    time.sleep(1.0)
    assert all(map(_alive, pids)), "a worker died of a signal meant for the trainer"
    third = next(batches)
    batches.close()
    loader.close()
    deadline = time.monotonic() + 30
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, pids)), "close() ended the workers"
    assert loader.state_dict()["batch"] == 3, "the position survives close()"
    expected = list(itertools.islice(_forever(RecordLoader(synth, 8, num_workers=0, seed=3)), 5))
    again = _forever(loader)
    fourth = next(again)  # new workers, the same stream; a group SIGTERM spares them too
    for w in loader._loader._iterator._workers:
        subprocess.run(["kill", "-TERM", str(w.pid)], check=True)
    time.sleep(1.0)
    fifth = next(again)
    again.close()
    for (x, y), (ex, ey) in zip([third, fourth, fifth], expected[2:], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    loader.close()


def test_a_script_that_never_closes_its_loader_still_exits(synth):
    """Workers that ignore SIGTERM must not hang the exit: multiprocessing's exit handler SIGTERMs
    its daemonic children and joins them; the loaders are closed before it runs."""
    script = (
        "import sys\nfrom partialfc.data import RecordLoader\n"
        "loader = RecordLoader(sys.argv[1], batch_size=8, num_workers=2)\n"
        "next(iter(loader))\nprint('fetched', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(synth)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "fetched" in done.stdout, done.stderr
