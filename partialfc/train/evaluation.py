"""Verification during and after training, with the embedding work split across ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partialfc.distributed import all_gather_no_grad
from partialfc.eval.verification import embed, fold_accuracy
from partialfc.train.runtime import Runtime

_CACHE: dict[str, tuple[torch.Tensor, np.ndarray]] = {}


def load_pair_set(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Decoded images (N, 3, H, W) float32 in [-1, 1] and the (N/2,) same-flags of a .bin set."""
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


@torch.no_grad()
def evaluate_sets(
    backbone: nn.Module, paths: list[str], batch_size: int, rt: Runtime
) -> dict[str, float]:
    """10-fold verification accuracy of each set; every rank embeds a contiguous slice of it."""
    results = {}
    for path in paths:
        images, issame = load_pair_set(path)
        n = images.shape[0]
        per = -(
            -n // rt.world_size
        )  # ceil: the last slice is padded so the gather sees equal sizes
        mine = images[rt.rank * per : (rt.rank + 1) * per]
        emb = embed(backbone, mine, batch_size).to(rt.device)  # (<= per, D) unit rows
        padded = F.pad(emb, (0, 0, 0, per - emb.shape[0]))
        every = all_gather_no_grad(padded, None)[:n].cpu().numpy()
        results[Path(path).stem] = fold_accuracy(every[0::2], every[1::2], issame).accuracy
    return results
