"""Face verification accuracy by insightface's protocol (LFW, CFP-FP, AgeDB-30 ...).

Pairs are consecutive images of a set; a pair is "same" when the squared L2 distance of the two
unit embeddings is below a threshold. The threshold is chosen on 9 of 10 contiguous folds (from
0 to 4 in steps of 0.01, best accuracy, the lowest threshold on ties) and the accuracy measured on
the 10th; the reported number is the mean (and standard deviation) over the 10 folds. Each
image's embedding is the sum of the embeddings of the image and of its horizontal flip, normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

THRESHOLDS = np.arange(0.0, 4.0, 0.01)


@dataclass(frozen=True)
class VerificationResult:
    """Accuracy over folds and the thresholds each fold chose."""

    accuracy: float
    std: float
    thresholds: tuple[float, ...]


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
    return VerificationResult(float(np.mean(accuracies)), float(np.std(accuracies)), tuple(chosen))


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, flip: bool = True
) -> torch.Tensor:
    """Unit embeddings of ``images`` (N, 3, H, W), the flipped view added when ``flip``.

    The model is put in eval mode for the pass and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            emb = model(batch).float()
            if flip:
                emb = emb + model(torch.flip(batch, dims=[3])).float()
            out.append(F.normalize(emb, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def verify(
    model: nn.Module,
    images: torch.Tensor,
    issame: torch.Tensor,
    batch_size: int = 256,
    flip: bool = True,
) -> VerificationResult:
    """Verification accuracy of ``model`` on a pair set: ``images`` hold the pairs consecutively."""
    if images.shape[0] != 2 * issame.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images for {issame.shape[0]} pairs (need two per pair)"
        )
    emb = embed(model, images, batch_size, flip).numpy()
    return fold_accuracy(emb[0::2], emb[1::2], issame.numpy())
