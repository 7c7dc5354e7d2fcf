"""``partialfc export CHECKPOINT --onnx model.onnx``: the trained backbone for inference.

The checkpoint folder (or a run's ``output_dir``: its newest checkpoint) holds the run's
``config.json``, which names the backbone; its weights are loaded, exported with a dynamic batch
dimension and checked against onnxruntime: the largest difference, relative to the embeddings'
scale (``max|ort - torch| / max(1, max|torch|)``), and the largest difference of the unit
embeddings (what verification compares) must both stay within ``--atol`` (1e-4 by default).
``--state-dict`` writes the plain backbone ``state_dict`` for PyTorch users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from partialfc import backbones
from partialfc.train.checkpoint import resolve
from partialfc.train.config import Config


def load_backbone(path: str | Path) -> tuple[nn.Module, Config]:
    """The backbone of a checkpoint, in eval mode, with the run's config."""
    ckpt = resolve(path)
    config_file = ckpt / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{ckpt} has no config.json; was it written by partialfc's trainer?"
        )
    cfg = Config.from_saved(json.loads(config_file.read_text()))
    model = backbones.create(
        cfg.model.backbone, embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout
    )
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=ckpt, no_dist=True)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def export_onnx(
    model: nn.Module, out: str | Path, image_size: int = 112, atol: float = 1e-4, opset: int = 17
) -> float:
    """Export ``model`` with a dynamic batch axis; return the worst (scaled) difference to onnxruntime.

    Raises:
        RuntimeError: onnxruntime's output differs from PyTorch's by more than ``atol``.
    """
    import onnxruntime as ort

    model = model.eval()
    example = torch.randn(2, 3, image_size, image_size)
    torch.onnx.export(
        model, (example,), str(out), input_names=["images"], output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=opset, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):  # a batch size the export never saw: the axis really is dynamic
        images = torch.randn(
            batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch)
        )
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        scaled = np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max()))
        unit = np.abs(_unit(got) - _unit(expected)).max()
        worst = max(worst, float(scaled), float(unit))
    if worst > atol:
        raise RuntimeError(
            f"onnxruntime differs from PyTorch by {worst:.2e} (> {atol:g}, scaled) in {out}"
        )
    return worst


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder or a run's output_dir")
    parser.add_argument("--onnx", type=Path, help="write an ONNX model here")
    parser.add_argument(
        "--state-dict", type=Path, help="write the backbone's state_dict here (torch.save)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted ONNX difference")


def run(args: argparse.Namespace) -> int:
    if args.onnx is None and args.state_dict is None:
        raise SystemExit("partialfc export: give --onnx and/or --state-dict")
    model, cfg = load_backbone(args.checkpoint)
    if args.state_dict is not None:
        torch.save(model.state_dict(), args.state_dict)
        print(
            f"wrote {args.state_dict} ({cfg.model.backbone}, embedding {cfg.model.embedding_size})"
        )
    if args.onnx is not None:
        worst = export_onnx(model, args.onnx, atol=args.atol)
        print(f"wrote {args.onnx}; onnxruntime matches PyTorch to {worst:.1e}")
    return 0
