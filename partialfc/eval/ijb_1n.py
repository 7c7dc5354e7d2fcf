"""Open-set 1:N identification metrics (NIST's definitions), numpy in and out.

A *search* compares one probe template with every template of a gallery. A probe is *mated* when
its subject has a template in the gallery, *non-mated* otherwise (IJB-C's galleries G1 and G2
are disjoint, so each mixed-media probe is mated in exactly one of them). With scores higher for
more alike templates:

- **rank** of a mated search: 1 + the number of non-mated gallery templates scoring at least as
  high as the best mated one (a tie counts against the mate: a rate one can claim);
- **rank-k** (closed set, CMC): the fraction of mated searches whose rank is at most k;
- **FPIR(t)**: the fraction of non-mated searches whose top score is at least t (one or more
  candidates returned at or above the threshold: a false alarm);
- **TPIR(t)** at rank R: the fraction of mated searches whose rank is at most R and whose mate
  scores at least t (FNIR = 1 - TPIR);
- **TPIR at FPIR f**: the highest TPIR among the thresholds whose FPIR is at most f (the lowest
  such threshold), as :func:`partialfc.eval.roc.tar_at_far` does for 1:1; or ``mode="kth"``,
  the rule of the public Keras_insightface ``IJB_evals.py`` script, for its published tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

FpirMode = Literal["at_most", "kth"]
FPIR_MODES: tuple[str, ...] = ("at_most", "kth")
DEFAULT_FPIRS = (1e-2, 1e-1)
DEFAULT_RANKS = (1, 5, 10)

__all__ = [
    "DEFAULT_FPIRS",
    "DEFAULT_RANKS",
    "FPIR_MODES",
    "Searches",
    "identification",
    "rank_rates",
    "search",
    "tpir_at_fpir",
    "tpir_curve",
]


@dataclass(frozen=True)
class Searches:
    """What the metrics need of P searches against one gallery."""

    mated: np.ndarray
    """(P,) bool: the probe's subject has a template in the gallery."""
    mate_scores: np.ndarray
    """(P,) float64: the best score of the probe's own subject in the gallery; -inf if none."""
    mate_ranks: np.ndarray
    """(P,) int64: 1 + non-mated gallery templates scoring >= the mate score; 0 if non-mated."""
    top_scores: np.ndarray
    """(P,) float64: the highest score over the whole gallery."""


def search(
    probe_feats: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_subjects: np.ndarray,
    chunk: int = 4096,
) -> Searches:
    """Scores every probe against the gallery (inner products) and keeps what the metrics need.

    A subject may have several gallery templates; its best-scoring one is the mate. The score
    matrix is built ``chunk`` probes at a time (``chunk x G`` floats), never whole.

    Args:
        probe_feats: (P, D) probe template features (unit rows give cosines).
        probe_subjects: (P,) subject id of each probe.
        gallery_feats: (G, D) gallery template features.
        gallery_subjects: (G,) subject id of each gallery template.
        chunk: probes scored at once.
    """
    probe_feats, gallery_feats = np.asarray(probe_feats), np.asarray(gallery_feats)
    probe_subjects = np.asarray(probe_subjects).ravel()
    gallery_subjects = np.asarray(gallery_subjects).ravel()
    if probe_feats.ndim != 2 or probe_feats.shape[0] != probe_subjects.size:
        raise ValueError(f"probe features {probe_feats.shape} but {probe_subjects.size} subjects")
    if gallery_feats.ndim != 2 or gallery_feats.shape[0] != gallery_subjects.size:
        raise ValueError(
            f"gallery features {gallery_feats.shape} but {gallery_subjects.size} subjects"
        )
    if gallery_subjects.size == 0 or probe_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"need a non-empty gallery of the probes' width: probes {probe_feats.shape},"
            f" gallery {gallery_feats.shape}"
        )
    n = probe_subjects.size
    mate_scores, top_scores = np.full(n, -np.inf), np.empty(n)
    mate_ranks = np.zeros(n, dtype=np.int64)
    gallery_t = gallery_feats.astype(np.float64).T
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        scores = probe_feats[rows].astype(np.float64) @ gallery_t  # (c, G)
        same = probe_subjects[rows, None] == gallery_subjects[None, :]
        top_scores[rows] = scores.max(axis=1)
        mate = np.where(same, scores, -np.inf).max(axis=1)
        mate_scores[rows] = mate
        # Non-mates at or above the mate push it down: ties are counted as losses.
        beaten = (~same & (scores >= mate[:, None])).sum(axis=1)
        mate_ranks[rows] = np.where(same.any(axis=1), 1 + beaten, 0)
    if not np.isfinite(top_scores).all():
        raise ValueError("scores must be finite (features contain inf or nan)")
    return Searches(mate_ranks > 0, mate_scores, mate_ranks, top_scores)


def _mated_count(searches: Searches) -> int:
    count = int(searches.mated.sum())
    if count == 0:
        raise ValueError("no probe has a mate in the gallery: rank-k and TPIR are undefined")
    return count


