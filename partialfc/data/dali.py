"""DALI loader for insightface-layout RecordIO: ``fn.readers.mxnet`` sharded by rank.

Same output contract as :class:`partialfc.data.RecordLoader`: ``(images, labels)`` with images
float32 NCHW in [-1, 1] and labels int64, the same number of batches on every rank. DALI decodes
on the GPU (``mixed``) when CUDA is available and on the CPU otherwise. DALI is imported only
here, on first use (the ``dali`` extra).

Differences from the torch loader, by DALI's design: the order is the reader's (a shuffle buffer
of ``initial_fill`` samples over the stored order, which ``pack`` shuffles), not the global
permutation; flips come from DALI's seeded generator; there is no mid-epoch ``state_dict``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from partialfc.data.layout import DatasetError, FaceRecord
from partialfc.seeding import mix_seed

log = logging.getLogger(__name__)


def write_image_index(record: FaceRecord, path: str | os.PathLike[str]) -> Path:
    """Writes an ``.idx`` holding only the image records of ``record``.

    DALI's mxnet reader treats every indexed record as an image and cannot decode record 0 (the
    insightface header) nor the identity-range records after the images, so they are left out.
    """
    path = Path(path)
    idx = record.reader.idx
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(f"{key}\t{idx[key]}\n" for key in record.image_keys.tolist())
    return path


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    return device


class DaliLoader:
    """Decoded, flipped and normalised batches from DALI.

    Args:
        root: dataset folder (``train.rec``, ``train.idx``, ``property``) or a ``.rec`` path.
        batch_size: per-rank batch size.
        world_size: number of ranks; the file is split into this many shards.
        rank: this rank's shard.
        seed: seed of DALI's shuffle and flips.
        shuffle: shuffle within DALI's reader buffer.
        flip: random horizontal flips.
        num_threads: DALI CPU threads.
        device: ``"auto"`` (GPU when CUDA is available), ``"cpu"`` or ``"gpu"`` (decode with
            ``mixed``, output on ``cuda:device_id``).
        device_id: CUDA device for ``"gpu"`` (default: torch's current device).
        index_dir: where to write the filtered ``.idx`` (default: a temporary folder removed with
            the loader).
        initial_fill: DALI's shuffle buffer size.
        prefetch_queue_depth: batches DALI prepares ahead.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        flip: bool = True,
        num_threads: int = 2,
        device: str = "auto",
        device_id: int | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        initial_fill: int = 1024,
        prefetch_queue_depth: int = 2,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.record = FaceRecord(root)
        self.batch_size = batch_size
        self.device = _resolve_device(device)
        n = len(self.record)
        self._batches = n // (batch_size * world_size)
        if self._batches == 0:
            raise ValueError(
                f"{n} samples cannot fill one global batch of "
                f"{batch_size * world_size} (batch_size x world_size)"
            )
        # With pad_last_batch every shard's reader epoch is ceil(largest shard / b) batches (the
        # shard padded by repeating its last sample), identical on all ranks; we yield the first
        # N // (b*W) of them and run the rest unseen, so epochs stay aligned with the reader's.
        largest_shard = -(-n // world_size)
        self._reader_batches = -(-largest_shard // batch_size)
        self._tmp = None
        if index_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="partialfc-dali-")
            index_dir = self._tmp.name
        index = write_image_index(
            self.record, Path(index_dir) / f"{self.record.rec_path.stem}.images.idx"
        )
        if self.device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        if self.device == "cpu" and device_id is not None:
            log.warning("DaliLoader: device_id=%s has no effect on the cpu pipeline", device_id)
        self._device_id = device_id if self.device == "gpu" else None
        self._pipe = self._build(
            index,
            world_size,
            rank,
            seed,
            shuffle,
            flip,
            num_threads,
            initial_fill,
            prefetch_queue_depth,
        )
        self.epoch = 0

    def _build(
        self,
        index: Path,
        world_size: int,
        rank: int,
        seed: int,
        shuffle: bool,
        flip: bool,
        num_threads: int,
        initial_fill: int,
        prefetch_queue_depth: int,
    ):
        from nvidia.dali import fn, pipeline_def, types

        decoder = "mixed" if self.device == "gpu" else "cpu"

        @pipeline_def
        def pipeline():
            encoded, labels = fn.readers.mxnet(
                path=[str(self.record.rec_path)],
                index_path=[str(index)],
                shard_id=rank,
                num_shards=world_size,
                random_shuffle=shuffle,
                initial_fill=initial_fill,
                pad_last_batch=True,
                name="Reader",
            )
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            mirror = fn.random.coin_flip(probability=0.5) if flip else 0
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=[127.5] * 3,
                std=[127.5] * 3,
                mirror=mirror,
            )
            return images, labels

        pipe = pipeline(
            batch_size=self.batch_size,
            num_threads=num_threads,
            device_id=self._device_id,
            seed=mix_seed("dali", seed, rank, bits=31),
            prefetch_queue_depth=prefetch_queue_depth,
        )
        pipe.build()
        return pipe

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self._batches

    def _to_torch(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        prop = self.record.property
        want = (3, prop.height, prop.width)
        for shape in images.shape():
            if tuple(shape) != want:
                raise DatasetError(
                    f"DALI decoded an image of shape {tuple(shape)} but {self.record.property_path}"
                    f" says {want}; run `partialfc inspect --verify` to find the record",
                    self.record.rec_path,
                )
        label_np = np.asarray(labels.as_array(), dtype=np.float64).reshape(len(labels), -1)[:, 0]
        bad = (label_np < 0) | (label_np >= prop.num_classes) | (label_np != np.round(label_np))
        if bad.any():
            raise DatasetError(
                f"label {label_np[bad][0]:g} is not a class in [0, {prop.num_classes}) "
                f"(num_classes from {self.record.property_path}); run `partialfc inspect --verify`"
                " to find the record",
                self.record.rec_path,
            )
        label_t = torch.from_numpy(label_np.astype(np.int64))
        if self.device == "gpu":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = images.as_tensor()
            out = torch.empty(
                dense.shape(), dtype=torch.float32, device=torch.device("cuda", self._device_id)
            )
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self._device_id))
            return out, label_t.to(out.device, non_blocking=True)
        return torch.from_numpy(images.as_array()), label_t

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(images (b, 3, H, W) float32, labels (b,) int64)`` for one epoch."""
        for _ in range(self._batches):
            images, labels = self._pipe.run()
            yield self._to_torch(images, labels)
        for _ in range(self._reader_batches - self._batches):
            self._pipe.run()  # the padded tail of the reader's epoch, dropped on every rank
        self.epoch += 1

    def close(self) -> None:
        """Releases the pipeline and the temporary index."""
        self._pipe = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
