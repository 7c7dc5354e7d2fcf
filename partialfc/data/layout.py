"""The insightface dataset layout: ``train.rec``, ``train.idx`` and ``property`` in one folder.

* Record 0 is a header with ``flag > 0``. Its ``label[0]`` is one past the last image key (images
  are keys ``1 .. label[0]-1``) and its ``label[1]`` is one past the last identity key.
* Keys ``label[0] .. label[1]-1`` (optional) are identity records, one per class in class order,
  each a header whose two labels are the ``[start, end)`` image keys of that class. They exist
  only when the images are grouped by class; :func:`write_dataset` writes them then.
* ``property`` is the text ``num_classes,H,W``.

A file without such a record 0 (plain ``im2rec`` output) is read with every key as an image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data.jpeg import is_jpeg, jpeg_damage
from partialfc.data.recordio import IndexedRecordReader, IndexedRecordWriter, IRHeader, pack, unpack
from partialfc.errors import UserError, UserFileError

REC_FILE = "train.rec"
IDX_FILE = "train.idx"
PROPERTY_FILE = "property"


class DatasetError(UserError, ValueError):
    """A dataset's content contradicts its layout: label out of range, wrong image size, ...

    Attributes:
        path: the file at fault.
        key: the record key, when the error concerns one record.
    """

    def __init__(self, message: str, path: str | os.PathLike[str], key: int | None = None) -> None:
        where = str(path) if key is None else f"{path}, key {key}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.key = key


@dataclass(frozen=True)
class Property:
    """The content of an insightface ``property`` file."""

    num_classes: int
    """Number of identities; every label lies in ``[0, num_classes)``."""
    height: int
    """Height in pixels of every image."""
    width: int
    """Width in pixels of every image."""

    def __post_init__(self) -> None:
        for name in ("num_classes", "height", "width"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"Property.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Property:
        """Reads a ``property`` file (``num_classes,H,W``).

        Raises:
            FileNotFoundError: the file is missing.
            DatasetError: the file does not hold three positive integers.
        """
        if not os.path.isfile(path):
            raise UserFileError(f"insightface property file not found: {path}")
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
        try:
            num_classes, height, width = (int(v) for v in text.split(","))
            return cls(num_classes, height, width)
        except ValueError:
            raise DatasetError(
                f"expected 'num_classes,H,W' with positive integers, got {text!r}", path
            ) from None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Writes the ``property`` file."""
        Path(path).write_text(f"{self.num_classes},{self.height},{self.width}", encoding="ascii")


