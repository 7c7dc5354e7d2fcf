"""``partialfc pack``: build an insightface-layout RecordIO dataset from images.

Input is a folder with one sub-folder per identity, or an im2rec-style ``.lst`` file
(``index<TAB>label<TAB>path`` per line, paths relative to ``--root``). Images are re-encoded in
parallel (or copied as they are with ``--pass-through``); the output is byte-identical for the
same inputs, options and seed, whatever the number of workers.

The dataset is built in a hidden folder beside the output and renamed into place at the end
(:mod:`partialfc.data.staging`): a pack that fails (an unreadable image, Ctrl-C, SIGTERM) leaves
an earlier dataset in the output folder as it was, and replacing one needs ``--overwrite``.
Besides ``train.rec``, ``train.idx`` and ``property`` it writes ``labels.tsv``, the identity
behind each label.

Unaligned photos are aligned with ``--landmarks FILE``: one line ``PATH x1 y1 ... x5 y5 [score]``
per image (five landmarks in pixels, the layout of insightface's ``*_name_5pts_score.txt``; PATH
relative to the image folder, or to ``--root`` for a ``.lst``, or absolute); each image is then
stored as its 112x112 ArcFace crop (:func:`partialfc.data.align.norm_crop`; ``--resize N`` for
another square multiple of 112 or 128).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data._pool import ordered_map
from partialfc.data.align import norm_crop, template
from partialfc.data.image_list import (
    IMAGE_SUFFIXES,
    LABELS_FILE,
    ImageList,
    PackError,
    identity_names,
    list_image_folder,
    read_labels,
    read_lst,
    scan_image_folder,
    write_labels,
)
from partialfc.data.layout import IDX_FILE, PROPERTY_FILE, REC_FILE, Property, write_records
from partialfc.data.staging import (
    staged_folder,
)
from partialfc.errors import ConfigError, UserFileError

log = logging.getLogger(__name__)

OUTPUT_FILES = (REC_FILE, IDX_FILE, PROPERTY_FILE, LABELS_FILE)
"""What ``pack`` writes: ``--overwrite`` replaces these; other files in the folder are kept."""
_COMMAND = "partialfc pack"

# The folder and .lst readers live in image_list; their names stay importable from here.
__all__ = [
    "IMAGE_SUFFIXES",
    "OUTPUT_FILES",
    "EncodeOptions",
    "ImageList",
    "PackError",
    "encode_file",
    "list_image_folder",
    "pack_images",
    "read_labels",
    "read_landmarks",
    "read_lst",
    "scan_image_folder",
]


@dataclass(frozen=True)
class EncodeOptions:
    """How each image is turned into a record payload."""

    resize: tuple[int, int] | None = None
    """``(height, width)`` to resize every image to, or None to keep (then all must match)."""
    img_fmt: str = ".jpg"
    """``.jpg`` or ``.png``."""
    quality: int = 95
    """JPEG quality 1..100."""
    pass_through: bool = False
    """Copy the file bytes unchanged (JPEG/PNG only; no resize)."""
    align_size: int | None = None
    """Side of the five-point aligned crop each image becomes, or None not to align."""

    def __post_init__(self) -> None:
        if self.img_fmt not in (".jpg", ".png"):
            raise ConfigError(f"img_fmt must be '.jpg' or '.png', got {self.img_fmt!r}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be in 1..100, got {self.quality}")
        if self.pass_through and self.resize is not None:
            raise ConfigError("pass_through cannot be combined with resize")
        if self.align_size is not None:
            if self.pass_through or self.resize is not None:
                raise ConfigError(
                    "align_size (--landmarks) cannot be combined with pass_through or resize"
                )
            template(self.align_size)  # a multiple of 112 or 128


def encode_file(
    path: Path, options: EncodeOptions, landmarks: np.ndarray | None = None
) -> tuple[bytes, tuple[int, int]]:
    """Reads one image file and returns ``(payload, (height, width))``.

    With ``options.align_size`` the image is first aligned by its five ``landmarks`` (5, 2).

    Raises:
        PackError: the file cannot be read as an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if options.pass_through:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("JPEG", "PNG"):
                    raise PackError(f"{path}: --pass-through needs JPEG or PNG, got {image.format}")
                return data, (image.height, image.width)
        with Image.open(path) as image:
            image = image.convert("RGB")
            if options.align_size is not None:
                assert landmarks is not None, "aligning needs landmarks"
                crop = norm_crop(np.asarray(image), landmarks, options.align_size)
                image = Image.fromarray(crop)
            if options.resize is not None:
                height, width = options.resize
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            if options.img_fmt == ".jpg":
                image.save(buf, format="JPEG", quality=options.quality)
            else:
                image.save(buf, format="PNG")
            return buf.getvalue(), (image.height, image.width)
    except (OSError, UnidentifiedImageError) as exc:
        raise PackError(f"{path}: cannot read image ({exc})") from None


