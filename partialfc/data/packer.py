"""``partialfc pack``: build an insightface-layout RecordIO dataset from images.

Input is a folder with one sub-folder per identity, or an im2rec-style ``.lst`` file
(``index<TAB>label<TAB>path`` per line, paths relative to ``--root``). Images are re-encoded in
parallel (or copied as they are with ``--pass-through``); the output is byte-identical for the
same inputs, options and seed, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data._pool import ordered_map
from partialfc.data.layout import PROPERTY_FILE, Property, write_records

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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

    def __post_init__(self) -> None:
        if self.img_fmt not in (".jpg", ".png"):
            raise ValueError(f"img_fmt must be '.jpg' or '.png', got {self.img_fmt!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.pass_through and self.resize is not None:
            raise ValueError("pass_through cannot be combined with resize")


def list_image_folder(image_dir: str | os.PathLike[str]) -> tuple[list[Path], list[int], int]:
    """Lists ``image_dir/<identity>/<image>``: identities sorted by name get labels 0, 1, ...

    Returns:
        ``(paths, labels, num_classes)``, paths sorted by identity then file name.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths: list[Path] = []
    labels: list[int] = []
    identities = sorted(p for p in root.iterdir() if p.is_dir())
    label = 0
    for identity in identities:
        files = sorted(
            p for p in identity.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            continue  # a folder without images is not an identity
        paths += files
        labels += [label] * len(files)
        label += 1
    if not paths:
        raise ValueError(
            f"{root}: no images found in <identity>/<image> sub-folders "
            f"(suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return paths, labels, label


def read_lst(
    lst_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> tuple[list[Path], list[int], int]:
    """Reads an im2rec ``.lst`` file: ``index<TAB>label<TAB>path`` per line.

    Args:
        lst_path: the list file.
        root: folder the paths are relative to (default: the list's folder).

    Returns:
        ``(paths, labels, num_classes)`` in file order, ``num_classes = max(label) + 1``.
    """
    lst_path = Path(lst_path)
    if not lst_path.is_file():
        raise FileNotFoundError(f".lst file not found: {lst_path}")
    base = Path(root) if root is not None else lst_path.parent
    paths: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(lst_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError
            label = float(fields[1])
            if not label.is_integer() or label < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{lst_path}, line {lineno}: expected 'index<TAB>label<TAB>path' with one "
                f"non-negative integer label, got {line!r}"
            ) from None
        paths.append(base / fields[2])
        labels.append(int(label))
    if not paths:
        raise ValueError(f"{lst_path}: no entries")
    return paths, labels, max(labels) + 1


def encode_file(path: Path, options: EncodeOptions) -> tuple[bytes, tuple[int, int]]:
    """Reads one image file and returns ``(payload, (height, width))``.

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if options.pass_through:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("JPEG", "PNG"):
                    raise ValueError(
                        f"{path}: --pass-through needs JPEG or PNG, got {image.format}"
                    )
                return data, (image.height, image.width)
        with Image.open(path) as image:
            image = image.convert("RGB")
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
        raise ValueError(f"{path}: cannot read image ({exc})") from exc


def _encode_task(args: tuple[Path, EncodeOptions]) -> tuple[bytes, tuple[int, int]]:
    return encode_file(*args)


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
) -> Property:
    """Encodes ``paths`` and writes them as an insightface-layout dataset.

    Args:
        paths: image files.
        labels: class of each image, in ``[0, num_classes)``.
        num_classes: number of identities written to ``property``.
        out_dir: output folder.
        options: encoding options.
        shuffle: store the images in a random order drawn from ``seed``. DALI's reader shuffles
            only within a small buffer, so a class-sorted file would give it one-class batches.
        seed: seed of the shuffle.
        workers: encoding processes (default: all CPUs).
        progress: show a progress bar.

    Returns:
        The written :class:`Property`.

    Raises:
        ValueError: an unreadable image, or images of different sizes without ``resize``.
    """
    options = options or EncodeOptions()
    if not paths:
        raise ValueError("no images to pack")
    if len(paths) != len(labels):
        raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
    order = np.arange(len(paths))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(paths))
    paths = [paths[i] for i in order]
    labels = [int(labels[i]) for i in order]
    if workers is None:
        workers = os.cpu_count() or 1

    size: tuple[int, int] | None = options.resize

    def payloads() -> Iterator[bytes]:
        nonlocal size
        encoded = ordered_map(
            _encode_task, [(p, options) for p in paths], workers, "pack", progress, chunksize=32
        )
        for path, (payload, hw) in zip(paths, encoded, strict=True):
            if size is None:
                size = hw
            elif hw != size:
                raise ValueError(
                    f"{path}: image is {hw[0]}x{hw[1]} but earlier images are {size[0]}x{size[1]};"
                    " pass --resize HxW to pack images of different sizes"
                )
            yield payload

    out = write_records(out_dir, payloads(), labels, num_classes)
    assert size is not None  # set by the first payload; there is at least one path
    prop = Property(num_classes, *size)  # written last: the size is known only now
    prop.write(out / PROPERTY_FILE)
    return prop


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW or N (square), got {text!r}")
    return h, w


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``pack`` arguments."""
    parser.add_argument("source", help="image folder (one sub-folder per identity) or a .lst file")
    parser.add_argument("out_dir", help="output folder for train.rec, train.idx, property")
    parser.add_argument(
        "--root", help="folder the .lst paths are relative to (default: its folder)"
    )
    parser.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store images in a seeded random order (default: on)",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--resize", type=_size, metavar="HxW", help="resize every image")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument(
        "--format",
        choices=("jpg", "png"),
        default="jpg",
        help="encoding of the stored images (default jpg)",
    )
    parser.add_argument(
        "--pass-through", action="store_true", help="store the JPEG/PNG files' bytes unchanged"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: CPUs)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc pack``."""
    if args.quality != 95 and (args.format == "png" or args.pass_through):
        log.warning(
            "--quality has no effect with %s",
            "--pass-through" if args.pass_through else "--format png",
        )
    if args.format != "jpg" and args.pass_through:
        log.warning("--format has no effect with --pass-through: files are stored as they are")
    source = Path(args.source)
    if source.suffix == ".lst":
        paths, labels, num_classes = read_lst(source, args.root)
    else:
        paths, labels, num_classes = list_image_folder(source)
    options = EncodeOptions(
        resize=args.resize,
        img_fmt=f".{args.format}",
        quality=args.quality,
        pass_through=args.pass_through,
    )
    prop = pack_images(
        paths,
        labels,
        num_classes,
        args.out_dir,
        options,
        shuffle=args.shuffle,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        f"packed {len(paths)} images of {prop.num_classes} identities, "
        f"{prop.height}x{prop.width}, into {args.out_dir}"
    )
    return 0
