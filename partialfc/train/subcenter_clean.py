"""Sub-center ArcFace's data cleaning (Deng et al., ECCV 2020, section 3.2; insightface ``drop.py``).

With a run trained with K sub-centres per class, every training image is embedded by the run's
backbone (L2-normalised, no flip) and compared with the K normalised sub-centres of its own class:

* the image's closest sub-centre is the one of largest cosine (the first on a tie);
* a class's **dominant** sub-centre is the one most of its images are closest to (the first on a
  tie, as ``np.argmax``);
* an image is kept when its cosine with its class's dominant sub-centre exceeds
  ``cos(max_angle)``, strictly, as the official code's ``sim > cos_thresh``;
* a class left without images is dropped and the remaining classes are renumbered 0, 1, ... in
  their old order (the official code increments its label only for classes it writes).

The output folder holds the kept images as a new insightface dataset (``train.rec``, ``train.idx``,
``property``; images grouped by class in class order, each record's encoded bytes copied as they
are) and ``checkpoint/step-00000000``: the run's backbone, each kept class's dominant sub-centre
(the trained row, not normalised) as a K = 1 head with those rows' optimizer state, and a
``config.json`` with ``data.root`` = the folder, ``head.sub_centers = 1`` and ``train.output_dir``
= that checkpoint folder, so a run with those settings resumes from it.

Only (N, K) cosines are kept while embedding, never the (N, D) features.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from partialfc import checkpoint
from partialfc.data.dataset import RecordDataset, collate_u8, normalize
from partialfc.data.layout import Property, write_dataset
from partialfc.errors import UserError, UserFileError
from partialfc.train.config import Config

CHECKPOINT_DIR = "checkpoint"


class CleanError(UserError, ValueError):
    """The run, the dataset or the output folder cannot be used for cleaning."""


@dataclass
class CleanResult:
    """What :func:`subcenter_clean` found and wrote."""

    out: Path
    sub_centers: int
    max_angle: float
    num_classes: int
    num_images: int
    kept_images: int
    dropped_far: int
    """Images whose angle to their class's dominant sub-centre is at least ``max_angle``."""
    classes_without_images: int
    """Classes the dataset has no image of (dropped)."""
    classes_emptied: int
    """Classes with images, every one of them dropped (the class is dropped)."""
    dominant: np.ndarray = field(repr=False)
    """(C,) each class's dominant sub-centre (0 for a class without images)."""
    cosines: np.ndarray = field(repr=False)
    """(N,) each image's cosine with its class's dominant sub-centre, in dataset order."""
    new_label: np.ndarray = field(repr=False)
    """(C,) each old class's label in the new dataset, -1 where dropped."""

    @property
    def kept_classes(self) -> int:
        return int((self.new_label >= 0).sum())

    def format(self) -> str:
        """The summary ``partialfc subcenter-clean`` prints."""
        lines = [
            f"sub-centre cleaning (K = {self.sub_centers}, max angle {self.max_angle:g} degrees)",
            f"  classes: {self.num_classes} -> {self.kept_classes} kept",
            f"  images:  {self.num_images} -> {self.kept_images} kept, "
            f"{self.num_images - self.kept_images} dropped",
            "  dropped, by reason:",
            f"    {self.dropped_far} images at {self.max_angle:g} degrees or more from their "
            "class's dominant sub-centre",
            f"    {self.classes_emptied} classes left without images (all theirs too far)",
            f"    {self.classes_without_images} classes with no image in the dataset",
            "  dominant sub-centre per class: "
            + ", ".join(
                f"{k}: {int(n)}"
                for k, n in enumerate(np.bincount(self.dominant, minlength=self.sub_centers))
            ),
            f"  wrote {self.out} (dataset) and {self.out / CHECKPOINT_DIR} (K = 1 checkpoint)",
        ]
        return "\n".join(lines)


