"""``partialfc export CHECKPOINT --onnx model.onnx [--state-dict model.pt]``.

The checkpoint folder (or a run's ``output_dir``: its newest checkpoint) names its backbone in its
``config.json``; the weights are exported to ONNX and checked against onnxruntime
(:func:`partialfc.export.export_onnx`), or written as a plain ``state_dict`` for PyTorch users.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partialfc.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``export`` arguments."""
    parser.add_argument("checkpoint", help="a checkpoint folder or a run's output_dir")
    parser.add_argument("--onnx", type=Path, help="write an ONNX model here")
    parser.add_argument(
        "--state-dict", type=Path, help="write the backbone's state_dict here (torch.save)"
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights, inputs and outputs (half the size; checked against float32)",
    )
    parser.add_argument(
        "--atol",
        type=float,
        help="largest accepted ONNX difference (1e-4; 2e-2 with --fp16)",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc export``."""
    import torch

    from partialfc.checkpoint import load_backbone
    from partialfc.export import export_onnx

    if args.onnx is None and args.state_dict is None:
        raise UserError("partialfc export: give --onnx and/or --state-dict")
    model, saved = load_backbone(args.checkpoint)
    if args.state_dict is not None:
        torch.save(model.state_dict(), args.state_dict)
        print(f"wrote {args.state_dict} ({saved.backbone}, embedding {saved.embedding_size})")
    if args.onnx is not None:
        worst = export_onnx(model, args.onnx, atol=args.atol, fp16=args.fp16)
        kind = " (float16)" if args.fp16 else ""
        print(f"wrote {args.onnx}{kind}; onnxruntime matches PyTorch to {worst:.1e}")
    return 0
