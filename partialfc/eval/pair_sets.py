"""Verification pair sets (insightface ``.bin``) decoded once per process, as the model sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Decoding a set costs seconds; training evaluates the same sets every few hundred steps.
_CACHE: dict[str, tuple[torch.Tensor, np.ndarray]] = {}


def load_pair_set(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Decoded images (N, 3, H, W) float32 in [-1, 1] and the (N/2,) same-flags of a .bin set.

    Raises:
        UserFileError: the file is missing.
        DatasetError: it is not a verification set (see :func:`partialfc.data.read_bin`).
    """
    key = str(path)
    if key not in _CACHE:
        from partialfc.data import read_bin
        from partialfc.data.dataset import normalize
        from partialfc.data.images import decode_image

        encoded, issame = read_bin(path)
        images = np.stack([decode_image(b) for b in encoded])  # (N, H, W, 3) uint8 RGB
        # The loaders' own normalisation, so evaluation sees exactly what training saw.
        tensor = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        _CACHE[key] = (tensor, np.asarray(issame, dtype=bool))
    return _CACHE[key]
