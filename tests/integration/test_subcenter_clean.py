"""``partialfc subcenter-clean`` end to end: the shipped demo config trained with 3 sub-centres,
cleaned, read back, and continued with one centre per class.

The rule is recomputed here with numpy, as insightface's ``drop.py`` loops over classes, on
features embedded here (the whole (N, D) matrix, where the command keeps only cosines), and the
angle is chosen from those features so that the cleaning keeps some images and drops others.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.testing import assert_close

from partialfc import checkpoint
from partialfc.data.dataset import RecordDataset, collate_u8, normalize
from partialfc.data.layout import FaceRecord
from partialfc.export import load_backbone
from tests.integration._service import REPO, demo_overrides, make_dataset, train

K = 3


def _features(run: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) normalised float64 embeddings of every image and their labels (N,)."""
    model, _ = load_backbone(run)
    dataset = RecordDataset(data)
    images, labels = collate_u8([dataset.load(i) for i in range(len(dataset))])
    with torch.no_grad():
        x = model(normalize(images)).double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels.numpy()


def _drop_rule(x: np.ndarray, labels: np.ndarray, w: np.ndarray, cos_thresh: float):
    """drop.py's loop: per class, votes for the closest sub-centre, the dominant one, the kept
    images (in dataset order) and the new label (classes with none kept are skipped)."""
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    w = w.reshape(-1, K, w.shape[1])
    dominant, kept, new_labels, label = {}, [], {}, 0
    for c in range(w.shape[0]):
        mine = np.flatnonzero(labels == c)
        votes = np.zeros(K, dtype=np.int64)
        for i in mine:
            votes[np.argmax(w[c] @ x[i])] += 1
        dominant[c] = int(np.argmax(votes))
        keep = [int(i) for i in mine if x[i] @ w[c][dominant[c]] > cos_thresh]
        if keep:
            kept += keep
            new_labels[c] = label
            label += 1
    return dominant, kept, new_labels


def _angle_between(x, labels, w) -> float:
    """A max angle midway between two of the images' cosines near the median: about half kept."""
    dominant, _, _ = _drop_rule(x, labels, w, -2.0)
    wn = (w / np.linalg.norm(w, axis=1, keepdims=True)).reshape(-1, K, w.shape[1])
    cos = np.sort([x[i] @ wn[labels[i]][dominant[labels[i]]] for i in range(len(labels))])
    gaps = np.diff(cos)
    mid = len(cos) // 2
    j = mid - 10 + int(np.argmax(gaps[mid - 10 : mid + 10]))  # the widest gap near the median
    assert gaps[j] > 1e-5, "no clear gap between the images' cosines"
    return math.degrees(math.acos((cos[j] + cos[j + 1]) / 2))


def _clean(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "partialfc", "subcenter-clean", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_clean_a_sub_centre_run_and_continue_with_one_centre(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    run = tmp_path / "run"
    trained = train(*demo_overrides(data, run, "--train.max_steps=8", f"--head.sub_centers={K}"))
    assert trained.returncode == 0, trained.stderr[-3000:]

    w = checkpoint.read_class_centers(run).double().numpy()
    assert w.shape[0] == 20 * K
    x, labels = _features(run, data)
    angle = _angle_between(x, labels, w)
    dominant, kept, new_labels = _drop_rule(x, labels, w, math.cos(math.radians(angle)))
    assert 0 < len(kept) < len(labels)

    out = tmp_path / "clean"
    cleaned = _clean(str(run), str(data), str(out), "--max-angle", f"{angle!r}")
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    # (a) the counts are the rule's
    dropped_far = len(labels) - len(kept)
    emptied = 20 - len(new_labels)
    assert f"classes: 20 -> {len(new_labels)} kept" in cleaned.stdout, cleaned.stdout
    assert f"images:  {len(labels)} -> {len(kept)} kept, {dropped_far} dropped" in cleaned.stdout
    assert f"{dropped_far} images at {angle:g} degrees or more" in cleaned.stdout
    assert f"{emptied} classes left without images" in cleaned.stdout

    # (b) the written dataset reads back: the kept records' bytes, grouped by their new labels
    original, written = FaceRecord(data), RecordDataset(out)
    assert written.num_classes == len(new_labels) and len(written) == len(kept)
    order = sorted(kept, key=lambda i: new_labels[int(labels[i])])  # stable: dataset order
    assert written.record.labels().tolist() == [new_labels[int(labels[i])] for i in order]
    for j, i in enumerate(order):
        _, payload = original.read_image_record(int(original.image_keys[i]))
        assert written.record.read_image_record(int(written.record.image_keys[j]))[1] == payload
    assert written.load(0)[0].shape == (112, 112, 3)

    # user errors: one line, exit 2, before any work
    again = _clean(str(run), str(data), str(out))
    assert again.returncode == 2 and f"{out} is not empty" in again.stderr, again.stderr
    other = _clean(str(run), str(out), str(tmp_path / "other"))
    assert other.returncode == 2, other.stderr
    assert f"{out / 'property'} has {len(new_labels)} classes but the run" in other.stderr

    # (c) a K = 1 run continues from the cleaned checkpoint, its rows the dominant centres
    survivors = sorted(new_labels, key=new_labels.get)
    rows = torch.tensor([c * K + dominant[c] for c in survivors])
    start = checkpoint.read_class_centers(out / "checkpoint")
    assert_close(start.double(), torch.from_numpy(w)[rows], rtol=0, atol=0)
    continued = train(
        *demo_overrides(
            out, out / "checkpoint", "--train.max_steps=2", "--head.sub_centers=1",
            "--optim.lr=1e-12", "--train.checkpoint_every=1",
        ),
        f"--eval.sets={data / 'val.bin'}",
    )  # fmt: skip
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint' / 'step-00000000'} at step 0" in continued.stdout
    after = checkpoint.read_class_centers(out / "checkpoint")
    assert after.shape == (len(new_labels), x.shape[1])
    # Two steps at lr 1e-12 moves no row by more than ~1e-12; another sub-centre is ~1e-2 away.
    assert_close(after.double(), torch.from_numpy(w)[rows], rtol=1e-7, atol=1e-9)
    meta = dcp.FileSystemReader(checkpoint.latest_checkpoint(out / "checkpoint")).read_metadata()
    assert "head.weight.momentum_buffer" in meta.state_dict_metadata