def subcenter_clean(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    max_angle: float = 75.0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> CleanResult:
    """Clean ``data`` with the sub-centres of the run at ``run``; write the result to ``out``.

    Args:
        run: a run's ``output_dir`` (its newest complete checkpoint) or a checkpoint folder.
        data: the insightface dataset the run trained on (its classes are the head's).
        out: a new or empty folder.
        max_angle: degrees; images at this angle or more from the dominant sub-centre are dropped.
        batch_size: images embedded at once.
        device: where the backbone runs.

    Raises:
        CleanError: a bad ``max_angle``, a class count that is not the run's, a non-empty ``out``.
        UserFileError: no checkpoint at ``run``, no dataset at ``data``.
    """
    if not 0.0 < max_angle <= 180.0:
        raise CleanError(f"--max-angle must be in (0, 180] degrees, got {max_angle:g}")
    with warnings.catch_warnings():
        # One process reads and writes the checkpoints: DCP's single-process notice is not news.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        return _clean(run, data, Path(out), max_angle, batch_size, device)


def _clean(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: Path,
    max_angle: float,
    batch_size: int,
    device: torch.device | str,
) -> CleanResult:
    if out.exists() and any(out.iterdir()):
        raise CleanError(f"{out} is not empty; name a new folder for the cleaned dataset")
    ckpt, model, cfg = _load_run(run)
    k = cfg.head.sub_centers
    centres = checkpoint.read_class_centers(ckpt)  # (C*K, D) class-major
    if centres.shape[0] % k:
        raise CleanError(f"{ckpt}: {centres.shape[0]} centre rows are not a multiple of K = {k}")
    num_classes = centres.shape[0] // k
    dataset = RecordDataset(data)
    if dataset.num_classes != num_classes:
        raise CleanError(
            f"{dataset.record.property_path} has {dataset.num_classes} classes but the run at "
            f"{ckpt} trained {num_classes} (its head has {centres.shape[0]} rows, K = {k})"
        )
    labels = dataset.record.labels()  # (N,)
    unit = F.normalize(centres.double(), dim=1).view(num_classes, k, -1)
    sims = _own_class_cosines(model.to(device), dataset, labels, unit, batch_size, device)

    closest = sims.argmax(1)  # (N,)
    votes = np.zeros((num_classes, k), dtype=np.int64)
    np.add.at(votes, (labels, closest), 1)
    dominant = votes.argmax(1)  # (C,); 0 where a class has no image
    cosines = sims[np.arange(len(labels)), dominant[labels]]
    keep = cosines > math.cos(math.radians(max_angle))
    has_images = votes.sum(1) > 0
    kept_per_class = np.bincount(labels[keep], minlength=num_classes)
    new_label = np.full(num_classes, -1, dtype=np.int64)
    survivors = np.flatnonzero(kept_per_class > 0)
    new_label[survivors] = np.arange(len(survivors))
    if not len(survivors):
        raise CleanError(
            f"no image is within {max_angle:g} degrees of its dominant sub-centre: nothing to write"
        )

    _write_dataset(out, dataset, labels, keep, new_label)
    rows = torch.from_numpy(survivors * k + dominant[survivors])  # global rows of the old head
    _write_checkpoint(out, ckpt, cfg, rows)
    dataset.record.close()
    return CleanResult(
        out=out,
        sub_centers=k,
        max_angle=float(max_angle),
        num_classes=num_classes,
        num_images=len(labels),
        kept_images=int(keep.sum()),
        dropped_far=int((~keep).sum()),
        classes_without_images=int((~has_images).sum()),
        classes_emptied=int((has_images & (kept_per_class == 0)).sum()),
        dominant=dominant,
        cosines=cosines,
        new_label=new_label,
    )


def _load_run(run: str | os.PathLike[str]) -> tuple[Path, nn.Module, Config]:
    try:
        ckpt = checkpoint.resolve(run)
    except FileNotFoundError as err:
        raise UserFileError(f"RUN: {err}") from None
    model, saved = checkpoint.load_backbone(ckpt)  # the checkpoint's backbone and config.json
    return ckpt, model, Config.from_saved(saved.config)


@torch.no_grad()
def _own_class_cosines(
    model: nn.Module,
    dataset: RecordDataset,
    labels: np.ndarray,
    unit: torch.Tensor,
    batch_size: int,
    device: torch.device | str,
) -> np.ndarray:
    """(N, K) cosines of each image's normalised embedding with its own class's K unit
    sub-centres ``unit`` (C, K, D), in float64."""
    out = np.empty((len(labels), unit.shape[1]), dtype=np.float64)
    for lo, hi in _batches(len(labels), batch_size):
        images, _ = collate_u8([dataset.load(i) for i in range(lo, hi)])
        x = model(normalize(images).to(device)).double().cpu()
        x = F.normalize(x, dim=1)  # (b, D)
        own = unit[torch.from_numpy(labels[lo:hi])]  # (b, K, D)
        out[lo:hi] = torch.einsum("bd,bkd->bk", x, own).numpy()
    return out


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def _write_dataset(
    out: Path, dataset: RecordDataset, labels: np.ndarray, keep: np.ndarray, new_label: np.ndarray
) -> None:
    """The kept images, grouped by new class (a stable sort keeps each class's old order)."""
    order = np.flatnonzero(keep)
    order = order[np.argsort(new_label[labels[order]], kind="stable")]
    record = dataset.record
    keys = record.image_keys

    def payloads() -> Iterator[bytes]:
        for i in order.tolist():
            yield record.read_image_record(int(keys[i]))[1]  # the encoded bytes, as stored

    prop = record.property
    kept_classes = int((new_label >= 0).sum())
    write_dataset(
        out,
        payloads(),
        new_label[labels[order]].tolist(),
        Property(kept_classes, prop.height, prop.width),
    )


def _write_checkpoint(out: Path, ckpt: Path, cfg: Config, rows: torch.Tensor) -> None:
    """``out/checkpoint/step-00000000``: the backbone, the dominant rows as a K = 1 head (and the
    same rows of every per-row optimizer state), head step 0, and the continuing config."""
    meta = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
    wanted = {
        name: m
        for name, m in meta.items()
        if isinstance(m, TensorStorageMetadata)
        and (name.startswith("model.") or name == "head.weight" or name.startswith("head.weight."))
    }
    flat = {
        name: torch.empty(tuple(m.size), dtype=m.properties.dtype) for name, m in wanted.items()
    }
    model = {n.removeprefix("model."): t for n, t in flat.items() if n.startswith("model.")}
    head = {n: t for n, t in flat.items() if not n.startswith("model.")}
    with checkpoint.quiet_sharded_tensor():
        dcp.load({"model": model, **head}, checkpoint_id=ckpt, no_dist=True)
    total = meta["head.weight"].size[0]
    state: dict[str, Any] = {"model": model, "head.step": 0, "head.margin": {}}
    for name, value in head.items():  # the weight, its momentum or AdamW moments: their rows
        per_row = value.dim() >= 1 and value.shape[0] == total
        state[name] = value.index_select(0, rows).clone() if per_row else value
    cont = _continuing_config(cfg, out)
    files = {"config.json": json.dumps(cont.to_dict(), indent=2).encode()}
    checkpoint.save(state, out / CHECKPOINT_DIR, step=0, files=files)


def _continuing_config(cfg: Config, out: Path) -> Config:
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=str(out)),
        head=dataclasses.replace(cfg.head, sub_centers=1),
        train=dataclasses.replace(cfg.train, output_dir=str(out / CHECKPOINT_DIR)),
    )
