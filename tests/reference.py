"""Single-process float64 references, written independently of partialfc's own maths.

Everything here works on the full (C, D) class matrix and the whole global batch, with plain
autograd, so the sharded, sampled and hand-derived paths of the library are compared with the
formulas of DESIGN.md rules 2-7 rather than with themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Spec:
    """A margin as the reference understands it."""

    kind: str  # "combined" | "sphereface" | "lsoftmax" | "softmax"
    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0
    straight_through: bool = False
    m: int = 4
    base: float = 1000.0
    gamma: float = 0.12
    power: float = 1.0
    lambda_min: float = 5.0
    bias: bool = False


def psi(cos: torch.Tensor, m1: float, m2: float, m3: float) -> torch.Tensor:
    """Rule 3 written out: k-th branch of the continued cosine."""
    theta = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    phi = m1 * theta + m2
    k = torch.div(phi.detach(), math.pi, rounding_mode="floor")
    return torch.pow(-1.0, k) * torch.cos(phi) - 2 * k - m3


def anneal(t: int, spec: Spec) -> float:
    return max(spec.lambda_min, spec.base * (1 + spec.gamma * t) ** (-spec.power))


def logits(
    spec: Spec,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    labels: torch.Tensor,
    t: int = 1,
    filter_threshold: float = 0.0,
) -> torch.Tensor:
    """Full (B, C) logits of rules 3-6 with the margin on each row's target column."""
    onehot = F.one_hot(labels, w.shape[0]).bool()
    if spec.kind == "combined":
        cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
        if filter_threshold > 0:
            cos = torch.where((cos > filter_threshold) & ~onehot, torch.zeros_like(cos), cos)
        target = spec.s * psi(cos, spec.m1, spec.m2, spec.m3)
        if spec.straight_through:
            target = spec.s * cos + (target - spec.s * cos).detach()
        return torch.where(onehot, target, spec.s * cos)
    if spec.kind == "softmax":
        out = x @ w.t()
        return out + b if b is not None else out
    lam = anneal(t, spec)
    xnorm = x.norm(dim=1, keepdim=True)
    cos = (x / xnorm) @ F.normalize(w, dim=1).t()
    blend = (lam * cos + psi(cos, spec.m, 0.0, 0.0)) / (1 + lam)
    if spec.kind == "sphereface":
        return torch.where(onehot, xnorm * blend, xnorm * cos)
    if spec.kind == "lsoftmax":
        wnorm = w.norm(dim=1).unsqueeze(0)
        return torch.where(onehot, xnorm * wnorm * blend, x @ w.t())
    raise ValueError(spec.kind)


def loss_and_grads(
    spec: Spec,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    labels: torch.Tensor,
    t: int = 1,
    filter_threshold: float = 0.0,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss (rule 7) and its gradients w.r.t. x, w and b, in float64.

    ``columns`` restricts the softmax to those classes (rule 8: the union of sampled classes).
    """
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    b = b.detach().double().requires_grad_() if b is not None else None
    z = logits(spec, x, w, b, labels, t, filter_threshold)
    target_labels = labels
    if columns is not None:
        z = z[:, columns]
        target_labels = torch.searchsorted(columns, labels)
        assert torch.equal(columns[target_labels], labels), "a label is missing from the columns"
    loss = F.cross_entropy(z, target_labels)
    grads = torch.autograd.grad(loss, [v for v in (x, w, b) if v is not None])
    return loss.detach(), grads[0], grads[1], grads[2] if b is not None else None
