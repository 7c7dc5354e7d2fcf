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
from torch.utils.data import Dataset, get_worker_info

from partialfc.data.images import DECODERS, decode_image
from partialfc.data.layout import FaceRecord
from partialfc.data.recordio import RecordIOError
from partialfc.errors import UserError

log = logging.getLogger(__name__)


class RecordDataset(Dataset):
    """Decoded images and labels of an insightface-layout dataset.

    ``dataset[i]`` or ``dataset[(i, flip)]`` returns ``(image (H, W, 3) uint8, label)`` for the
    ``i``-th image (key ``image_keys[i]``), mirrored left-right when ``flip``;
    :func:`collate_u8` and :func:`normalize` turn a list of them into a float NCHW batch.

    Args:
        root: dataset folder (``train.rec``, ``train.idx``, ``property``) or a ``.rec`` path.
        skip_corrupt: return None for a corrupt record (logged with its key) instead of raising;
            the loader then drops it from its batch. Off by default: nothing is skipped silently.
        decoder: ``"auto"`` (simplejpeg for JPEG when installed, pixel-identical to Pillow) or
            ``"pillow"`` (see :func:`partialfc.data.images.decode_image`).

    Raises:
        FileNotFoundError: a missing ``.rec``, ``.idx`` or ``property``.
        ValueError: an unknown ``decoder``.
    """

    def __init__(
        self, root: str | os.PathLike[str], skip_corrupt: bool = False, decoder: str = "auto"
    ) -> None:
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.record = FaceRecord(root)
        self.skip_corrupt = skip_corrupt
        self.decoder = decoder

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
            DatasetError: label >= num_classes, a damaged JPEG, or an image size other than
                ``property``'s.
            ValueError: undecodable image bytes (the message names file and key).
        """
        key = int(self.record.image_keys[index])
        label, payload = self.record.read_image_record(key)
        self.record.check_encoded(key, payload)  # Pillow decodes most damage without an error
        try:
            image = decode_image(payload, self.decoder)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad bytes
            raise RecordIOError(
                f"cannot decode image ({exc})",
                self.record.rec_path,
                key,
                self.record.reader.offset(key),
            ) from exc
        self.record.check_image(key, image)
        if flip:
            image = image[:, ::-1]
        return image, label

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[np.ndarray, int] | None:
        """``(HxWx3 uint8 RGB, label)`` of ``item = index`` or ``(index, flip)``.

        Returns None for a corrupt record when ``skip_corrupt`` (the loader drops it).
        """
        index, flip = item if isinstance(item, tuple) else (item, False)
        try:
            return self.load(int(index), bool(flip))
        except ValueError as exc:  # RecordIOError and DatasetError are ValueErrors
            if not self.skip_corrupt:
                if isinstance(exc, UserError) and get_worker_info() is not None:
                    # DataLoader re-raises a worker's exception as a RuntimeError holding the
                    # traceback's text; returned, it reaches the loader, which raises it as is.
                    return WorkerError(exc)
                raise
            log.warning("skipping corrupt sample %d", index, exc_info=True)
            return None


class WorkerError:
    """A user error met in a DataLoader worker, carried to the main process as a batch."""

    def __init__(self, error: UserError) -> None:
        self.error = error


def collate_u8(
    samples: list[tuple[np.ndarray, int] | WorkerError | None],
) -> tuple[torch.Tensor, torch.Tensor] | WorkerError:
    """HWC uint8 samples -> ``(uint8 (N, 3, H, W), int64 (N,))``; drops None (skipped samples).

    A :class:`WorkerError` among the samples is returned instead of a batch.

    In a DataLoader worker the batch is written straight into shared memory, so handing it to
    the main process costs no further copy; uint8 is a quarter of the bytes of float32, and on
    small images that transfer, not decoding, is what limits a worker.
    """
    failed = [s for s in samples if isinstance(s, WorkerError)]
    if failed:
        return failed[0]
    kept = [s for s in samples if s is not None]
    labels = torch.tensor([s[1] for s in kept], dtype=torch.int64)
    if not kept:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8), labels
    height, width, _ = kept[0][0].shape
    batch = torch.empty((len(kept), 3, height, width), dtype=torch.uint8)
    if get_worker_info() is not None:
        batch.share_memory_()
    out = batch.numpy()
    for i, (image, _) in enumerate(kept):
        out[i] = image.transpose(2, 0, 1)
    return batch, labels


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [-1, 1]: ``(x/255 - 0.5)/0.5``, up to one rounding.

    Computed as ``(x - 127.5) * (1/127.5)`` in float32, bit-identical to DALI's
    ``crop_mirror_normalize`` with mean = std = 127.5 (it multiplies by the reciprocal std).
    On the CPU numpy does it: torch would start its intra-op thread pool in a process whose
    cores the DataLoader workers already use, and oversubscribed OpenMP regions can turn a
    millisecond into tens of them.
    """
    if images_u8.device.type != "cpu":
        return images_u8.to(torch.float32).sub_(127.5).mul_(1.0 / 127.5)
    out = images_u8.numpy().astype(np.float32)
    out -= np.float32(127.5)
    out *= np.float32(1.0 / 127.5)
    return torch.from_numpy(out)