def _encode_task(
    args: tuple[Path, EncodeOptions, np.ndarray | None],
) -> tuple[bytes, tuple[int, int]]:
    return encode_file(*args)


def read_landmarks(path: str | os.PathLike[str], base: Path) -> dict[Path, np.ndarray]:
    """``{resolved image path: (5, 2) landmarks}`` from ``PATH x1 y1 ... x5 y5 [score]`` lines.

    Raises:
        UserFileError: the file does not exist.
        PackError: a line is malformed (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileError(f"landmarks file not found: {path}")
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) not in (11, 12):
                raise ValueError(f"{len(parts)} fields")
            points = np.array(parts[1:11], dtype=np.float64).reshape(5, 2)
        except ValueError as exc:
            raise PackError(
                f"{path}:{number}: expected 'PATH x1 y1 ... x5 y5 [score]' ({exc})"
            ) from None
        out[(base / parts[0]).resolve()] = points
    return out


def pack_images(
    paths: Sequence[Path],
    labels: Sequence[int],
    num_classes: int,
    out_dir: str | os.PathLike[str],
    options: EncodeOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    *,
    overwrite: bool = False,
    landmarks: dict[Path, np.ndarray] | None = None,
) -> Property:
    """Encodes ``paths`` and writes them as an insightface-layout dataset, with ``labels.tsv``.

    Everything is written into a hidden folder beside ``out_dir`` that replaces ``out_dir`` only
    once complete; on any error the hidden folder is removed and ``out_dir`` is untouched.

    Args:
        paths: image files.
        labels: class of each image, in ``[0, num_classes)``.
        num_classes: number of identities written to ``property``.
        out_dir: output folder: missing, empty, or (with ``overwrite``) an earlier dataset.
        options: encoding options.
        shuffle: store the images in a random order drawn from ``seed``. DALI's reader shuffles
            only within a small buffer, so a class-sorted file would give it one-class batches.
        seed: seed of the shuffle.
        workers: encoding processes (default: all CPUs).
        progress: show a progress bar.
        overwrite: replace the dataset already in ``out_dir`` (its other files are kept).
        landmarks: five landmarks of every image by resolved path (see :func:`read_landmarks`),
            needed when ``options.align_size`` is set.

    Returns:
        The written :class:`Property`.

    Raises:
        PackError: an unreadable image, or images of different sizes without ``resize``.
        UserError: ``out_dir`` holds a dataset and ``overwrite`` is false, or holds other things.
    """
    options = options or EncodeOptions()
    if not paths:
        raise ValueError("no images to pack")
    if len(paths) != len(labels):
        raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
    names = identity_names(paths, labels, num_classes)
    points = None
    if options.align_size is not None:
        found = landmarks or {}
        points = [found.get(Path(p).resolve()) for p in paths]
        missing = [str(p) for p, x in zip(paths, points, strict=True) if x is None]
        if missing:
            raise PackError(
                f"{len(missing)} images have no landmarks (e.g. {', '.join(missing[:3])})"
            )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    order = np.arange(len(paths))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(paths))
    paths = [paths[i] for i in order]
    labels = [int(labels[i]) for i in order]
    points = None if points is None else [points[i] for i in order]
    if workers is None:
        workers = os.cpu_count() or 1
    with staged_folder(out_dir, OUTPUT_FILES, overwrite, _COMMAND) as tmp:
        sizes = _Sizes(options.resize)
        # closing(): an error in the writer stops the encoding pool now, not at garbage collection
        with closing(_payloads(paths, options, workers, progress, sizes, points)) as payloads:
            write_records(tmp, payloads, labels, num_classes)
        assert sizes.size is not None  # set by the first payload; there is at least one path
        prop = Property(num_classes, *sizes.size)  # the size is known only now
        prop.write(tmp / PROPERTY_FILE)
        write_labels(tmp / LABELS_FILE, names, counts.tolist())
    return prop


@dataclass
class _Sizes:
    size: tuple[int, int] | None


def _payloads(
    paths: Sequence[Path],
    options: EncodeOptions,
    workers: int,
    progress: bool,
    sizes: _Sizes,
    points: Sequence[np.ndarray] | None = None,
) -> Iterator[bytes]:
    """The encoded images in order; every one must have the first one's size."""
    tasks = [(p, options, None if points is None else points[i]) for i, p in enumerate(paths)]
    encoded = ordered_map(_encode_task, tasks, workers, "pack", progress, chunksize=32)
    with closing(encoded):
        for path, (payload, hw) in zip(paths, encoded, strict=True):
            if sizes.size is None:
                sizes.size = hw
            elif hw != sizes.size:
                h, w = sizes.size
                raise PackError(
                    f"{path}: image is {hw[0]}x{hw[1]} but earlier images are {h}x{w};"
                    " pass --resize HxW to pack images of different sizes"
                )
            yield payload
