"""The margin contract and the maths the margins share, on plain tensors.

A margin tells the head four things:

* whether the embeddings and the class centres are L2-normalised before the big GEMM;
* ``scale``: every non-target logit is ``scale * (x . w_j)`` (+ ``b_j`` for a bias), with ``x`` and
  ``w_j`` normalised as above, so non-target logits are linear in the GEMM output; unless
  ``cos_limit`` clamps the non-target cosines, or ``target_only`` is False and
  :meth:`Margin.other_logits` reshapes them (CurricularFace);
* ``forward(x, w, batch)``: the target logit of each row, from the row's embedding and its class
  centre (a per-row computation, B x D work, differentiated by autograd, so the gradient is
  exact); ``None`` when the target logit is the plain logit (no margin);
* what it needs from the whole global batch (:class:`MarginBatch`): the raw embeddings' norms,
  the target cosines of every row, the step; and :meth:`Margin.begin_step`, which updates its
  state (buffers) from them once per forward, identically on every rank.

Nothing here touches ``torch.distributed`` or chooses a device: the inputs decide both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

COS_EPS = 1e-7
"""Cosines are clamped to ``[-1 + COS_EPS, 1 - COS_EPS]`` before ``acos`` (finite gradient)."""


def clamp_cos(cos: torch.Tensor) -> torch.Tensor:
    """Clamp cosines into the open interval where ``acos`` has a finite derivative."""
    return cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)


def combined_psi(cos: torch.Tensor, m1: float, m2: float, m3: float) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m1*theta + m2) - 2k - m3`` with ``k = floor((m1*theta + m2)/pi)``.

    The ``(-1)^k ... - 2k`` continuation (SphereFace's) keeps psi continuous and monotone
    decreasing in theta on ``[0, pi]`` for any ``m1 >= 1, m2 >= 0``, where a bare
    ``cos(m1*theta + m2)`` would turn back up past ``pi``.

    Args:
        cos: cosines of the target angle, any shape; clamped before ``acos``.
        m1: multiplicative angular margin (SphereFace).
        m2: additive angular margin (ArcFace).
        m3: additive cosine margin (CosFace / AM-Softmax).
    """
    theta = torch.acos(clamp_cos(cos))
    phi = m1 * theta + m2
    k = torch.floor(phi / math.pi).detach()
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
    return sign * torch.cos(phi) - 2.0 * k - m3


def annealed_lambda(t: int, base: float, gamma: float, power: float, lambda_min: float) -> float:
    """SphereFace's annealing weight ``max(lambda_min, base * (1 + gamma*t)^(-power))``."""
    return max(lambda_min, base * (1.0 + gamma * t) ** (-power))


@dataclass(frozen=True)
class MarginBatch:
    """What the head tells a margin about the global batch (B rows) of one forward.

    The same on every rank: the head builds it from the gathered batch (and, for ``target_cos``,
    one all-reduce).
    """

    norms: torch.Tensor | None = None
    """(B,) ``|x|`` of the raw embeddings, differentiable; None unless ``needs_norms``."""
    target_cos: torch.Tensor | None = None
    """(B,) each row's cosine with its class centre, no gradient; None unless
    ``needs_target_cos``."""
    seed: int = 0
    """The head's seed."""
    step: int = 0
    """Forward calls of the head before this one (0 on the first)."""


class Margin(nn.Module):
    """A margin-softmax family member; see the module docstring for the contract."""

    normalize_embeddings: bool = False
    normalize_weight: bool = False
    has_bias: bool = False
    scale: float = 1.0
    needs_norms: bool = False
    """The head fills :attr:`MarginBatch.norms` (MagFace, AdaFace)."""
    needs_target_cos: bool = False
    """The head fills :attr:`MarginBatch.target_cos`, at the cost of one all-reduce of B values."""
    cos_limit: float | None = None
    """Non-target cosines are clamped into ``[-cos_limit, cos_limit]`` (no gradient outside)."""
    target_only: bool = True
    """False: :meth:`other_logits` reshapes the non-target cosines (no fused kernel does)."""

    def begin_step(self, batch: MarginBatch) -> None:
        """Update the margin's state from the global batch, once per forward, before any logit
        is formed (CurricularFace's t, AdaFace's averages). The default keeps no state."""

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, batch: MarginBatch | None = None
    ) -> torch.Tensor | None:
        """Target logits (B,) of rows ``x`` (B, D) whose class centres are ``w`` (B, D).

        ``x`` arrives as the GEMM sees it (normalised when ``normalize_embeddings``); ``w`` is the
        raw class-centre row; ``batch`` row i describes row i of ``x``. Returns ``None`` when the
        target logit needs no margin.
        """
        raise NotImplementedError

    def other_logits(self, cos: torch.Tensor, batch: MarginBatch) -> torch.Tensor | None:
        """Reshape the non-target cosines ``cos`` (B, N) in place (before ``scale``), and return
        their derivative (B, N), or None where it is 1. Only called when ``target_only`` is False;
        the target column's value is replaced afterwards."""
        raise NotImplementedError

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor | None:
        """A term added to the loss, from the raw embeddings' norms (B,) of the global batch;
        None: no term (MagFace's g(a) is the one user)."""
        return None
