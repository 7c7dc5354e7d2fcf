"""IJB scoring: hand-computed ROC cases, template features against a direct loop, metadata checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partialfc.errors import UserFileError
from partialfc.eval.ijb import (
    IJBError,
    image_features,
    pair_scores,
    read_meta,
    roc_curve,
    tar_at_far,
    template_features,
)

# Ten different pairs (FAR steps of 0.1) and four same pairs (TAR steps of 0.25).
_POS = [0.95, 0.85, 0.75, 0.30]
_NEG = [0.90, 0.80, 0.70, 0.65, 0.60, 0.55, 0.50, 0.45, 0.20, 0.10]
SCORES = np.array(_POS + _NEG)
LABELS = np.array([1] * 4 + [0] * 10)


def test_roc_points_by_hand() -> None:
    far, tar, thresholds = roc_curve(SCORES, LABELS)
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)
    expected_far = [0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.9, 1.0]
    expected_tar = [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 1, 1, 1]
    np.testing.assert_allclose(far, expected_far)
    np.testing.assert_allclose(tar, expected_tar)


def test_at_most_and_nearest_by_hand() -> None:
    fars = [0.04, 0.18, 0.6]
    # at_most: the last point with FAR <= target: (0, .25), (.1, .5), (.6, .75).
    assert tar_at_far(SCORES, LABELS, fars) == {0.04: 0.25, 0.18: 0.5, 0.6: 0.75}
    # nearest: scikit-learn drops the collinear points at FAR .3 ... .7 and .9, so the points
    # left are at FAR 0, .1, .2, .8, 1. 0.18 is nearest .2, where the last point has TAR .75
    # (above the target FAR: an optimistic number); 0.6 is nearest .8, TAR 1.
    assert tar_at_far(SCORES, LABELS, fars, mode="nearest") == {0.04: 0.25, 0.18: 0.75, 0.6: 1.0}


def test_tied_scores_are_accepted_together() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0])
    far, tar, _ = roc_curve(scores, labels)
    np.testing.assert_allclose(far, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 0.5, 1, 1])
    # Threshold 0.5 accepts the different pair too: at FAR <= 0.25 only 0.9 is available.
    assert tar_at_far(scores, labels, [0.25, 0.5]) == {0.25: 0.5, 0.5: 1.0}


@pytest.mark.parametrize("seed", range(3))
def test_at_most_against_every_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounded: many ties
    fars = [0.001, 0.01, 0.05, 0.1, 0.3, 1.0]
    got = tar_at_far(scores, labels, fars)
    for target in fars:
        best = 0.0
        for t in np.r_[np.unique(scores), np.inf]:
            accepted = scores >= t
            if accepted[labels == 0].mean() <= target:
                best = max(best, accepted[labels == 1].mean())
        assert got[target] == pytest.approx(best)


def test_roc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="both"):
        tar_at_far(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"0 \(different\) or 1"):
        tar_at_far(np.ones(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        tar_at_far(SCORES, LABELS, [0.0])
    with pytest.raises(ValueError, match="mode"):
        tar_at_far(SCORES, LABELS, mode="closest")  # type: ignore[arg-type]


def _direct_templates(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> dict:
    out = {}
    for t in np.unique(templates):
        rows = templates == t
        total = sum(feats[rows & (medias == m)].mean(axis=0) for m in np.unique(medias[rows]))
        out[int(t)] = total / np.linalg.norm(total)
    return out


def test_template_features_against_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    n = 300
    templates = rng.choice([3, 7, 11, 40, 41, 100, 1000, 5], n)
    medias = rng.integers(0, 6, n)  # media ids repeat across templates, as in IJB
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    unique, got = template_features(feats, templates, medias)
    expected = _direct_templates(feats.astype(np.float64), templates, medias)
    assert unique.tolist() == sorted(expected)
    for t, row in zip(unique, got, strict=True):
        np.testing.assert_allclose(row, expected[int(t)], atol=1e-6)
    # Each media counts once, whatever its number of images: a photo and a 3-frame video weigh
    # equally (a plain mean over images would give (1, 3)/sqrt(10)).
    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    _, one = template_features(f, np.zeros(4, int), np.array([0, 1, 1, 1]))
    np.testing.assert_allclose(one[0], [2**-0.5, 2**-0.5])


def test_pair_scores_are_cosines_of_the_templates() -> None:
    rng = np.random.default_rng(1)
    templates = np.repeat([10, 20, 30, 40], 5)
    medias = np.arange(20)
    feats = rng.normal(size=(20, 6))
    unique, tf = template_features(feats, templates, medias)
    direct = _direct_templates(feats, templates, medias)
    t1, t2 = np.array([10, 10, 40, 30]), np.array([20, 10, 30, 20])
    got = pair_scores(tf, unique, t1, t2, chunk=3)
    expected = [direct[a] @ direct[b] for a, b in zip(t1, t2, strict=True)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[50\]"):
        pair_scores(tf, unique, np.array([10]), np.array([50]))


def test_image_features_switches() -> None:
    raw = np.array([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # (2 images, 2 views, D=2)
    det = np.array([0.5, 2.0])
    np.testing.assert_allclose(image_features(raw, det), [[2.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(image_features(raw, None, flip=False), [[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(image_features(raw, det, norm=False), [[0.5, 0.0], [0.0, 2.0]])


def _write_meta(root: Path, faces: str, pairs: str, landmarks: str) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text(faces)
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(pairs)
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text(landmarks)


_LMK = " ".join(["1.5"] * 10)


def test_read_meta(tmp_path: Path) -> None:
    _write_meta(
        tmp_path,
        "1.jpg 1 7\n2.jpg 2 8\n",
        "1 2 0\n1 1 1\n",
        f"1.jpg {_LMK} 0.9\n2.jpg {_LMK} 0.8\n",
    )
    meta = read_meta(tmp_path, "IJBC")
    assert meta.names == ["1.jpg", "2.jpg"]
    assert meta.templates.tolist() == [1, 2] and meta.medias.tolist() == [7, 8]
    assert meta.landmarks.shape == (2, 5, 2) and meta.det_scores.tolist() == pytest.approx(
        [0.9, 0.8]
    )
    assert meta.t1.tolist() == [1, 1] and meta.labels.tolist() == [0, 1]
    with pytest.raises(UserFileError, match=r"ijbb_face_tid_mid\.txt"):
        read_meta(tmp_path, "IJBB")


def test_read_meta_names_inconsistencies(tmp_path: Path) -> None:
    _write_meta(
        tmp_path, "1.jpg 1 7\n2.jpg 2 8\n", "1 2 0\n", f"1.jpg {_LMK} 0.9\n3.jpg {_LMK} 0.8\n"
    )
    with pytest.raises(IJBError, match=r"line 2 names '2\.jpg' in one and '3\.jpg'"):
        read_meta(tmp_path, "IJBC")
    _write_meta(tmp_path, "1.jpg 1 7\n", "1 9 0\n", f"1.jpg {_LMK} 0.9\n")
    with pytest.raises(IJBError, match=r"templates have no image.*\[9\]"):
        read_meta(tmp_path, "IJBC")
    _write_meta(tmp_path, "1.jpg 1 7\n", "1 1\n", f"1.jpg {_LMK} 0.9\n")
    with pytest.raises(IJBError, match="template1 template2 label"):
        read_meta(tmp_path, "IJBC")
