"""``partialfc synth``: counts, determinism, held-out verification pairs."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from partialfc.cli import main
from partialfc.data import FaceRecord, SynthConfig, read_bin, synth_dataset
from partialfc.data.synth import _HELD_OUT, _TRAIN
from partialfc.data.synth_faces import identity_params
from tests.unit.data._datasets import SMALL, make_synth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"))


def test_counts(synth):
    rec = FaceRecord(synth)
    assert (rec.property.num_classes, rec.property.height, rec.property.width) == (12, 112, 112)
    labels = rec.labels()
    assert len(labels) == 72
    assert np.bincount(labels).tolist() == [6] * 12
    assert len(set(labels[:12].tolist())) > 1  # stored shuffled, not class by class


def test_val_bin_is_valid(synth):
    images, issame = read_bin(synth / "val.bin")
    assert len(issame) == 20 and sum(issame) == 10 and len(images) == 40
    for data in images[:4]:
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (112, 112)
    # the two images of a pair are different pictures, even for the same identity
    assert all(images[2 * i] != images[2 * i + 1] for i in range(20))


def test_held_out_identities_are_not_training_identities():
    def vec(stream, i):
        p = identity_params(np.random.default_rng([SMALL.seed, stream, i]))
        return np.concatenate(
            [
                [getattr(p, f.name)]
                if np.isscalar(getattr(p, f.name))
                else np.ravel(getattr(p, f.name))
                for f in dataclasses.fields(p)
                if f.name != "moles"
            ]
        )

    train = np.stack([vec(_TRAIN, i) for i in range(SMALL.identities)])
    for j in range(SMALL.val_identities):
        assert np.abs(train - vec(_HELD_OUT, j)).max(axis=1).min() > 1e-3


def test_deterministic_and_worker_independent(synth, tmp_path):
    synth_dataset(tmp_path, SMALL, workers=2)
    for name in ("train.rec", "train.idx", "property", "val.bin"):
        assert (tmp_path / name).read_bytes() == (synth / name).read_bytes(), name


def test_images_vary_within_identity(synth):
    from partialfc.data import RecordDataset

    ds = RecordDataset(synth)
    labels = FaceRecord(synth).labels()
    same = np.flatnonzero(labels == labels[0])[:2]
    a, b = (ds.load(int(i))[0].astype(np.float32) for i in same)
    assert np.abs(a - b).mean() > 5  # pose, lighting and background differ


def test_cli(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                str(tmp_path),
                "--identities",
                "3",
                "--images-per-identity",
                "2",
                "--size",
                "64",
                "--val-identities",
                "2",
                "--val-pairs",
                "4",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        "wrote 6 images of 3 identities (64x64) and 4 verification pairs" in capsys.readouterr().out
    )
    assert (tmp_path / "property").read_text() == "3,64,64"
    assert len(read_bin(tmp_path / "val.bin")[1]) == 4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"identities": 0}, "identities"),
        ({"val_pairs": 3}, "val_pairs"),
        ({"val_identities": 1}, "val_identities"),
        ({"quality": 101}, "quality"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"SynthConfig.{field}"):
        SynthConfig(**kwargs)
