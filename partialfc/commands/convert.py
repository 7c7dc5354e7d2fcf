"""``partialfc convert mxnet2torch | torch2mxnet | arcface-torch``: checkpoints between frameworks.

The conversions are :func:`partialfc.legacy.convert.mxnet_to_torch`,
:func:`~partialfc.legacy.convert.torch_to_mxnet` and :func:`partialfc.legacy.arcface_torch.convert`
(their docstrings say what maps to what); this module parses the arguments and prints the summary.
MXNet is imported only by the MXNet directions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partialfc.errors import UserError
from partialfc.legacy.arcface_torch import convert
from partialfc.legacy.convert import mxnet_to_torch, torch_to_mxnet


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``convert`` directions and their arguments."""
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    m2t = sub.add_parser("mxnet2torch", help="insightface MXNet checkpoint -> partialfc checkpoint")
    m2t.add_argument(
        "prefix", help="MXNet checkpoint prefix (PREFIX-symbol.json, PREFIX-%%04d.params)"
    )
    m2t.add_argument("epoch", type=int, help="epoch number of the .params file")
    m2t.add_argument("out", type=Path, help="output folder (a partialfc output_dir)")
    t2m = sub.add_parser("torch2mxnet", help="partialfc checkpoint -> MXNet checkpoint")
    t2m.add_argument("checkpoint", help="a checkpoint folder or a run's output_dir")
    t2m.add_argument("out_prefix", help="MXNet checkpoint prefix to write")
    t2m.add_argument("--epoch", type=int, default=0, help="epoch number to write (default 0)")
    at = sub.add_parser(
        "arcface-torch", help="insightface arcface_torch output folder -> partialfc checkpoint"
    )
    at.add_argument("src", type=Path, help="its output folder (model.pt, checkpoint_gpu_*.pt)")
    at.add_argument("out", type=Path, help="output folder (a partialfc output_dir)")
    at.add_argument(
        "--gradient-acc",
        type=int,
        default=1,
        help="the run's config.gradient_acc: global_step counts micro-batches (default 1)",
    )
    at.add_argument("--no-progress", action="store_true", help="hide the progress of the loading")


def _run_arcface_torch(args: argparse.Namespace) -> int:
    if args.gradient_acc < 1:
        raise UserError(f"--gradient-acc: must be >= 1, got {args.gradient_acc}")
    done = convert(
        args.src, args.out, gradient_acc=args.gradient_acc, progress=not args.no_progress
    )
    if not done.num_classes:
        print(f"wrote {done.path}: the backbone of {args.src / 'model.pt'}, no class centres")
        return 0
    state = ", ".join(done.optimizer_state) or "none (starts fresh)"
    print(
        f"wrote {done.path}: step {done.step}, {done.num_classes} class centres of width "
        f"{done.embedding_size} from {done.ranks} rank(s), their optimizer state: {state}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs ``partialfc convert DIRECTION``."""
    if args.direction == "arcface-torch":
        return _run_arcface_torch(args)
    if args.direction == "mxnet2torch":
        done = mxnet_to_torch(args.prefix, args.epoch, args.out)
        target = str(done.path)
    else:
        done = torch_to_mxnet(args.checkpoint, args.out_prefix, args.epoch)
        target = f"{args.out_prefix}-symbol.json, {args.out_prefix}-{args.epoch:04d}.params"
    centres = (
        f"{done.num_classes} class centres of width {done.embedding_size}"
        if done.num_classes
        else "no class centres"
    )
    backbone = f"backbone {done.backbone}" if done.backbone else "no backbone"
    print(f"wrote {target}: {centres}, {backbone}")
    if done.unmapped:
        print(f"not converted ({len(done.unmapped)}): {', '.join(done.unmapped[:10])}")
    return 0
