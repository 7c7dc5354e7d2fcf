"""A map-style torch dataset over an insightface-layout RecordIO folder.

Items are addressed by ``(sample_index, flip)`` pairs, not by a bare index: the flip decision is
made by the sampler (:mod:`partialfc.data.loader`) from ``(seed, epoch, sample_index)`` so that
the pixels of every sample are independent of worker count, world size and resumption.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from partialfc.data.images import decode_image
from partialfc.data.layout import FaceRecord
from partialfc.data.recordio import RecordIOError

log = logging.getLogger(__name__)


class RecordDataset(Dataset):
    """Decoded images and labels of an insightface-layout dataset.

    ``dataset[i]`` or ``dataset[(i, flip)]`` returns ``(image_u8 (3, H, W), label)`` for the
    ``i``-th image (key ``image_keys[i]``), mirrored left-right when ``flip``. Normalisation to
    [-1, 1] float happens once per batch in the loader: uint8 crosses the worker boundary at a
    quarter of the bytes.

    Args:
        root: dataset folder (``train.rec``, ``train.idx``, ``property``) or a ``.rec`` path.
        skip_corrupt: return None for a corrupt record (logged with its key) instead of raising;
            the loader then drops it from its batch. Off by default: nothing is skipped silently.

    Raises:
        FileNotFoundError: a missing ``.rec``, ``.idx`` or ``property``.
    """

    def __init__(self, root: str | os.PathLike[str], skip_corrupt: bool = False) -> None:
        self.record = FaceRecord(root)
        self.skip_corrupt = skip_corrupt

    @property
    def num_classes(self) -> int:
        """Number of identities (from ``property``)."""
        return self.record.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image (from ``property``)."""
        return self.record.property.height, self.record.property.width

    def __len__(self) -> int:
        return len(self.record)

    def load(self, index: int, flip: bool = False) -> tuple[np.ndarray, int]:
        """Decodes sample ``index``: ``(HxWx3 uint8 RGB, label)``, checked against ``property``.

        Raises:
            RecordIOError: truncated or corrupt record, bad magic.
            DatasetError: label >= num_classes or an image size other than ``property``'s.
            ValueError: undecodable image bytes (the message names file and key).
        """
        key = int(self.record.image_keys[index])
        label, payload = self.record.read_image_record(key)
        try:
            image = decode_image(payload)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad bytes
            raise RecordIOError(
                f"cannot decode image ({exc})", self.record.rec_path, key,
                self.record.reader.offset(key),
            ) from exc
        self.record.check_image(key, image)
        if flip:
            image = image[:, ::-1]
        return image, label

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, int] | None:
        index, flip = item if isinstance(item, tuple) else (item, False)
        try:
            image, label = self.load(int(index), bool(flip))
        except ValueError:  # RecordIOError and DatasetError are ValueErrors
            if not self.skip_corrupt:
                raise
            log.warning("skipping corrupt sample %d", index, exc_info=True)
            return None
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label


def collate_u8(samples: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks ``(3, H, W)`` uint8 images and labels; drops None (skipped corrupt samples)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return torch.zeros(0, 0, 0, 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    images = torch.stack([s[0] for s in kept])
    labels = torch.tensor([s[1] for s in kept], dtype=torch.int64)
    return images, labels


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [-1, 1], ``(x/255 - 0.5)/0.5`` up to one rounding.

    Computed as ``(x - 127.5) * (1/127.5)`` in float32, which is bit-identical to DALI's
    ``crop_mirror_normalize`` with mean = std = 127.5 (it multiplies by the reciprocal std).
    """
    return images_u8.to(torch.float32).sub_(127.5).mul_(1.0 / 127.5)
