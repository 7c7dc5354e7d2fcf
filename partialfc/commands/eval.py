"""``partialfc eval MODEL SET.bin [SET.bin ...]``: 10-fold verification of a checkpoint or ONNX model.

Prints, per set, insightface's numbers: the accuracy (with flip), VAL@FAR=1e-3 and XNorm.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``eval`` arguments."""
    parser.add_argument("model", help="a checkpoint folder, a run's output_dir or an .onnx model")
    parser.add_argument("sets", nargs="+", type=Path, help="insightface .bin pair sets")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-flip", action="store_true", help="do not add the flipped view")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc eval``."""
    import torch

    from partialfc.eval import load_pair_set
    from partialfc.eval.models import load_model
    from partialfc.eval.verification import verify
    from partialfc.progress import Progress

    model, _ = load_model(args.model)
    for path in args.sets:
        images, issame = load_pair_set(path)
        with Progress(images.shape[0], path.stem, "img", not args.no_progress) as progress:
            result = verify(
                model, images, torch.from_numpy(issame), args.batch_size, not args.no_flip, progress
            )
        print(
            f"{path.stem}: accuracy {result.accuracy:.4f} +- {result.std:.4f} ({issame.shape[0]} pairs)"
            f"  VAL {result.val:.4f} +- {result.val_std:.4f} @ FAR {result.far:.2e}"
            f"  XNorm {result.xnorm:.3f}"
        )
    return 0
