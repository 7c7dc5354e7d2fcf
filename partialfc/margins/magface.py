"""MagFace (Meng et al., CVPR 2021): a margin that grows with the embedding's norm, and a
regulariser that pushes the norm of easy samples up.

Follows the official ``models/magface.py`` (``MagLinear``, ``MagLoss``): ``a = clamp(|x|, l_a,
u_a)`` of the raw embedding, with its gradient; ``m(a)`` linear from ``l_m`` at ``l_a`` to ``u_m``
at ``u_a``; target ``cos(theta + m(a))`` on the cosine clamped to [-1, 1], with the easy-margin
rule (keep ``cos`` where ``cos <= 0``) or the fall-back ``cos - m(a)*sin(pi - m(a))`` below
``cos(pi - m(a))``; loss = cross-entropy + ``lambda_g * mean(a/u_a^2 + 1/a)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from partialfc.margins.base import Margin, MarginBatch
from partialfc.margins.registry import register


@register("magface")
class MagFace(Margin):
    """MagFace: target ``s*cos(theta + m(a))`` with ``a`` the clamped norm of the raw embedding.

    Args:
        s: logit scale.
        l_a: lower bound of the norm ``a``.
        u_a: upper bound of the norm ``a``.
        l_m: margin at ``a = l_a``.
        u_m: margin at ``a = u_a``.
        lambda_g: weight of the regulariser ``g(a) = a/u_a^2 + 1/a`` (averaged over the batch).
        easy_margin: keep the plain cosine where it is <= 0 (the official default), instead of
            the fall-back below ``cos(pi - m)``.

    The head reports ``|x|`` of the last forward as ``head.last_norms`` (the quality MagFace
    learns).
    """

    normalize_embeddings = True
    normalize_weight = True
    needs_norms = True

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        if not 0 < l_a < u_a:
            raise ValueError(f"need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        if not 0 <= l_m <= u_m < math.pi:
            raise ValueError(f"need 0 <= l_m <= u_m < pi, got l_m={l_m}, u_m={u_m}")
        if not lambda_g >= 0:
            raise ValueError(f"lambda_g must be >= 0, got {lambda_g}")
        self.scale = float(s)
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)

    def _a(self, norms: torch.Tensor) -> torch.Tensor:
        return norms.clamp(self.l_a, self.u_a)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        if batch is None or batch.norms is None:
            raise ValueError("MagFace needs the embeddings' norms (MarginBatch.norms)")
        a = self._a(batch.norms)
        m = (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m
        cos = (x * F.normalize(w, dim=1)).sum(1).clamp(-1.0, 1.0)
        sin = torch.sqrt(1.0 - cos * cos)
        cos_m = cos * torch.cos(m) - sin * torch.sin(m)
        if self.easy_margin:
            target = torch.where(cos > 0, cos_m, cos)
        else:
            fallback = cos - torch.sin(math.pi - m) * m
            target = torch.where(cos > torch.cos(math.pi - m), cos_m, fallback)
        return self.scale * target

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        a = self._a(norms)
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a).mean()

    def extra_repr(self) -> str:
        return (
            f"s={self.scale}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
            f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}"
        )
