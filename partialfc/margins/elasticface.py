"""ElasticFace (Boutros et al., CVPRW 2022): a margin drawn per sample from a normal law.

Follows the official ``utils/losses.py`` (``ElasticArcFace``, ``ElasticCosFace``): cosines clamped
to [-1, 1]; ``m_i ~ N(m, std)``; kind "arc": target ``cos(acos(cos) + m_i)``, kind "cos":
``cos - m_i``. The draws come from a generator seeded by (seed, step), on the CPU, for the whole
global batch: a resumed run draws the same margins, on any device and any number of ranks.

``plus``: the sample with the k-th largest target cosine (over the global batch) gets the k-th
smallest margin, as the paper describes. The official code indexes the sorted margins with the
sort order of the cosines (``margin[argsort]``), which hands sample i the margin of rank
``argsort[i]``: not that pairing (docs/margins.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from partialfc.margins.base import Margin, MarginBatch
from partialfc.margins.registry import register
from partialfc.seeding import generator

KINDS = ("arc", "cos")


@register("elasticface")
class ElasticFace(Margin):
    """ElasticFace: ArcFace ("arc") or CosFace ("cos") with a margin ``m_i ~ N(m, std)`` per row.

    Args:
        s: logit scale.
        m: mean margin.
        std: standard deviation of the margin (the paper's arc setting 0.05; 0.0175 for arc+).
        kind: "arc" (angular) or "cos" (cosine).
        plus: give larger margins to harder samples (smaller target cosine), ElasticFace+.
    """

    normalize_embeddings = True
    normalize_weight = True

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.5,
        std: float = 0.05,
        kind: str = "arc",
        plus: bool = False,
    ) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.scale, self.m, self.std, self.kind = float(s), float(m), float(std), kind
        self.plus = bool(plus)
        self.needs_target_cos = self.plus  # the pairing sorts the global batch's target cosines

    def row_margins(self, batch: MarginBatch, like: torch.Tensor) -> torch.Tensor:
        """The margins (B,) of the global batch of ``batch``'s step, as ``like`` (B,) is."""
        gen = generator("elasticface", batch.seed, batch.step)  # CPU: the same on any device
        draw = torch.randn(like.shape[0], generator=gen, dtype=torch.float64) * self.std + self.m
        draw = draw.to(device=like.device, dtype=like.dtype)
        if not self.plus:
            return draw
        order = torch.sort(batch.target_cos, descending=True, stable=True).indices
        paired = torch.empty_like(draw)
        paired[order] = draw.sort().values  # k-th largest cosine <- k-th smallest margin
        return paired

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        cos = (x * F.normalize(w, dim=1)).sum(1).clamp(-1.0, 1.0)
        m = self.row_margins(batch or MarginBatch(), cos.detach())
        if self.kind == "arc":
            return self.scale * torch.cos(torch.acos(cos) + m)
        return self.scale * (cos - m)

    def extra_repr(self) -> str:
        return f"s={self.scale}, m={self.m}, std={self.std}, kind={self.kind!r}, plus={self.plus}"
