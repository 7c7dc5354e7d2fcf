"""The classic margins: the combined margin (NormFace, ArcFace, CosFace), A-Softmax, L-Softmax and
plain softmax. All are target-only: every non-target logit is the plain scaled logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from partialfc.margins.base import Margin, MarginBatch, annealed_lambda, combined_psi
from partialfc.margins.registry import register


@register("combined")
class CombinedMargin(Margin):
    """``s * ((-1)^k cos(m1*theta + m2) - 2k - m3)`` on the target, ``s * cos`` elsewhere.

    Args:
        s: logit scale.
        m1: multiplicative angular margin (SphereFace), >= 1.
        m2: additive angular margin (ArcFace), >= 0.
        m3: additive cosine margin (CosFace), >= 0.
        straight_through: the target logit takes the margin's value but back-propagates as if it
            were ``s * cos`` (what insightface arcface_torch does); off gives the exact gradient.
    """

    normalize_embeddings = True
    normalize_weight = True

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        if not m1 >= 1.0:
            raise ValueError(f"m1 must be >= 1, got {m1}")
        if not m2 >= 0.0:
            raise ValueError(f"m2 must be >= 0, got {m2}")
        if not m3 >= 0.0:
            raise ValueError(f"m3 must be >= 0, got {m3}")
        self.scale = float(s)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.straight_through = bool(straight_through)

    @property
    def s(self) -> float:
        return self.scale

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        cos = (x * F.normalize(w, dim=1)).sum(1)
        margin_logit = self.scale * combined_psi(cos, self.m1, self.m2, self.m3)
        if self.straight_through:
            plain = self.scale * cos
            return plain + (margin_logit - plain).detach()
        return margin_logit

    def extra_repr(self) -> str:
        st = ", straight_through=True" if self.straight_through else ""
        return f"s={self.scale}, m1={self.m1}, m2={self.m2}, m3={self.m3}{st}"


@register("arcface")
class ArcFace(CombinedMargin):
    """ArcFace: additive angular margin, ``s * cos(theta + m)`` on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.5, straight_through: bool = False) -> None:
        if not m >= 0.0:
            raise ValueError(f"m must be >= 0, got {m}")
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, straight_through=straight_through)


@register("cosface")
class CosFace(CombinedMargin):
    """CosFace / AM-Softmax: additive cosine margin, ``s * (cos(theta) - m)`` on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.4, straight_through: bool = False) -> None:
        if not m >= 0.0:
            raise ValueError(f"m must be >= 0, got {m}")
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m, straight_through=straight_through)


@register("normface")
class NormFace(CombinedMargin):
    """NormFace: normalised softmax, ``s * cos`` everywhere, no margin."""

    def __init__(self, s: float = 64.0) -> None:
        super().__init__(s=s, m1=1.0, m2=0.0, m3=0.0)


class _AnnealedMargin(Margin):
    """Shared state of A-Softmax and L-Softmax: the multiplicative margin and lambda annealing.

    ``iteration`` counts forward calls (1 on the first) and is saved in ``state_dict`` so a resumed
    run continues the schedule where it stopped.
    """

    def __init__(self, m: int, base: float, gamma: float, power: float, lambda_min: float) -> None:
        super().__init__()
        if int(m) != m or m < 1:
            raise ValueError(f"m must be a positive integer, got {m}")
        if base < 0 or gamma < 0 or power < 0 or lambda_min < 0:
            raise ValueError(
                "base, gamma, power and lambda_min must be >= 0, got "
                f"{base}, {gamma}, {power}, {lambda_min}"
            )
        self.m = int(m)
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.iteration = 0

    def current_lambda(self) -> float:
        """Lambda of the most recent forward call (of the next one before any call)."""
        t = max(self.iteration, 1)
        return annealed_lambda(t, self.base, self.gamma, self.power, self.lambda_min)

    def _blend(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(lam*cos + psi) / (1 + lam)`` for each row; advances the iteration counter."""
        self.iteration += 1
        lam = annealed_lambda(self.iteration, self.base, self.gamma, self.power, self.lambda_min)
        cos = (F.normalize(x, dim=1) * F.normalize(w, dim=1)).sum(1)
        psi = combined_psi(cos, float(self.m), 0.0, 0.0)
        return (lam * cos + psi) / (1.0 + lam)

    def get_extra_state(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])

    def extra_repr(self) -> str:
        return (
            f"m={self.m}, base={self.base}, gamma={self.gamma}, power={self.power}, "
            f"lambda_min={self.lambda_min}, iteration={self.iteration}"
        )


@register("sphereface")
class SphereFace(_AnnealedMargin):
    """A-Softmax (SphereFace) as in the original code: centres normalised, embeddings not.

    Target ``|x| * (lam*cos + psi(theta)) / (1 + lam)`` with ``psi`` the combined margin
    ``(m, 0, 0)``; other logits ``|x| * cos``; ``lam`` annealed per forward call.
    """

    normalize_weight = True

    def __init__(
        self,
        m: int = 4,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(m, base, gamma, power, lambda_min)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        return x.norm(dim=1) * self._blend(x, w)


@register("lsoftmax")
class LSoftmax(_AnnealedMargin):
    """L-Softmax: nothing normalised; target ``|w_y||x| (lam*cos + psi) / (1 + lam)``."""

    def __init__(
        self,
        m: int = 4,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(m, base, gamma, power, lambda_min)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor:
        return x.norm(dim=1) * w.norm(dim=1) * self._blend(x, w)


@register("softmax")
class Softmax(Margin):
    """Plain softmax: logits ``x . w_j (+ b_j)``, no margin, nothing normalised.

    Args:
        bias: give every class a learnt bias ``b_j``.
    """

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.has_bias = bool(bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None) -> None:
        return None

    def extra_repr(self) -> str:
        return f"bias={self.has_bias}"
