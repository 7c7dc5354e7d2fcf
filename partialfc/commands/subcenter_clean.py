"""``partialfc subcenter-clean RUN DATA OUT --max-angle 75``: Sub-center ArcFace's data cleaning.

The work is :func:`partialfc.train.subcenter_clean.subcenter_clean`; this prints its summary and
how to continue training on the result.
"""

from __future__ import annotations

import argparse

import torch

from partialfc.train.subcenter_clean import CHECKPOINT_DIR, subcenter_clean


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``subcenter-clean`` arguments."""
    parser.add_argument("run", help="the sub-centre run's output_dir (or one checkpoint folder)")
    parser.add_argument("data", help="the dataset it trained on (train.rec, train.idx, property)")
    parser.add_argument("out", help="a new folder: the cleaned dataset and a K = 1 checkpoint")
    parser.add_argument(
        "--max-angle",
        type=float,
        default=75.0,
        help="drop images at this angle (degrees) or more from their class's dominant "
        "sub-centre (default 75, the paper's)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images embedded at once")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc subcenter-clean``."""
    result = subcenter_clean(
        args.run, args.data, args.out, args.max_angle, args.batch_size, args.device
    )
    print(result.format())
    print(
        f"continue with K = 1: python -m partialfc.train CONFIG --data.root={result.out} "
        f"--head.sub_centers=1 --train.output_dir={result.out / CHECKPOINT_DIR} "
        "(the checkpoint's config.json holds these settings)"
    )
    return 0
