"""The trained backbone for inference (``partialfc export CHECKPOINT --onnx model.onnx``).

:func:`~partialfc.checkpoint.load_backbone` rebuilds a checkpoint's backbone from its
``config.json`` and weights; :func:`export_onnx` exports it with a dynamic batch
dimension and checked against onnxruntime: the largest difference, relative to the embeddings'
scale (``max|ort - torch| / max(1, max|torch|)``), and the largest difference of the unit
embeddings (what verification compares) must both stay within ``--atol`` (1e-4 by default).
``--state-dict`` writes the plain backbone ``state_dict`` for PyTorch users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# Where the command and earlier code found it; it reads checkpoints, so it lives with them.
from partialfc.checkpoint import load_backbone

__all__ = ["export_onnx", "load_backbone"]


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
