"""CurricularFace (Huang et al., CVPR 2020): ArcFace on the target, and hard negatives weighted
by how far training has come.

Follows the official ``head/metrics.py``: cosines clamped to [-1, 1]; target ``cos(theta + m)``
where ``cos > cos(pi - m)``, else ``cos - m*sin(pi - m)``; ``t`` an average of the batch's target
cosines, updated before use; a non-target cosine above the row's ``cos(theta_y + m)`` becomes
``cos * (t + cos)``. Here the average runs over the *global* batch, so ``t`` is the same on every
rank (docs/margins.md lists the differences).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from partialfc.margins.base import Margin, MarginBatch
from partialfc.margins.registry import register


@register("curricularface")
class CurricularFace(Margin):
    """CurricularFace: target ``s*cos(theta + m)``, hard negatives ``s*cos*(t + cos)``.

    Args:
        s: logit scale.
        m: additive angular margin of the target.
        alpha: weight of the newest batch in the moving average ``t`` (0.01 in the paper's code).

    State: the buffer ``t`` (float64, starts at 0), saved in ``state_dict``.
    """

    normalize_embeddings = True
    normalize_weight = True
    needs_target_cos = True  # t and each row's threshold need every row's target cosine
    target_only = False

    def __init__(self, s: float = 64.0, m: float = 0.5, alpha: float = 0.01) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        if not 0.0 <= m < math.pi:
            raise ValueError(f"m must be in [0, pi), got {m}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.scale, self.m, self.alpha = float(s), float(m), float(alpha)
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))

    def _cos_plus_m(self, cos: torch.Tensor) -> torch.Tensor:
        """``cos(theta + m)`` from a cosine in [-1, 1], written as the official code does."""
        sin = torch.sqrt(1.0 - cos * cos)
        return cos * math.cos(self.m) - sin * math.sin(self.m)

    @torch.no_grad()
    def begin_step(self, batch: MarginBatch) -> None:
        mean = batch.target_cos.clamp(-1.0, 1.0).mean().to(self.t.dtype)
        self.t.mul_(1.0 - self.alpha).add_(self.alpha * mean)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        cos = (x * F.normalize(w, dim=1)).sum(1).clamp(-1.0, 1.0)
        # Past pi - m, cos(theta + m) would rise again: a linear fall-back continues instead.
        fallback = cos - self.m * math.sin(math.pi - self.m)
        target = torch.where(cos > math.cos(math.pi - self.m), self._cos_plus_m(cos), fallback)
        return self.scale * target

    def other_logits(self, cos: torch.Tensor, batch: MarginBatch) -> torch.Tensor:
        # The threshold is the target's cos(theta + m) before the fall-back, as in the official
        # code; it needs no gradient (it only selects).
        threshold = self._cos_plus_m(batch.target_cos.clamp(-1.0, 1.0)).to(cos.dtype)
        hard = cos > threshold.unsqueeze(1)  # (B, N)
        t = self.t.to(cos.dtype)
        slope = torch.where(hard, t + 2.0 * cos, 1.0)  # d/dcos of cos * (t + cos)
        cos.copy_(torch.where(hard, cos * (t + cos), cos))
        return slope

    def extra_repr(self) -> str:
        return f"s={self.scale}, m={self.m}, alpha={self.alpha}, t={float(self.t):.6g}"
