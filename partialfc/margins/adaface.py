"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to image quality, read off the norm.

Follows the official ``head.py``: ``n = clamp(|x|, 0.001, 100)`` without gradient; moving
averages of the batch's mean and unbiased standard deviation of ``n`` (initially 20 and 100),
updated before use; ``z = clamp(h * (n - mean) / (std + 0.001), -1, 1)``; every cosine clamped to
``[-1 + 0.001, 1 - 0.001]``; target ``cos(clamp(theta - m*z, 0.001, pi - 0.001)) - (m + m*z)``.
Here the statistics are those of the *global* batch, the same on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from partialfc.margins.base import Margin, MarginBatch
from partialfc.margins.registry import register

EPS = 1e-3  # the official code's single epsilon: cosine clamp, angle clamp and std offset


@register("adaface")
class AdaFace(Margin):
    """AdaFace: angular margin ``-m*z`` and additive margin ``m + m*z``, ``z`` the norm's score.

    Args:
        s: logit scale.
        m: margin.
        h: concentration: how many standard deviations of the norm map to ``z = ±1``, inverted.
        t_alpha: weight of the newest batch in the moving averages (the official training
            default 0.01; the class default there is 1.0).

    State: buffers ``batch_mean`` and ``batch_std`` (float64), saved in ``state_dict``.
    """

    normalize_embeddings = True
    normalize_weight = True
    needs_norms = True
    cos_limit = 1.0 - EPS

    def __init__(
        self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01
    ) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        if not m >= 0:
            raise ValueError(f"m must be >= 0, got {m}")
        if not h >= 0:
            raise ValueError(f"h must be >= 0, got {h}")
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"t_alpha must be in [0, 1], got {t_alpha}")
        self.scale, self.m, self.h, self.t_alpha = float(s), float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.full((), 20.0, dtype=torch.float64))
        self.register_buffer("batch_std", torch.full((), 100.0, dtype=torch.float64))

    @staticmethod
    def _safe(norms: torch.Tensor) -> torch.Tensor:
        return norms.detach().clamp(0.001, 100.0)

    @torch.no_grad()
    def begin_step(self, batch: MarginBatch) -> None:
        n = self._safe(batch.norms)
        for buf, value in ((self.batch_mean, n.mean()), (self.batch_std, n.std())):
            buf.mul_(1.0 - self.t_alpha).add_(self.t_alpha * value.to(buf.dtype))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        if batch is None or batch.norms is None:
            raise ValueError("AdaFace needs the embeddings' norms (MarginBatch.norms)")
        n = self._safe(batch.norms)
        z = (self.h * (n - self.batch_mean) / (self.batch_std + EPS)).clamp(-1.0, 1.0)
        z = z.to(x.dtype)
        cos = (x * F.normalize(w, dim=1)).sum(1).clamp(-1.0 + EPS, 1.0 - EPS)
        theta = (torch.acos(cos) - self.m * z).clamp(EPS, math.pi - EPS)
        return self.scale * (torch.cos(theta) - (self.m + self.m * z))

    def extra_repr(self) -> str:
        return (
            f"s={self.scale}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}, "
            f"batch_mean={float(self.batch_mean):.6g}, batch_std={float(self.batch_std):.6g}"
        )
