"""``partialfc eval CHECKPOINT SET.bin [SET.bin ...]``: 10-fold verification accuracy with flip."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder or a run's output_dir")
    parser.add_argument("sets", nargs="+", type=Path, help="insightface .bin pair sets")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-flip", action="store_true", help="do not add the flipped view")


def run(args: argparse.Namespace) -> int:
    import torch

    from partialfc.eval.verification import verify
    from partialfc.export import load_backbone
    from partialfc.train.evaluation import load_pair_set

    model, _ = load_backbone(args.checkpoint)
    for path in args.sets:
        images, issame = load_pair_set(path)
        result = verify(
            model, images, torch.from_numpy(issame), args.batch_size, flip=not args.no_flip
        )
        print(
            f"{path.stem}: accuracy {result.accuracy:.4f} +- {result.std:.4f} ({issame.shape[0]} pairs)"
        )
    return 0
