"""``partialfc synth OUT_DIR``: a deterministic synthetic face set and ``val.bin``, or an IJB tree.

The generators are :func:`partialfc.data.synth.synth_dataset` and
:func:`partialfc.data.synth_ijb.synth_ijb`; this module parses their options and prints what they
wrote.
"""

from __future__ import annotations

import argparse

from partialfc.data.synth import SynthConfig, synth_dataset


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``synth`` arguments."""
    d = SynthConfig()
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument(
        "--identities",
        type=int,
        default=d.identities,
        help=f"training identities (default {d.identities})",
    )
    parser.add_argument(
        "--images-per-identity",
        type=int,
        default=d.images_per_identity,
        help=f"images per training identity (default {d.images_per_identity})",
    )
    parser.add_argument("--size", type=int, default=d.size, help=f"image side (default {d.size})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    parser.add_argument(
        "--val-identities",
        type=int,
        default=d.val_identities,
        help=f"held-out identities in val.bin (default {d.val_identities})",
    )
    parser.add_argument(
        "--val-pairs",
        type=int,
        default=d.val_pairs,
        help=f"pairs in val.bin, even; 0 for none (default {d.val_pairs})",
    )
    parser.add_argument(
        "--quality", type=int, default=d.quality, help=f"JPEG quality (default {d.quality})"
    )
    parser.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=d.shuffle,
        help="store training images in a seeded random order (default: on)",
    )
    parser.add_argument(
        "--ijb",
        choices=("IJBC", "IJBB"),
        help="write a synthetic IJB tree (meta/, loose_crop/) of --identities subjects instead",
    )
    parser.add_argument(
        "--templates-per-subject", type=int, default=3, help="with --ijb (default 3)"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc synth``."""
    if args.ijb:
        return _run_ijb(args)
    cfg = SynthConfig(
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        size=args.size,
        seed=args.seed,
        val_identities=args.val_identities,
        val_pairs=args.val_pairs,
        quality=args.quality,
        shuffle=args.shuffle,
    )
    prop = synth_dataset(args.out_dir, cfg, workers=args.workers, progress=not args.no_progress)
    print(
        f"wrote {cfg.identities * cfg.images_per_identity} images of {prop.num_classes} "
        f"identities ({prop.height}x{prop.width}) and {cfg.val_pairs} verification pairs of "
        f"{cfg.val_identities} held-out identities to {args.out_dir}"
    )
    return 0


def _run_ijb(args: argparse.Namespace) -> int:
    from partialfc.data.synth_ijb import SynthIJBConfig, synth_ijb
    from partialfc.errors import ConfigError

    try:
        cfg = SynthIJBConfig(
            subjects=args.identities,
            templates_per_subject=args.templates_per_subject,
            target=args.ijb,
            seed=args.seed,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    counts = synth_ijb(args.out_dir, cfg, workers=args.workers, progress=not args.no_progress)
    galleries = ", ".join(
        f"{key.removeprefix('gallery_')} {n}"
        for key, n in counts.items()
        if key.startswith("gallery_")
    )
    print(
        f"wrote a synthetic {args.ijb} tree to {args.out_dir}: {counts['images']} images,"
        f" {counts['templates']} templates of {cfg.subjects} subjects,"
        f" {counts['pairs']} pairs ({counts['same']} same); 1:N: {counts['probes']} probes,"
        f" gallery subjects {galleries}"
    )
    return 0