def resolve_paths(root: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Returns ``(rec, idx, property)`` paths for a dataset folder or a ``.rec`` file path."""
    root = Path(root)
    if root.suffix == ".rec":
        return root, root.with_suffix(".idx"), root.parent / PROPERTY_FILE
    return root / REC_FILE, root / IDX_FILE, root / PROPERTY_FILE


class FaceRecord:
    """An opened insightface-layout dataset: record reader, property and the image keys.

    Args:
        root: the dataset folder (or the path of its ``.rec``; ``.idx`` and ``property`` are then
            looked up next to it).

    Raises:
        FileNotFoundError: ``.rec``, ``.idx`` or ``property`` is missing (named in the message).
        RecordIOError: record 0 is corrupt.
        DatasetError: record 0's key range contradicts the index.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.rec_path, self.idx_path, self.property_path = resolve_paths(root)
        if not self.rec_path.is_file():
            raise UserFileError(f"RecordIO record (.rec) file not found: {self.rec_path}")
        self.reader = IndexedRecordReader(self.idx_path, self.rec_path)
        self.property = Property.read(self.property_path)
        self.identity_keys: np.ndarray = np.zeros(0, dtype=np.int64)
        self.header: IRHeader | None = None
        if 0 in self.reader.idx:
            header, _ = unpack(self.reader.read_idx(0))
            if header.flag > 0:
                self.header = header
        if self.header is None:
            self.image_keys = np.asarray(sorted(self.reader.keys), dtype=np.int64)
        else:
            labels = np.asarray(self.header.label)
            end = int(labels[0])
            self.image_keys = np.arange(1, end, dtype=np.int64)
            if labels.size > 1 and int(labels[1]) > end:
                self.identity_keys = np.arange(end, int(labels[1]), dtype=np.int64)
            missing = [int(k) for k in (1, end - 1) if end > 1 and k not in self.reader.idx]
            if missing:
                raise DatasetError(
                    f"record 0 says images are keys 1..{end - 1} but key {missing[0]} is not in "
                    f"the index {self.idx_path}",
                    self.rec_path,
                    0,
                )

    @property
    def num_classes(self) -> int:
        """Number of identities, from ``property``."""
        return self.property.num_classes

    def __len__(self) -> int:
        return len(self.image_keys)

    def label_of(self, key: int, header: IRHeader) -> int:
        """Returns the class of an image record, checking it against ``num_classes``.

        Raises:
            DatasetError: the label is negative, fractional or ``>= num_classes``.
        """
        label = header.label
        value = float(label[0] if header.flag > 0 else label)
        if not (value.is_integer() and 0 <= value < self.num_classes):
            raise DatasetError(
                f"label {value:g} is not a class in [0, {self.num_classes}) "
                f"(num_classes from {self.property_path})",
                self.rec_path,
                key,
            )
        return int(value)

    def read_image_record(self, key: int) -> tuple[int, bytes]:
        """Reads one image record: ``(label, encoded image bytes)``, label checked."""
        header, payload = unpack(self.reader.read_idx(key))
        return self.label_of(key, header), payload

    def check_encoded(self, key: int, payload: bytes) -> None:
        """Raises :class:`DatasetError` when a JPEG payload is structurally damaged.

        Decoders turn most such damage into a warning and wrong pixels (see
        :mod:`partialfc.data.jpeg`, which also says what no structural check can see); other
        formats are left to the decoder.
        """
        if is_jpeg(payload):
            damage = jpeg_damage(payload)
            if damage is not None:
                raise DatasetError(f"damaged JPEG ({damage})", self.rec_path, key)

    def check_image(self, key: int, image: np.ndarray) -> None:
        """Raises :class:`DatasetError` when a decoded HxWxC image differs from ``property``."""
        height, width = image.shape[:2]
        if (height, width) != (self.property.height, self.property.width):
            raise DatasetError(
                f"image is {height}x{width} but {self.property_path} says "
                f"{self.property.height}x{self.property.width}",
                self.rec_path,
                key,
            )

    def labels(self) -> np.ndarray:
        """The label of every image (reads only record headers), checked against num_classes."""
        out = np.empty(len(self.image_keys), dtype=np.int64)
        for i, key in enumerate(self.image_keys.tolist()):
            out[i] = self.label_of(key, self.reader.read_header(key))
        return out

    def close(self) -> None:
        """Closes the record file."""
        self.reader.close()


def write_dataset(
    out_dir: str | os.PathLike[str],
    payloads: Iterable[bytes],
    labels: Sequence[int],
    prop: Property,
) -> Path:
    """Writes ``train.rec``, ``train.idx`` and ``property``: see :func:`write_records`."""
    out = write_records(out_dir, payloads, labels, prop.num_classes)
    prop.write(out / PROPERTY_FILE)
    return out


def write_records(
    out_dir: str | os.PathLike[str],
    payloads: Iterable[bytes],
    labels: Sequence[int],
    num_classes: int,
) -> Path:
    """Writes ``train.rec`` and ``train.idx`` in insightface layout (not ``property``).

    Image ``i`` (0-based) becomes key ``i + 1`` with label ``labels[i]``. Identity-range records
    are written when the labels are sorted and cover every class (images grouped by class).

    Args:
        out_dir: folder to write into (created if missing).
        payloads: encoded images, in key order (consumed lazily, so a generator can stream).
        labels: class of each image.
        num_classes: number of classes; every label must be below it.

    Returns:
        The output folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_np = np.asarray(labels, dtype=np.int64)
    n = len(labels_np)
    if n and (labels_np.min() < 0 or labels_np.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels_np.min()}..{labels_np.max()}"
        )
    grouped = (
        bool(n)
        and bool(np.all(np.diff(labels_np) >= 0))
        and (len(np.unique(labels_np)) == num_classes)
    )
    num_ids = num_classes if grouped else 0
    with IndexedRecordWriter(out / IDX_FILE, out / REC_FILE) as writer:
        writer.write_idx(0, pack(IRHeader(2, [n + 1, n + 1 + num_ids], 0, 0), b""))
        written = 0
        for key, (label, payload) in enumerate(zip(labels_np.tolist(), payloads, strict=False), 1):
            writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), payload))
            written += 1
        if written != n:
            raise ValueError(f"got {written} images for {n} labels")
        if grouped:
            bounds = np.searchsorted(labels_np, np.arange(num_classes + 1)) + 1
            for c in range(num_classes):
                key = n + 1 + c
                writer.write_idx(key, pack(IRHeader(2, [bounds[c], bounds[c + 1]], key, 0), b""))
    return out