def rank_rates(
    searches: Searches, ranks: tuple[int, ...] | list[int] = DEFAULT_RANKS
) -> dict[int, float]:
    """Closed-set identification rates: ``{k: fraction of mated searches with rank <= k}``."""
    bad = [k for k in ranks if int(k) < 1]
    if bad:
        raise ValueError(f"ranks must be >= 1, got {bad}")
    mated = _mated_count(searches)
    hit = searches.mate_ranks[searches.mated]
    return {int(k): float((hit <= k).sum() / mated) for k in ranks}


def _hits_and_false_alarms(searches: Searches, rank: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ascending mate scores of the searches found within ``rank``, non-mated top scores, #mated."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    mated = _mated_count(searches)
    non_mated = np.sort(searches.top_scores[~searches.mated])
    if non_mated.size == 0:
        raise ValueError("no non-mated probe: FPIR is undefined (every probe has a mate)")
    found = searches.mated & (searches.mate_ranks <= rank)
    return np.sort(searches.mate_scores[found]), non_mated, mated


def tpir_curve(searches: Searches, rank: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every point of the TPIR-against-FPIR curve: ``(fpir, tpir, thresholds)``.

    Thresholds are ``+inf`` and every distinct score that can change either rate, decreasing;
    both rates count scores at or above the threshold.
    """
    hits, non_mated, mated = _hits_and_false_alarms(searches, rank)
    thresholds = np.r_[np.inf, np.unique(np.r_[hits, non_mated])[::-1]]
    # count(x >= t) = x.size - (number of x below t) on ascending x.
    fpir = (non_mated.size - np.searchsorted(non_mated, thresholds, side="left")) / non_mated.size
    tpir = (hits.size - np.searchsorted(hits, thresholds, side="left")) / mated
    return fpir, tpir, thresholds


def tpir_at_fpir(
    searches: Searches,
    fpirs: tuple[float, ...] | list[float] = DEFAULT_FPIRS,
    rank: int = 1,
    mode: FpirMode = "at_most",
) -> dict[float, float]:
    """TPIR (at ``rank``) at each target FPIR.

    Args:
        searches: from :func:`search`.
        fpirs: target FPIRs in (0, 1].
        rank: a mated search counts only if its mate's rank is at most this.
        mode: ``"at_most"``: the highest TPIR of the thresholds whose FPIR is at most the target.
            ``"kth"``: Keras_insightface's ``evaluation_1N``: the threshold is the k-th highest
            non-mated top score, ``k = max(int(n * fpir), 1)`` of n non-mated searches, and a
            mate must score strictly above it -- at most k - 1 false alarms, one fewer than
            ``at_most`` allows when scores are distinct.

    Returns:
        ``{fpir: tpir}`` in the order of ``fpirs``.
    """
    if mode not in FPIR_MODES:
        raise ValueError(f"mode must be one of {FPIR_MODES}, got {mode!r}")
    targets = [float(f) for f in fpirs]
    bad = [f for f in targets if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"target FPIRs must lie in (0, 1], got {bad}")
    out = {}
    if mode == "at_most":
        fpir, tpir, _ = tpir_curve(searches, rank)
        for target in targets:
            # FPIR never decreases as the threshold falls: the last point within the target.
            out[target] = float(tpir[int(np.searchsorted(fpir, target, side="right")) - 1])
        return out
    hits, non_mated, mated = _hits_and_false_alarms(searches, rank)
    descending = non_mated[::-1]
    for target in targets:
        threshold = descending[max(int(non_mated.size * target) - 1, 0)]
        out[target] = float((hits > threshold).sum() / mated)
    return out


def identification(
    probe_feats: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_subjects: np.ndarray,
    fpirs: tuple[float, ...] | list[float] = DEFAULT_FPIRS,
    ranks: tuple[int, ...] | list[int] = DEFAULT_RANKS,
    mode: FpirMode = "at_most",
    tpir_rank: int = 1,
) -> dict:
    """Open-set identification of the probes against one gallery.

    Args:
        probe_feats: (P, D) probe template features.
        probe_subjects: (P,) their subjects.
        gallery_feats: (G, D) gallery template features.
        gallery_subjects: (G,) their subjects.
        fpirs: target FPIRs.
        ranks: the k of the rank-k rates.
        mode: the TPIR-at-FPIR rule, see :func:`tpir_at_fpir`.
        tpir_rank: the rank R of TPIR.

    Returns:
        The counts ``probes``, ``templates`` (of the gallery), ``mated_probes``,
        ``non_mated_probes``; ``rank`` ``{k: rate}`` (closed set, mated probes only) and
        ``tpir_at_fpir`` ``{fpir: tpir}`` (None when no probe is non-mated).
    """
    searches = search(probe_feats, probe_subjects, gallery_feats, gallery_subjects)
    mated = int(searches.mated.sum())
    return {
        "probes": int(searches.mated.size),
        "templates": int(np.asarray(gallery_subjects).size),
        "mated_probes": mated,
        "non_mated_probes": int(searches.mated.size - mated),
        "rank": rank_rates(searches, ranks),
        "tpir_at_fpir": (
            tpir_at_fpir(searches, fpirs, tpir_rank, mode) if mated < searches.mated.size else None
        ),
    }
