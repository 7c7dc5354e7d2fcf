"""Sub-centres (Deng et al., ECCV 2020): K rows per class, the class's logit from its closest row.

Legend as in :mod:`partialfc.heads._core`; K = sub-centres per class. A shard holds the rows of its
classes class-major: local row ``c*K + k`` is sub-centre k of local class c (global row
``(class_start + c)*K + k``), so a class's rows never split across ranks and sampling, which picks
classes, takes all K rows of each. The core scores every row, reduces each class's K columns to
their maximum (after dividing by the row norms: the closest sub-centre in angle), and from there
on works on (B, N) class columns exactly as with one row per class; in backward the class
column's gradient goes to the row that won the maximum, as ``max`` differentiates.
"""

from __future__ import annotations

import torch

from partialfc.margins import Margin


def expand_rows(index: torch.Tensor | None, sub_centers: int) -> torch.Tensor | None:
    """Sorted local classes (N,) -> their sorted local rows (N*K,); None (every row) stays."""
    if index is None or sub_centers == 1:
        return index
    offsets = torch.arange(sub_centers, device=index.device, dtype=index.dtype)
    return (index.unsqueeze(1) * sub_centers + offsets).reshape(-1)


def reduce_max(scores: torch.Tensor, sub_centers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N*K) row scores -> (B, N) class scores (the maximum over each class's K rows) and the
    winning sub-centre (B, N) as uint8 (K <= 255), the first on a tie as ``torch.max``."""
    batch, rows = scores.shape
    best, which = scores.view(batch, rows // sub_centers, sub_centers).max(dim=2)
    return best, which.to(torch.uint8)


def expand_grad(grad: torch.Tensor, which: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """(B, N) gradient of the class scores -> (B, N*K) gradient of the row scores: each class
    column's value at the row that won the maximum, zero at its other K - 1 rows."""
    batch, num = grad.shape
    out = grad.new_zeros((batch, num, sub_centers))
    out.scatter_(2, which.long().unsqueeze(2), grad.unsqueeze(2))
    return out.view(batch, num * sub_centers)


def winning_rows(
    target_class: torch.Tensor, col: torch.Tensor, which: torch.Tensor, sub_centers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's target sub-centre: (local row in [0, C_r*K), column in [0, N*K)) from its local
    class ``target_class`` (B,), its class column ``col`` (B,) and the winners ``which`` (B, N)
    (junk, but in range, where the shard does not own the row's class)."""
    if which.shape[1] == 0:
        k = torch.zeros_like(col)
    else:
        k = which.gather(1, col.unsqueeze(1)).squeeze(1).long()
    return target_class * sub_centers + k, col * sub_centers + k


def check(sub_centers: int, margin: Margin, fused: bool | str) -> None:
    """Refuse what cannot take sub-centres: sub-centres compare angles, so the margin must
    normalise its centres; and no fused kernel scores K rows per class.

    Raises:
        ValueError: a bad count, a margin without normalised centres, or ``fused=True``.
    """
    if isinstance(sub_centers, bool) or not isinstance(sub_centers, int) or sub_centers < 1:
        raise ValueError(f"sub_centers must be an integer >= 1, got {sub_centers!r}")
    if sub_centers > 255:
        raise ValueError(f"sub_centers must be at most 255, got {sub_centers}")
    if sub_centers == 1:
        return
    if not margin.normalize_weight or margin.has_bias:
        raise ValueError(
            f"sub_centers = {sub_centers} needs an angular margin (normalised centres: ArcFace, "
            f"CosFace, CurricularFace, ...); {type(margin).__name__} scores raw dot products, "
            "whose maximum over a class's rows is not its closest sub-centre"
        )
    if fused is True:
        raise ValueError(
            "fused=True cannot run sub-centres (the kernels score one row per class); use "
            "fused='auto' (falls back to the reference path) or fused=False"
        )
