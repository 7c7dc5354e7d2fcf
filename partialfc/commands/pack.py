"""``partialfc pack SOURCE OUT_DIR``: an image folder or ``.lst`` -> insightface RecordIO.

Argument parsing and the summary line; the packing is :func:`partialfc.data.packer.pack_images`
(its module docstring has the formats, the atomic replace and ``--landmarks``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from partialfc.data.image_list import ImageList, read_lst, scan_image_folder
from partialfc.data.packer import OUTPUT_FILES, EncodeOptions, pack_images, read_landmarks
from partialfc.data.staging import SIGTERM_EXIT, Terminated, check_target, sigterm_raises
from partialfc.errors import ConfigError

log = logging.getLogger(__name__)

_COMMAND = "partialfc pack"


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
    parser.add_argument(
        "out_dir", help="output folder for train.rec, train.idx, property, labels.tsv"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the dataset already in OUT_DIR (its other files are kept)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="list every file and folder that is skipped"
    )
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
    parser.add_argument(
        "--landmarks",
        type=Path,
        metavar="FILE",
        help="align each image by its five landmarks (lines 'PATH x1 y1 ... x5 y5 [score]')"
        " into a 112x112 ArcFace crop (--resize N: an N x N one)",
    )
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
    """Runs ``partialfc pack``: 0 when packed, 130 on Ctrl-C, 143 on SIGTERM."""
    if args.quality != 95 and (args.format == "png" or args.pass_through):
        log.warning(
            "--quality has no effect with %s",
            "--pass-through" if args.pass_through else "--format png",
        )
    if args.format != "jpg" and args.pass_through:
        log.warning("--format has no effect with --pass-through: files are stored as they are")
    align_size = None
    if args.landmarks is not None:
        if args.resize is not None and args.resize[0] != args.resize[1]:
            raise ConfigError(
                f"--landmarks makes square crops: --resize must be N, got {args.resize}"
            )
        align_size = args.resize[0] if args.resize is not None else 112
    options = EncodeOptions(
        resize=None if align_size else args.resize,
        img_fmt=f".{args.format}",
        quality=args.quality,
        pass_through=args.pass_through,
        align_size=align_size,
    )
    # Before listing and encoding anything: a refused output folder costs the user nothing.
    check_target(Path(args.out_dir).resolve(), OUTPUT_FILES, args.overwrite, _COMMAND)
    try:
        with sigterm_raises():
            source = Path(args.source)
            if source.suffix == ".lst":
                found = ImageList(*read_lst(source, args.root))
                base = Path(args.root) if args.root is not None else source.parent
            else:
                found = scan_image_folder(source)
                base = source
            landmarks = None if args.landmarks is None else read_landmarks(args.landmarks, base)
            prop = pack_images(
                found.paths,
                found.labels,
                found.num_classes,
                args.out_dir,
                options,
                shuffle=args.shuffle,
                seed=args.seed,
                workers=args.workers,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                landmarks=landmarks,
            )
    except (KeyboardInterrupt, Terminated) as stop:
        ctrl_c = isinstance(stop, KeyboardInterrupt)
        what = "interrupted" if ctrl_c else "terminated (SIGTERM)"
        print(
            f"{_COMMAND}: {what}; {args.out_dir} is replaced only by a complete pack",
            file=sys.stderr,
        )
        return 130 if ctrl_c else SIGTERM_EXIT
    if args.verbose:
        for skipped in found.skipped:
            print(skipped)
    line = (
        f"packed {len(found.paths)} images of {prop.num_classes} identities, "
        f"{prop.height}x{prop.width}, into {args.out_dir}"
    )
    if found.skipped:
        line += f"; skipped {found.skipped_summary()}"
        line += "" if args.verbose else " (--verbose lists them)"
    print(line)
    return 0
