"""1:N identification metrics: hand-made cases with known answers and a brute-force re-derivation."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc.eval.ijb_1n import (
    identification,
    rank_rates,
    search,
    tpir_at_fpir,
    tpir_curve,
)


def _searches_from_scores(scores: np.ndarray, probe_subjects, gallery_subjects):
    """``search`` on features whose inner products are exactly ``scores`` (P, G)."""
    # Probe rows are the score rows; the gallery is the identity: probe @ I.T == scores.
    g = scores.shape[1]
    return search(scores, np.array(probe_subjects), np.eye(g), np.array(gallery_subjects))


# Gallery subjects 10, 20, 30. Probes 0-3 are mated, probes 4-6 (subjects 40, 50, 60) are not.
SCORES = np.array(
    [
        [0.90, 0.20, 0.10],  # subject 10: rank 1, mate 0.90
        [0.60, 0.50, 0.40],  # subject 20: mate 0.50 under 0.60, rank 2
        [0.30, 0.30, 0.30],  # subject 30: ties with both non-mates, rank 3 (ties count against)
        [0.10, 0.70, 0.20],  # subject 20: rank 1, mate 0.70
        [0.80, 0.10, 0.00],  # subject 40 (non-mated): top 0.80
        [0.20, 0.40, 0.00],  # subject 50: top 0.40
        [0.00, 0.10, 0.05],  # subject 60: top 0.10
    ]
)
PROBES = [10, 20, 30, 20, 40, 50, 60]
GALLERY = [10, 20, 30]


def test_search_by_hand() -> None:
    s = _searches_from_scores(SCORES, PROBES, GALLERY)
    assert s.mated.tolist() == [True] * 4 + [False] * 3
    assert s.mate_ranks.tolist() == [1, 2, 3, 1, 0, 0, 0]
    np.testing.assert_allclose(s.mate_scores[:4], [0.9, 0.5, 0.3, 0.7])
    assert np.isneginf(s.mate_scores[4:]).all()
    np.testing.assert_allclose(s.top_scores, [0.9, 0.6, 0.3, 0.7, 0.8, 0.4, 0.1])


def test_rank_rates_by_hand() -> None:
    s = _searches_from_scores(SCORES, PROBES, GALLERY)
    # ranks of the four mated probes: 1, 2, 3, 1; non-mated probes do not count.
    assert rank_rates(s, [1, 2, 3, 5]) == {1: 0.5, 2: 0.75, 3: 1.0, 5: 1.0}


def test_tpir_at_fpir_by_hand() -> None:
    s = _searches_from_scores(SCORES, PROBES, GALLERY)
    # Rank-1 hits: mate scores 0.9 and 0.7 of 4 mated. Non-mated tops 0.8, 0.4, 0.1 (n = 3).
    fpir, tpir, thresholds = tpir_curve(s)
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.4, 0.1])
    np.testing.assert_allclose(fpir, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpir, [0, 0.25, 0.25, 0.5, 0.5, 0.5])
    # FPIR <= 0.2 forbids accepting 0.8: only the 0.9 hit. <= 0.5 lets one false alarm (0.8) in.
    assert tpir_at_fpir(s, [0.2, 0.5, 1.0]) == {0.2: 0.25, 0.5: 0.5, 1.0: 0.5}
    # Rank 2 also finds probe 1 (mate 0.5, second candidate), above the 0.4 false alarm.
    assert tpir_at_fpir(s, [0.2, 0.5], rank=2) == {0.2: 0.25, 0.5: 0.75}
    # Keras_insightface's rule: threshold the k-th highest non-mated top, k = max(int(3 f), 1),
    # mates strictly above: f = 0.5 gives k = 1, threshold 0.8, no false alarm (at_most: one).
    assert tpir_at_fpir(s, [0.5, 0.7], mode="kth") == {0.5: 0.25, 0.7: 0.5}
    assert tpir_at_fpir(s, [1.0], mode="kth") == {1.0: 0.5}


def test_a_probe_mated_in_the_other_gallery_is_a_non_mated_search() -> None:
    # Two disjoint galleries, as IJB-C's G1 and G2: every probe is mated in exactly one.
    rng = np.random.default_rng(0)
    subjects = np.arange(6)
    centres = rng.normal(size=(6, 16))
    probes = np.repeat(subjects, 3)
    probe_feats = centres[probes] + 0.1 * rng.normal(size=(18, 16))
    g1, g2 = subjects[:3], subjects[3:]
    r1 = identification(probe_feats, probes, centres[g1], g1, fpirs=[0.1], ranks=[1])
    r2 = identification(probe_feats, probes, centres[g2], g2, fpirs=[0.1], ranks=[1])
    for r in (r1, r2):
        assert (r["probes"], r["templates"], r["mated_probes"], r["non_mated_probes"]) == (
            18,
            3,
            9,
            9,
        )
    assert r1["rank"] == {1: 1.0} and r2["rank"] == {1: 1.0}
    closed = identification(probe_feats, probes, centres, subjects)
    assert closed["non_mated_probes"] == 0 and closed["tpir_at_fpir"] is None


def test_the_best_of_several_mated_templates_is_the_mate() -> None:
    scores = np.array([[0.2, 0.9, 0.5, 0.95], [0.3, 0.1, 0.8, 0.4]])
    s = _searches_from_scores(scores, [1, 1], [1, 1, 2, 3])
    np.testing.assert_allclose(s.mate_scores, [0.9, 0.3])
    assert s.mate_ranks.tolist() == [2, 3]  # only the other subjects' templates count


def test_undefined_rates_raise() -> None:
    s = _searches_from_scores(SCORES[4:], PROBES[4:], GALLERY)
    with pytest.raises(ValueError, match="no probe has a mate"):
        rank_rates(s)
    s = _searches_from_scores(SCORES[:4], PROBES[:4], GALLERY)
    with pytest.raises(ValueError, match="no non-mated probe"):
        tpir_at_fpir(s)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        tpir_at_fpir(_searches_from_scores(SCORES, PROBES, GALLERY), [0.0])


def _brute_force(scores, probes, gallery, fpirs, rank):
    """Every threshold tried, NIST's definitions applied one search at a time."""
    probes, gallery = np.asarray(probes), np.asarray(gallery)
    mated = np.isin(probes, gallery)
    ranks = []
    for row, subject in zip(scores[mated], probes[mated], strict=True):
        mate = row[gallery == subject].max()
        ranks.append(1 + sum(v >= mate for v, g in zip(row, gallery, strict=True) if g != subject))
    ranks = np.array(ranks)
    out = {}
    for target in fpirs:
        best = 0.0
        for t in np.r_[scores.ravel(), np.inf]:
            false_alarms = np.mean([row.max() >= t for row in scores[~mated]])
            if false_alarms <= target:
                found = [
                    r <= rank and row[gallery == s].max() >= t
                    for r, row, s in zip(ranks, scores[mated], probes[mated], strict=True)
                ]
                best = max(best, float(np.mean(found)))
        out[target] = best
    cmc = {k: float(np.mean(ranks <= k)) for k in (1, 2, 5)}
    return out, cmc


