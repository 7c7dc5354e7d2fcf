"""``partialfc inspect``: summarise an insightface-layout dataset and optionally verify it.

The summary reads only record headers (cheap); ``--verify`` decodes every image and reports
each bad record by key and byte offset, exiting non-zero if there is any.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from partialfc.data._pool import ordered_map
from partialfc.data.images import decode_image
from partialfc.data.layout import FaceRecord
from partialfc.progress import Progress, track

# Upper edges of the per-identity image-count histogram buckets.
_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class Problem:
    """One bad record found by :func:`verify`."""

    key: int
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = f"key {self.key}" + ("" if self.offset is None else f" at offset {self.offset}")
        return f"{where}: {self.message}"


@dataclass
class Summary:
    """What :func:`summarize` finds."""

    path: str
    num_images: int
    num_classes: int
    height: int
    width: int
    identities_present: int
    counts: np.ndarray = field(repr=False)  # images per class, length num_classes
    has_identity_records: bool = False

    def histogram(self) -> list[tuple[str, int]]:
        """``(range label, number of identities)`` for identities with at least one image."""
        present = self.counts[self.counts > 0]
        rows, low = [], 1
        for high in _BUCKETS:
            n = int(((present >= low) & (present <= high)).sum())
            rows.append((str(low) if low == high else f"{low}-{high}", n))
            low = high + 1
        rows.append((f">{_BUCKETS[-1]}", int((present > _BUCKETS[-1]).sum())))
        return [r for r in rows if r[1]]

    def format(self) -> str:
        """Human-readable report."""
        present = self.counts[self.counts > 0]
        lines = [
            f"dataset:     {self.path}",
            f"images:      {self.num_images}",
            f"identities:  {self.num_classes} (property), {self.identities_present} with images",
            f"image size:  {self.height}x{self.width}",
            f"identity records: {'yes' if self.has_identity_records else 'no'}",
        ]
        if present.size:
            lines.append(
                f"images per identity: min {present.min()}, median "
                f"{float(np.median(present)):g}, mean {present.mean():.1f}, "
                f"max {present.max()}"
            )
            lines.append("histogram (images per identity: identities):")
            width = max(len(label) for label, _ in self.histogram())
            lines += [f"  {label:>{width}}: {n}" for label, n in self.histogram()]
        return "\n".join(lines)


def summarize(root: str | os.PathLike[str]) -> Summary:
    """Counts images and identities from the record headers (no image is decoded)."""
    record = FaceRecord(root)
    try:
        labels = record.labels()
        prop = record.property
        return Summary(
            path=str(record.rec_path.parent),
            num_images=len(labels),
            num_classes=prop.num_classes,
            height=prop.height,
            width=prop.width,
            identities_present=int(np.unique(labels).size),
            counts=np.bincount(labels, minlength=prop.num_classes),
            has_identity_records=bool(record.identity_keys.size),
        )
    finally:
        record.close()


VERIFY_CHUNK = 256  # records per task when --verify runs on several processes


def verify(
    root: str | os.PathLike[str], progress: bool = False, workers: int = 1
) -> Iterator[Problem]:
    """Decodes every image record; yields one :class:`Problem` per bad record, in key order.

    Checks framing (magic, length, continuation flags), header, label < num_classes, the JPEG
    structure (:func:`partialfc.data.jpeg.jpeg_damage`), that the image decodes, and that its size
    matches ``property``. With ``workers > 1`` the records are checked by that many processes,
    each reading its own handle of the files; the problems and their order are the same.
    """
    record = FaceRecord(root)
    keys = record.image_keys.tolist()
    if workers <= 1:
        try:
            for key in track(keys, "verify", "img", enabled=progress):
                yield from _check_record(record, key)
        finally:
            record.close()
        return
    record.close()
    chunks = [keys[i : i + VERIFY_CHUNK] for i in range(0, len(keys), VERIFY_CHUNK)]
    tasks = [(os.fspath(root), chunk) for chunk in chunks]
    with Progress(len(keys), "verify", "img", progress) as bar:
        found = ordered_map(_check_chunk, tasks, workers, "verify", False, chunksize=1)
        for chunk, problems in zip(chunks, found, strict=True):
            yield from problems
            bar.update(len(chunk))


def _check_record(record: FaceRecord, key: int) -> Iterator[Problem]:
    offset = record.reader.idx.get(key)
    if offset is None:
        yield Problem(key, None, f"missing from the index {record.idx_path}")
        return
    try:
        _, payload = record.read_image_record(key)
        record.check_encoded(key, payload)
        try:
            image = decode_image(payload)
        except (OSError, ValueError, SyntaxError) as exc:
            yield Problem(key, offset, f"image does not decode ({exc})")
            return
        record.check_image(key, image)
    except ValueError as exc:  # RecordIOError, DatasetError: the message names the file
        yield Problem(key, offset, str(exc))


_WORKER_RECORDS: dict[str, FaceRecord] = {}  # a pool process's open dataset, read by its tasks


def _check_chunk(task: tuple[str, list[int]]) -> list[Problem]:
    """One pool task: the problems of ``keys`` of the dataset at ``root``. Each process opens the
    dataset once (the index of millions of keys is not re-read per task) and keeps it open until
    the pool ends it."""
    root, keys = task
    record = _WORKER_RECORDS.get(root)
    if record is None:
        record = _WORKER_RECORDS[root] = FaceRecord(root)
    return [problem for key in keys for problem in _check_record(record, key)]
