"""Embedding an IJB protocol's images and scoring its template pairs.

Images are decoded and aligned (five-point similarity onto the ArcFace crop) in DataLoader
workers, embedded in batches with their mirror images, and kept raw, (N, 2, D), so that every
feature option can be re-scored from ``features.npy`` without embedding again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from partialfc.data.align import norm_crop
from partialfc.errors import UserFileError
from partialfc.eval.ijb import IMAGE_DIR, IJBMeta, image_features, pair_scores, template_features
from partialfc.eval.roc import DEFAULT_FARS, FAR_MODES, FarMode, auc, roc_curve, tar_at_far
from partialfc.eval.verification import model_device

FEATURES_FILE = "features.npy"
FEATURES_KEY_FILE = "features.json"


class AlignedFaces(Dataset):
    """The aligned 112x112 crops (3, 112, 112) uint8 RGB of some of a protocol's images."""

    def __init__(self, image_dir: Path, names: list[str], landmarks: np.ndarray) -> None:
        self.image_dir, self.names, self.landmarks = image_dir, names, landmarks

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.image_dir / self.names[i]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise UserFileError(f"{path}: cannot read image ({exc})") from None
        crop = norm_crop(pixels, self.landmarks[i])
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))


@torch.no_grad()
def embed_faces(
    model: nn.Module,
    image_dir: Path,
    names: list[str],
    landmarks: np.ndarray,
    batch_size: int = 128,
    workers: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Raw embeddings (N, 2, D) float32 of the aligned images and of their mirror images."""
    from partialfc.data.dataset import normalize
    from partialfc.progress import Progress

    device = model_device(model)
    loader = DataLoader(
        AlignedFaces(image_dir, names, landmarks),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    with Progress(len(names), "embed", "img", progress) as bar:
        for batch in loader:
            x = normalize(batch).to(device, non_blocking=True)
            views = (model(x).float(), model(torch.flip(x, dims=[3])).float())
            out.append(torch.stack(views, dim=1).cpu().numpy())
            bar.update(batch.shape[0])
    if not out:
        raise ValueError("no images to embed")
    return np.concatenate(out)


def features_key(model_key: str, root: Path, target: str, names: list[str]) -> dict:
    """What a cached ``features.npy`` was computed from; a cache is reused only on a match."""
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {
        "model": model_key,
        "root": str(root.resolve()),
        "target": target,
        "images": len(names),
        "names_sha256": digest,
        "layout": "N x (image, mirror) x D raw embeddings, aligned 112x112",
    }


def cached_features(out_dir: Path, key: dict) -> np.ndarray | None:
    """The cached raw embeddings in ``out_dir`` if they were made from ``key``, else None."""
    try:
        if json.loads((out_dir / FEATURES_KEY_FILE).read_text()) != key:
            return None
        feats = np.load(out_dir / FEATURES_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return feats if feats.shape[0] == key["images"] else None


def save_features(out_dir: Path, key: dict, feats: np.ndarray) -> None:
    np.save(out_dir / FEATURES_FILE, feats)
    (out_dir / FEATURES_KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")


def embed_protocol(
    model: nn.Module,
    root: Path,
    meta: IJBMeta,
    batch_size: int,
    workers: int,
    progress: bool,
    rank: int = 0,
    world: int = 1,
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Raw embeddings of every image; under ``world`` ranks each embeds a contiguous slice.

    Args:
        gather: with ``world > 1``, joins the ranks' slices in rank order (every rank calls it).
    """
    n = len(meta.names)
    start, stop = rank * n // world, (rank + 1) * n // world
    mine = embed_faces(
        model,
        root / IMAGE_DIR,
        meta.names[start:stop],
        meta.landmarks[start:stop],
        batch_size,
        workers,
        progress and rank == 0,
    )
    if world == 1:
        return mine
    assert gather is not None, "several ranks need a gather"
    return gather(mine)


@dataclass(frozen=True)
class ScoreOptions:
    """insightface's feature switches (its defaults) and the TAR@FAR rule."""

    flip: bool = True
    """Add the mirror image's embedding."""
    norm: bool = True
    """Keep each image feature's norm as a quality weight (else unit features)."""
    detector_score: bool = True
    """Multiply each image feature by its detector faceness score."""
    far_mode: FarMode = "at_most"
    """``at_most`` or ``nearest`` (insightface's rule); see :func:`tar_at_far`."""
    fars: tuple[float, ...] = DEFAULT_FARS
    """Target FARs."""


def score_protocol(
    meta: IJBMeta, raw: np.ndarray, options: ScoreOptions
) -> tuple[dict, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(result, scores, (far, tar))`` of a protocol's pairs from the raw embeddings."""
    feats = image_features(
        raw, meta.det_scores if options.detector_score else None, options.flip, options.norm
    )
    unique, template_feats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(template_feats, unique, meta.t1, meta.t2)
    far, tar, _ = roc_curve(scores, meta.labels)
    by_mode = {mode: tar_at_far(scores, meta.labels, options.fars, mode) for mode in FAR_MODES}
    result = {
        "images": len(meta.names),
        "templates": int(unique.size),
        "pairs": int(scores.size),
        "same_pairs": int(meta.labels.sum()),
        "far_mode": options.far_mode,
        "tar_at_far": {f"{f:g}": t for f, t in by_mode[options.far_mode].items()},
        "tar_at_far_by_mode": {m: {f"{f:g}": t for f, t in v.items()} for m, v in by_mode.items()},
        "auc": auc(far, tar),
        "options": {
            "flip": options.flip,
            "norm": options.norm,
            "detector_score": options.detector_score,
        },
    }
    return result, scores, (far, tar)


def table(target: str, result: dict) -> str:
    """The stdout table: TAR (%) at each FAR, insightface's layout."""
    fars = list(result["tar_at_far"])
    head = f"{'FAR':<10}" + "".join(f"{f:>9}" for f in fars)
    row = f"{'TAR (%)':<10}" + "".join(f"{100 * t:>9.2f}" for t in result["tar_at_far"].values())
    title = (
        f"{target} 1:1 verification: {result['pairs']} pairs of {result['templates']} templates"
        f" ({result['images']} images), TAR at FAR ({result['far_mode']})"
    )
    return "\n".join([title, head, row])