@pytest.mark.parametrize("seed", range(4))
def test_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gallery = rng.permutation(12)[:6].repeat(rng.integers(1, 3, 6))  # some subjects twice
    probes = rng.integers(0, 12, 40)
    # Scores rounded to one decimal: many ties, between mates and non-mates alike.
    scores = np.round(rng.uniform(0, 1, (40, gallery.size)), 1)
    scores[probes[:, None] == gallery[None, :]] += 0.3
    fpirs = [0.05, 0.1, 0.25, 0.5, 1.0]
    for rank in (1, 3):
        expected, cmc = _brute_force(scores, probes, gallery, fpirs, rank)
        s = _searches_from_scores(scores, probes, gallery)
        assert tpir_at_fpir(s, fpirs, rank) == pytest.approx(expected)
    assert rank_rates(s, [1, 2, 5]) == pytest.approx(cmc)


def test_search_chunks_agree_with_one_pass() -> None:
    rng = np.random.default_rng(1)
    probe_feats, gallery_feats = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    probes, gallery = rng.integers(0, 10, 50), np.arange(7)
    whole = search(probe_feats, probes, gallery_feats, gallery)
    parts = search(probe_feats, probes, gallery_feats, gallery, chunk=7)
    np.testing.assert_array_equal(whole.mated, parts.mated)
    np.testing.assert_array_equal(whole.mate_ranks, parts.mate_ranks)
    # BLAS may sum a product in another order for another block shape: an ulp, no more.
    np.testing.assert_allclose(whole.mate_scores, parts.mate_scores, rtol=1e-12)
    np.testing.assert_allclose(whole.top_scores, parts.top_scores, rtol=1e-12)
