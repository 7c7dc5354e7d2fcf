"""Face verification accuracy by insightface's protocol (LFW, CFP-FP, AgeDB-30 ...).

Pairs are consecutive images of a set; a pair is "same" when the squared L2 distance of the two
unit embeddings is below a threshold. The threshold is chosen on 9 of 10 contiguous folds (from
0 to 4 in steps of 0.01, best accuracy, the lowest threshold on ties) and the accuracy measured on
the 10th; the reported number is the mean (and standard deviation) over the 10 folds. Each
image's embedding is the sum of the embeddings of the image and of its horizontal flip, normalised.

Beside the accuracy, as insightface's ``verification.py`` reports them: VAL@FAR=1e-3, the true
accept rate on each test fold at the threshold that gives FAR 1e-3 on its 9 training folds
(thresholds 0 to 4 in steps of 0.001, linearly interpolated between the two around the target,
0 when no threshold reaches it), with the FAR that threshold actually gives on the test folds;
and XNorm, the mean L2 norm of the raw embeddings (of the images and of their flips).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partialfc.progress import Progress

THRESHOLDS = np.arange(0.0, 4.0, 0.01)
VAL_THRESHOLDS = np.arange(0.0, 4.0, 0.001)
VAL_FAR = 1e-3


@dataclass(frozen=True)
class VerificationResult:
    """Accuracy over folds and the thresholds each fold chose; VAL@FAR and XNorm (see above)."""

    accuracy: float
    std: float
    thresholds: tuple[float, ...]
    val: float = float("nan")
    """Mean over the test folds of the TAR at the training folds' FAR=``VAL_FAR`` threshold."""
    val_std: float = float("nan")
    far: float = float("nan")
    """Mean over the test folds of the FAR those thresholds give."""
    xnorm: float = float("nan")
    """Mean L2 norm of the raw embeddings (nan when only unit embeddings were given)."""


def _accuracy(dist: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((dist < threshold) == same))


def fold_accuracy(
    emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, folds: int = 10
) -> VerificationResult:
    """Accuracy of thresholded squared distances, thresholds picked by cross-validation.

    Args:
        emb1: (P, D) unit embeddings of the first image of each pair.
        emb2: (P, D) unit embeddings of the second image.
        issame: (P,) bool.
        folds: number of contiguous folds (insightface uses 10, unshuffled).
    """
    emb1, emb2, issame = np.asarray(emb1), np.asarray(emb2), np.asarray(issame, dtype=bool)
    if not (emb1.shape == emb2.shape and emb1.shape[0] == issame.shape[0]):
        raise ValueError(f"shapes differ: {emb1.shape}, {emb2.shape}, {issame.shape}")
    if issame.shape[0] < folds:
        raise ValueError(f"need at least {folds} pairs for {folds} folds, got {issame.shape[0]}")
    dist = np.sum(np.square(emb1 - emb2), axis=1)
    pairs = np.arange(issame.shape[0])
    accuracies, chosen = [], []
    for test in np.array_split(pairs, folds):
        train = np.setdiff1d(pairs, test)
        train_acc = [_accuracy(dist[train], issame[train], t) for t in THRESHOLDS]
        best = float(THRESHOLDS[int(np.argmax(train_acc))])  # argmax: the lowest on ties
        chosen.append(best)
        accuracies.append(_accuracy(dist[test], issame[test], best))
    val, val_std, far = val_at_far(dist, issame, VAL_FAR, folds)
    return VerificationResult(
        float(np.mean(accuracies)), float(np.std(accuracies)), tuple(chosen), val, val_std, far
    )


def _far_threshold(dist: np.ndarray, issame: np.ndarray, target: float) -> float:
    """The distance threshold giving FAR ``target`` on these pairs, as insightface finds it.

    insightface interpolates thresholds against FAR with SciPy's ``interp1d(kind="slinear")``;
    with the SciPy it was written for, repeated FARs select the last threshold at the largest
    FAR <= target and the line to the next threshold. (Newer SciPy refuses repeated FARs.)
    """
    different = np.sort(dist[~issame])
    if different.size == 0:
        return 0.0
    # FAR(t) = share of different pairs with distance < t, at every candidate threshold
    far = np.searchsorted(different, VAL_THRESHOLDS, side="left") / different.size
    if far.max() < target:
        return 0.0
    j = int(np.searchsorted(far, target, side="right")) - 1  # far[0] = 0 <= target
    if j == far.size - 1:
        return float(VAL_THRESHOLDS[j])
    t0, t1 = VAL_THRESHOLDS[j], VAL_THRESHOLDS[j + 1]
    return float(t0 + (target - far[j]) * (t1 - t0) / (far[j + 1] - far[j]))


def val_at_far(
    dist: np.ndarray, issame: np.ndarray, target: float = VAL_FAR, folds: int = 10
) -> tuple[float, float, float]:
    """``(val, val_std, far)``: TAR at the FAR=``target`` threshold, cross-validated.

    Args:
        dist: (P,) squared distances of the pairs' unit embeddings.
        issame: (P,) bool.
        target: FAR the threshold is chosen for on the training folds.
        folds: contiguous folds, as for the accuracy.
    """
    pairs = np.arange(issame.shape[0])
    vals, fars = [], []
    for test in np.array_split(pairs, folds):
        train = np.setdiff1d(pairs, test)
        threshold = _far_threshold(dist[train], issame[train], target)
        accept, same = dist[test] < threshold, issame[test]
        vals.append(float(np.sum(accept & same)) / max(int(same.sum()), 1))
        fars.append(float(np.sum(accept & ~same)) / max(int((~same).sum()), 1))
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any, e.g. ONNX)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def embed_with_norms(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    flip: bool = True,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings (N, D) of ``images`` (N, 3, H, W), the flipped view added when ``flip``,
    and the raw embeddings' norms (N, V), V = 2 views with ``flip``, else 1; ``progress`` counts
    the images embedded.

    The model is put in eval mode for the pass and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    out, norms = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            views = [model(batch).float()]
            if flip:
                views.append(model(torch.flip(batch, dims=[3])).float())
            norms.append(torch.stack([v.norm(dim=1) for v in views], dim=1).cpu())
            out.append(F.normalize(sum(views), dim=1).cpu())
            if progress is not None:
                progress.update(batch.shape[0])
    finally:
        model.train(was_training)
    return torch.cat(out), torch.cat(norms)


def embed(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, flip: bool = True
) -> torch.Tensor:
    """Unit embeddings of ``images`` (N, 3, H, W), the flipped view added when ``flip``."""
    return embed_with_norms(model, images, batch_size, flip)[0]


def verify(
    model: nn.Module,
    images: torch.Tensor,
    issame: torch.Tensor,
    batch_size: int = 256,
    flip: bool = True,
    progress: Progress | None = None,
) -> VerificationResult:
    """Verification accuracy of ``model`` on a pair set: ``images`` hold the pairs consecutively
    (``progress`` counts the images embedded)."""
    if images.shape[0] != 2 * issame.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images for {issame.shape[0]} pairs (need two per pair)"
        )
    emb, norms = embed_with_norms(model, images, batch_size, flip, progress)
    emb = emb.numpy()
    result = fold_accuracy(emb[0::2], emb[1::2], issame.numpy())
    return replace(result, xnorm=float(norms.double().mean()))
