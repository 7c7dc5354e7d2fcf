"""The minimal MXNet Module loop trains on a tiny synthetic RecordIO dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partialfc.data.synth import SynthConfig, synth_dataset

mx = pytest.importorskip("mxnet")

from partialfc.legacy.train import record_batches, train  # noqa: E402

IDS, PER_ID, SIZE, BATCH, D = 20, 4, 32, 16, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(identities=IDS, images_per_identity=PER_ID, size=SIZE, val_pairs=0)
    synth_dataset(root, cfg, workers=1)
    return root


def _cfg(loss_name: str = "margin_softmax") -> dict[str, object]:
    return dict(
        loss_name=loss_name, num_classes=IDS, emb_size=D, loss_s=16.0, loss_m1=1.0,
        loss_m2=0.3, loss_m3=0.0, fc7_no_bias=False, fc7_lr_mult=1.0, fc7_wd_mult=1.0,
        ce_loss=True, per_batch_size=BATCH,
    )  # fmt: skip


def test_batches_are_normalised_images_and_labels(dataset: Path) -> None:
    images, labels = next(record_batches(dataset, BATCH))
    assert images.shape == (BATCH, 3, SIZE, SIZE) and images.dtype == np.float32
    assert -1.0 <= images.min() < images.max() <= 1.0
    assert labels.shape == (BATCH,) and labels.min() >= 0 and labels.max() < IDS


@pytest.mark.parametrize("loss_name", ["margin_softmax", "softmax"])
def test_a_few_steps_train(dataset: Path, loss_name: str) -> None:
    steps = 4
    result = train(dataset, _cfg(loss_name), steps=steps, lr=0.05)
    assert len(result.losses) == steps and np.all(np.isfinite(result.losses))
    arg, _ = result.module.get_params()
    # a fresh module with the same seed holds the initial values: the steps changed them
    initial = train(dataset, _cfg(loss_name), steps=1, lr=0.0).module.get_params()[0]
    again = train(dataset, _cfg(loss_name), steps=1, lr=0.0).module.get_params()[0]
    for name, value in initial.items():  # the seed fixes the initialisation
        assert np.array_equal(value.asnumpy(), again[name].asnumpy()), name
    for name in ("fc7_weight", "pre_fc1_weight", "conv0_weight"):
        assert not np.allclose(arg[name].asnumpy(), initial[name].asnumpy()), name


def test_triplet_is_refused(dataset: Path) -> None:
    cfg = dict(loss_name="triplet", triplet_alpha=0.3, per_batch_size=15)
    with pytest.raises(ValueError, match="loss_name"):
        train(dataset, cfg, steps=1)
