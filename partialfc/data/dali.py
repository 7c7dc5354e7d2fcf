"""DALI loader for insightface-layout RecordIO: ``fn.readers.mxnet`` sharded by rank.

Same output contract as :class:`partialfc.data.RecordLoader`: ``(images, labels)`` with images
float32 NCHW in [-1, 1] and labels int64, the same number of batches on every rank. DALI decodes
on the GPU (``mixed``) when CUDA is available and on the CPU otherwise. DALI is imported only
here, on first use (the ``dali`` extra).

Differences from the torch loader, by DALI's design: the order is the reader's (a shuffle buffer
of ``initial_fill`` samples over the stored order, which ``pack`` shuffles), not the global
permutation; flips come from DALI's seeded generator. The position is DALI's own pipeline
checkpoint (reader progress, shuffle buffer and generators), per rank: :meth:`DaliLoader.
pipeline_checkpoint` and :meth:`DaliLoader.load_state_dict` resume exactly where it was taken.

Every record of a batch is checked before the batch is handed out: a structurally damaged JPEG
(:func:`partialfc.data.jpeg.jpeg_damage`, which DALI's decoder mostly turns into garbage pixels
without an error), a label outside ``property``'s classes or an image of another size raises
:class:`DatasetError` naming the record's key. When DALI's decoder fails outright, the record is
found by reading the dataset once and named the same way.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partialfc.data.jpeg import is_jpeg, jpeg_damage
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


# DALI's mxnet reader names a sample's origin "<rec path> at index <byte offset of the record>".
_SOURCE_OFFSET = re.compile(r" at index (\d+)$")


class DaliLoader:
    """Decoded, flipped and normalised batches from DALI, resumable through DALI checkpoints.

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
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
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
        self._index = write_image_index(
            self.record, Path(index_dir) / f"{self.record.rec_path.stem}.images.idx"
        )
        if self.device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        if self.device == "cpu" and device_id is not None:
            log.warning("DaliLoader: device_id=%s has no effect on the cpu pipeline", device_id)
        self._device_id = device_id if self.device == "gpu" else None
        self._options = dict(
            seed=seed,
            shuffle=shuffle,
            flip=flip,
            num_threads=num_threads,
            initial_fill=initial_fill,
            prefetch_queue_depth=prefetch_queue_depth,
        )
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed out
        self._pipe = None  # built on first use, from `_restore` when set
        self._restore: bytes | None = None  # a DALI checkpoint to build the pipeline from
        self._skip = 0  # batches to run unseen when the pipeline is built (inexact resume)
        self._closed_checkpoint: bytes | None = None  # what close() saved
        self._closed = self._failed = False
        self._key_at: dict[int, int] | None = None  # record offset -> key, built on first error

    @property
    def num_classes(self) -> int:
        """Number of identities (from ``property``)."""
        return self.record.num_classes

    def _build(self, checkpoint: bytes | None):
        from nvidia.dali import fn, pipeline_def, types

        o = self._options
        decoder = "mixed" if self.device == "gpu" else "cpu"

        @pipeline_def(enable_checkpointing=True)
        def pipeline():
            encoded, labels = fn.readers.mxnet(
                path=[str(self.record.rec_path)],
                index_path=[str(self._index)],
                shard_id=self.rank,
                num_shards=self.world_size,
                random_shuffle=o["shuffle"],
                initial_fill=o["initial_fill"],
                pad_last_batch=True,
                name="Reader",
            )
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            mirror = fn.random.coin_flip(probability=0.5) if o["flip"] else 0
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=[127.5] * 3,
                std=[127.5] * 3,
                mirror=mirror,
            )
            return images, labels, encoded  # the encoded bytes, to check each record

        pipe = pipeline(
            batch_size=self.batch_size,
            num_threads=o["num_threads"],
            device_id=self._device_id,
            seed=mix_seed("dali", o["seed"], self.rank, bits=31),
            prefetch_queue_depth=o["prefetch_queue_depth"],
            checkpoint=checkpoint,
        )
        pipe.build()
        return pipe

    def _pipeline(self):
        if self._closed:
            raise RuntimeError("DaliLoader is closed")
        if self._failed:
            raise RuntimeError("DaliLoader's pipeline failed on an earlier batch")
        if self._pipe is None:
            self._pipe = self._build(self._restore)
            skip, self._skip = self._skip, 0
            for _ in range(skip):
                self._run()
        return self._pipe

    def _run(self):
        """One pipeline iteration: ``(images, labels, encoded)``, every record checked."""
        try:
            images, labels, encoded = self._pipe.run()
        except RuntimeError as exc:
            self._failed, self._pipe = True, None  # DALI: "pipeline object is no longer valid"
            if "decoders.image" not in str(exc):
                raise
            self._undecodable(exc)
        for i in range(len(encoded)):
            payload = np.asarray(encoded[i]).tobytes()
            if is_jpeg(payload) and jpeg_damage(payload) is not None:
                self._failed = True
                self.record.check_encoded(self._key(encoded[i].source_info()), payload)
        return images, labels, encoded

    def _key(self, source_info: str) -> int | None:
        found = _SOURCE_OFFSET.search(source_info)
        if found is None:
            return None
        if self._key_at is None:
            self._key_at = {offset: key for key, offset in self.record.reader.idx.items()}
        return self._key_at.get(int(found.group(1)))

    def _undecodable(self, exc: RuntimeError) -> None:
        """Raises DatasetError naming a record DALI's decoder fails on (reads the dataset once).

        DALI's error does not say which sample failed; the structural check, or Pillow for
        other formats, finds it.
        """
        from partialfc.data.images import decode_image

        path = self.record.rec_path
        for key in self.record.image_keys.tolist():
            _, payload = self.record.read_image_record(key)
            if is_jpeg(payload):
                damage = jpeg_damage(payload)
                if damage is not None:
                    msg = f"damaged JPEG ({damage}); DALI cannot decode it"
                    raise DatasetError(msg, path, key) from exc
                continue
            try:
                decode_image(payload)
            except (OSError, ValueError, SyntaxError) as err:
                what = (
                    f"not an image format Pillow knows (first bytes {payload[:4].hex(' ')})"
                    if type(err).__name__ == "UnidentifiedImageError"
                    else f"image does not decode ({err})"
                )
                raise DatasetError(f"{what}; DALI cannot decode it", path, key) from exc
        raise DatasetError(
            "DALI's decoder fails on a record of this batch that neither the structural check nor"
            f" Pillow refuses; run `partialfc inspect --verify {path.parent}`",
            path,
        ) from exc

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self._batches

    def _to_torch(self, images, labels, encoded) -> tuple[torch.Tensor, torch.Tensor]:
        prop = self.record.property
        want = (3, prop.height, prop.width)
        for i, shape in enumerate(images.shape()):
            if tuple(shape) != want:
                raise DatasetError(
                    f"DALI decoded an image of shape {tuple(shape)} but {self.record.property_path}"
                    f" says {want}",
                    self.record.rec_path,
                    self._key(encoded[i].source_info()),
                )
        label_np = np.asarray(labels.as_array(), dtype=np.float64).reshape(len(labels), -1)[:, 0]
        bad = (label_np < 0) | (label_np >= prop.num_classes) | (label_np != np.round(label_np))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"label {label_np[i]:g} is not a class in [0, {prop.num_classes}) "
                f"(num_classes from {self.record.property_path})",
                self.record.rec_path,
                self._key(encoded[i].source_info()),
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
        """Yields ``(images (b, 3, H, W) float32, labels (b,) int64)`` to the end of the epoch."""
        self._pipeline()
        while self.batch < self._batches:
            out = self._run()
            self.batch += 1
            yield self._to_torch(*out)
        for _ in range(self._reader_batches - self._batches):
            self._run()  # the padded tail of the reader's epoch, dropped on every rank
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The position, the same on every rank: epoch and batches of it already handed out.

        The exact reader state is this rank's :meth:`pipeline_checkpoint`, saved beside it.
        """
        return {"epoch": self.epoch, "batch": self.batch}

    def pipeline_checkpoint(self) -> bytes:
        """DALI's checkpoint of this rank's pipeline at :meth:`state_dict`'s position (also after
        :meth:`close`): reader progress, shuffle buffer and random generators."""
        if self._closed:
            if self._closed_checkpoint is None:
                raise RuntimeError("DaliLoader was closed after its pipeline failed: no state")
            return self._closed_checkpoint
        pipe = self._pipeline()
        checkpoint = pipe.checkpoint()
        return checkpoint.encode() if isinstance(checkpoint, str) else checkpoint

    def load_state_dict(
        self, state: dict[str, Any], pipeline_checkpoint: bytes | None = None
    ) -> None:
        """Resumes at ``state``'s position.

        Args:
            state: what :meth:`state_dict` returned.
            pipeline_checkpoint: what :meth:`pipeline_checkpoint` returned with it, on the same
                rank of the same world size: the next batch is then exactly the one that would
                have followed. Without it a fresh pipeline runs ``state["batch"]`` batches unseen:
                as many samples are skipped, but not the same ones, and the epoch's order is a
                fresh reader's.
        """
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch <= self._batches:
            raise ValueError(f"loader state batch={batch} is outside [0, {self._batches}]")
        self._pipe, self._failed = None, False
        self.epoch, self.batch = epoch, batch
        self._restore, self._skip = pipeline_checkpoint, 0 if pipeline_checkpoint else batch

    def close(self) -> None:
        """Stops and frees the pipeline and the temporary index; :meth:`state_dict` and
        :meth:`pipeline_checkpoint` still answer (for a checkpoint written after it)."""
        if self._closed:
            return
        if not self._failed:
            self._closed_checkpoint = self.pipeline_checkpoint()
        self._pipe, self._closed = None, True
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
