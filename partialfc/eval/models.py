"""The model an evaluation command embeds with: a partialfc checkpoint or an ONNX file.

Both become an ``nn.Module`` mapping normalised images (N, 3, H, W), float32 in [-1, 1], to raw
embeddings (N, D), so one embedding path serves both. onnxruntime is imported only for ONNX.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from partialfc.errors import UserFileError

log = logging.getLogger(__name__)


class OnnxBackbone(nn.Module):
    """An ONNX face model run by onnxruntime, as a module (it has no parameters to train).

    A model exported with a fixed batch size is fed in chunks of that size, the last one padded.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        super().__init__()
        import onnxruntime as ort

        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("onnxruntime has no CUDA provider here: %s runs on the CPU", path)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=providers)
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.fixed_batch = spec.shape[0] if isinstance(spec.shape[0], int) else None
        # `partialfc export --fp16` writes a model that takes float16 images.
        self.input_dtype = np.float16 if spec.type == "tensor(float16)" else np.float32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu().numpy().astype(self.input_dtype, copy=False)
        if self.fixed_batch is None:
            out = self.session.run(None, {self.input_name: x})[0]
        else:
            b, chunks = self.fixed_batch, []
            for start in range(0, x.shape[0], b):
                part = x[start : start + b]
                padded = np.concatenate(
                    [part, np.zeros((b - part.shape[0], *part.shape[1:]), part.dtype)]
                )
                chunks.append(self.session.run(None, {self.input_name: padded})[0][: part.shape[0]])
            out = np.concatenate(chunks)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(images.device)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """The model at ``path`` in eval mode on ``device``, and a one-line description.

    Args:
        path: an ``.onnx`` file, a partialfc checkpoint folder, or a run's ``output_dir`` (its
            newest complete checkpoint).
        device: where to run it.

    Raises:
        UserFileError: ``path`` does not exist, or holds no partialfc checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise UserFileError(f"{path}: no such model (an .onnx file or a checkpoint folder)")
    if path.suffix.lower() == ".onnx":
        return OnnxBackbone(path, device).eval(), f"ONNX {path.name}"
    from partialfc.checkpoint import load_backbone  # raises UserFileError naming the folder

    model, saved = load_backbone(path)
    described = f"{saved.backbone} (embedding {saved.embedding_size}) from {path}"
    return model.to(device).eval(), described
