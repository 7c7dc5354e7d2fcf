"""The trained backbone for inference (``partialfc export CHECKPOINT --onnx model.onnx``).

:func:`~partialfc.checkpoint.load_backbone` rebuilds a checkpoint's backbone from its
``config.json`` and weights; :func:`export_onnx` exports it with the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) with a dynamic batch dimension and checks it against
onnxruntime at batch sizes 1 and 7: the largest difference, relative to the embeddings' scale
(``max|ort - torch| / max(1, max|torch|)``), and the largest difference of the unit embeddings
(what verification compares) must both stay within ``--atol`` (1e-4 by default). ``--fp16``
writes float16 weights, inputs and outputs, checked against the float32 model within 2e-2.
``--state-dict`` writes the plain backbone ``state_dict`` for PyTorch users.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

# Where the command and earlier code found it; it reads checkpoints, so it lives with them.
from partialfc.checkpoint import load_backbone

if TYPE_CHECKING:
    from torch.onnx import ONNXProgram

__all__ = ["FP16_ATOL", "FP32_ATOL", "export_onnx", "load_backbone", "onnx_program"]

# Dimensions the exporter keeps symbolic: the batch only (faces are always aligned to a fixed size).
BATCH = "batch"
# Defaults of ``--atol``: float32 reproduces PyTorch to rounding; float16 keeps 11 significant bits,
# so each layer adds rounding error: 3e-4 (tinyface) to 1.5e-2 (mobilefacenet) measured (README).
FP32_ATOL = 1e-4
FP16_ATOL = 2e-2


def export_onnx(
    model: nn.Module,
    out: str | Path,
    image_size: int = 112,
    atol: float | None = None,
    opset: int = 18,
    fp16: bool = False,
) -> float:
    """Export ``model`` with a dynamic batch axis; return the worst (scaled) difference to onnxruntime.

    Uses the dynamo exporter (``torch.export`` then onnxscript), the one torch keeps; the
    TorchScript exporter is deprecated. The written model is checked on onnxruntime's CPU provider
    at batch sizes 1 and 7, neither of which the export saw, against ``model`` in float32.

    Args:
        model: the backbone; it is not modified (the float16 export converts a copy).
        out: the ``.onnx`` file to write.
        image_size: side of the square input images.
        atol: largest accepted difference; ``FP32_ATOL`` or, with ``fp16``, ``FP16_ATOL``.
        opset: the ONNX opset to target.
        fp16: write float16 weights; the model then takes and returns float16 tensors.

    Raises:
        RuntimeError: onnxruntime's output differs from PyTorch's by more than ``atol``.
    """
    import onnxruntime as ort

    if atol is None:
        atol = FP16_ATOL if fp16 else FP32_ATOL
    model = model.eval()
    exported = copy.deepcopy(model).half() if fp16 else model
    dtype = torch.float16 if fp16 else torch.float32
    program = onnx_program(exported, torch.randn(2, 3, image_size, image_size, dtype=dtype), opset)
    program.save(str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 7):  # batch sizes the export never saw: the axis really is dynamic
        images = torch.randn(
            batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch)
        )
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.to(dtype).numpy()})[0].astype(np.float32)
        scaled = np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max()))
        unit = np.abs(_unit(got) - _unit(expected)).max()
        worst = max(worst, float(scaled), float(unit))
    if not worst <= atol:  # also catches NaN
        raise RuntimeError(
            f"onnxruntime differs from PyTorch by {worst:.2e} (> {atol:g}, scaled) in {out}"
        )
    return worst


def onnx_program(model: nn.Module, example: torch.Tensor, opset: int = 18) -> ONNXProgram:
    """``model`` as an ONNX program (input ``images``, output ``embeddings``), batch dynamic."""
    with warnings.catch_warnings(), _quiet_registration():
        # torch.export's own graph copy calls pytree's deprecated LeafSpec check (torch 2.13):
        # nothing this call can change, and not the exporter deprecation users must act on.
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
        )
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes=({0: torch.export.Dim(BATCH)},),
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    return program


@contextlib.contextmanager
def _quiet_registration() -> Iterator[None]:
    # The exporter logs a warning per torchvision operator it cannot register when torchvision is
    # absent; no backbone uses them.
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
