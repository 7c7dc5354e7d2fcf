"""ROC points of similarity scores and TAR at given FARs (numpy only).

A pair is accepted when its score is at least the threshold. Every distinct score is a
threshold; above the highest one nothing is accepted (FAR = TAR = 0), so the curve always starts
at the origin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

FarMode = Literal["at_most", "nearest"]
FAR_MODES: tuple[str, ...] = ("at_most", "nearest")
DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false, true) accepts at each distinct score, from the highest score down."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores but {labels.shape[0]} labels")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 (different) or 1 (same)")
    positive = labels.astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("a ROC needs both same (1) and different (0) pairs")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # the last pair of each run of equal scores: accepting that score accepts the whole run
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(positive)[last]
    fps = (last + 1) - tps
    return fps, tps, scores[last]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ROC point: ``(far, tar, thresholds)``, thresholds decreasing from ``+inf``.

    Args:
        scores: (P,) similarity of each pair, higher is more alike.
        labels: (P,) 1 for a same-identity pair, 0 otherwise.
    """
    fps, tps, thresholds = _counts(scores, labels)
    far = np.r_[0.0, fps / fps[-1]]
    tar = np.r_[0.0, tps / tps[-1]]
    return far, tar, np.r_[np.inf, thresholds]


def _sklearn_points(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn's roc_curve(drop_intermediate=True), which insightface's scripts call: a point
    # whose neighbours lie on one straight line through it with equal steps is dropped.
    if fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def tar_at_far(
    scores: np.ndarray,
    labels: np.ndarray,
    fars: tuple[float, ...] | list[float] | np.ndarray = DEFAULT_FARS,
    mode: FarMode = "at_most",
) -> dict[float, float]:
    """TAR (true accept rate) at each target FAR (false accept rate).

    Args:
        scores: (P,) similarity of each pair.
        labels: (P,) 1 same, 0 different.
        fars: target FARs in (0, 1].
        mode: ``"at_most"``: the highest TAR of the thresholds whose FAR is at most the target
            (the lowest such threshold), a rate one can claim. ``"nearest"``: insightface's
            ``eval_ijbc.py`` rule, the TAR of the ROC point (scikit-learn's, intermediate points
            dropped) whose FAR is nearest the target, the last such point on ties -- its FAR may
            lie above the target.

    Returns:
        ``{far: tar}`` in the order of ``fars``.
    """
    if mode not in FAR_MODES:
        raise ValueError(f"mode must be one of {FAR_MODES}, got {mode!r}")
    targets = [float(f) for f in fars]
    bad = [f for f in targets if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"target FARs must lie in (0, 1], got {bad}")
    fps, tps, _ = _counts(scores, labels)
    out = {}
    if mode == "at_most":
        far, tar = np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
        for target in targets:
            # FAR never decreases as the threshold falls: the last point within the target.
            index = int(np.searchsorted(far, target, side="right")) - 1
            out[target] = float(tar[index])
    else:
        far, tar = _sklearn_points(fps, tps)
        for target in targets:
            distance = np.abs(far - target)
            # insightface scans the flipped curve and keeps the first minimum: the last point here
            index = far.size - 1 - int(np.argmin(distance[::-1]))
            out[target] = float(tar[index])
    return out


def auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under a ROC curve given by its points (trapezoids)."""
    far, tar = np.asarray(far, dtype=np.float64), np.asarray(tar, dtype=np.float64)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))
