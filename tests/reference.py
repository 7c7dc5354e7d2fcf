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


def class_cosines(x: torch.Tensor, w: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(B, C) cosines of the embeddings with the classes. With ``k`` sub-centres (Sub-center
    ArcFace: w is (C*k, D), row ``c*k + j`` sub-centre j of class c) a class's cosine is the
    maximum over its k rows, as insightface's ``reshape(fc7, (0, C, K))`` then ``max(axis=2)``;
    autograd sends its gradient to the row that attains it."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    if k == 1:
        return cos
    return cos.view(cos.shape[0], -1, k).max(dim=2).values


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
    sub_centers: int = 1,
) -> torch.Tensor:
    """Full (B, C) logits of rules 3-6 with the margin on each row's target column; with
    ``sub_centers`` the class cosines are :func:`class_cosines`'s maxima (angular margins only)."""
    onehot = F.one_hot(labels, w.shape[0] // sub_centers).bool()
    if spec.kind == "combined":
        cos = class_cosines(x, w, sub_centers)
        if filter_threshold > 0:
            cos = torch.where((cos > filter_threshold) & ~onehot, torch.zeros_like(cos), cos)
        target = spec.s * psi(cos, spec.m1, spec.m2, spec.m3)
        if spec.straight_through:
            target = spec.s * cos + (target - spec.s * cos).detach()
        return torch.where(onehot, target, spec.s * cos)
    assert sub_centers == 1 or spec.kind == "sphereface", "sub-centres need normalised centres"
    if spec.kind == "softmax":
        out = x @ w.t()
        return out + b if b is not None else out
    lam = anneal(t, spec)
    xnorm = x.norm(dim=1, keepdim=True)
    cos = class_cosines(x, w, sub_centers)
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
    sub_centers: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss (rule 7) and its gradients w.r.t. x, w and b, in float64.

    ``columns`` restricts the softmax to those classes (rule 8: the union of sampled classes).
    """
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    b = b.detach().double().requires_grad_() if b is not None else None
    z = logits(spec, x, w, b, labels, t, filter_threshold, sub_centers)
    target_labels = labels
    if columns is not None:
        z = z[:, columns]
        target_labels = torch.searchsorted(columns, labels)
        assert torch.equal(columns[target_labels], labels), "a label is missing from the columns"
    loss = F.cross_entropy(z, target_labels)
    grads = torch.autograd.grad(loss, [v for v in (x, w, b) if v is not None])
    return loss.detach(), grads[0], grads[1], grads[2] if b is not None else None


# --------------------------------------------------------------------------- the later margins
# Each follows its official implementation's operations on the full (B, C) cosine matrix (clamps,
# sqrt(1 - cos^2), fall-backs), with the state passed in and returned, not kept.


def _cosines(x: torch.Tensor, w: torch.Tensor, lo: float, hi: float, k: int = 1) -> torch.Tensor:
    return class_cosines(x, w, k).clamp(lo, hi)


def curricularface(x, w, labels, state, s, m, alpha, k=1):
    """CurricularFace's logits (head/metrics.py); ``state`` = t before the step."""
    cos = _cosines(x, w, -1.0, 1.0, k)
    target = cos.gather(1, labels[:, None])  # (B, 1)
    sin = torch.sqrt(1.0 - target**2)
    target_m = target * math.cos(m) - sin * math.sin(m)
    hard = cos > target_m
    final = torch.where(
        target > math.cos(math.pi - m), target_m, target - math.sin(math.pi - m) * m
    )
    t = alpha * target.detach().mean() + (1 - alpha) * state
    cos = torch.where(hard, cos * (t + cos), cos)
    cos = cos.scatter(1, labels[:, None], final)
    return s * cos, 0.0, t


def adaface(x, w, labels, state, s, m, h, t_alpha, k=1):
    """AdaFace's logits (head.py); ``state`` = (batch_mean, batch_std) before the step."""
    eps = 1e-3
    cos = _cosines(x, w, -1 + eps, 1 - eps, k)
    safe = x.norm(dim=1, keepdim=True).clamp(0.001, 100).detach()  # (B, 1)
    mean = safe.mean() * t_alpha + (1 - t_alpha) * state[0]
    std = safe.std() * t_alpha + (1 - t_alpha) * state[1]
    z = (h * (safe - mean) / (std + eps)).clamp(-1, 1)
    onehot = F.one_hot(labels, cos.shape[1]).to(x.dtype)
    theta = (cos.acos() + onehot * (-m * z)).clamp(eps, math.pi - eps)
    return s * (theta.cos() - onehot * (m + m * z)), 0.0, (mean, std)


def magface(x, w, labels, state, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin, k=1):
    """MagFace's logits and regulariser (MagLinear, MagLoss); no state."""
    a = x.norm(dim=1, keepdim=True).clamp(l_a, u_a)  # (B, 1), differentiable
    margin = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
    cos = _cosines(x, w, -1.0, 1.0, k)
    sin = torch.sqrt(1.0 - cos**2)
    cos_m = cos * torch.cos(margin) - sin * torch.sin(margin)
    if easy_margin:
        cos_m = torch.where(cos > 0, cos_m, cos)
    else:
        low = cos - torch.sin(math.pi - margin) * margin
        cos_m = torch.where(cos > torch.cos(math.pi - margin), cos_m, low)
    onehot = F.one_hot(labels, cos.shape[1]).bool()
    reg = lambda_g * (a / u_a**2 + 1 / a).mean()
    return torch.where(onehot, s * cos_m, s * cos), reg, state


def elastic_margins(
    target_cos: torch.Tensor, seed: int, step: int, m: float, std: float, plus: bool
) -> torch.Tensor:
    """The per-sample margins of a step: N(m, std) from the (seed, step) stream; with ``plus``
    the k-th largest target cosine gets the k-th smallest margin (a loop, as the paper says)."""
    from partialfc.seeding import generator

    gen = generator("elasticface", seed, step)
    draw = torch.randn(target_cos.shape[0], generator=gen, dtype=torch.float64) * std + m
    if not plus:
        return draw
    out = torch.empty_like(draw)
    ascending = sorted(draw.tolist())
    by_cos = sorted(range(len(draw)), key=lambda i: -float(target_cos[i]))
    for k, i in enumerate(by_cos):
        out[i] = ascending[k]
    return out


def elasticface(x, w, labels, state, s, m, std, kind, plus, seed, step, k=1):
    """ElasticArcFace / ElasticCosFace's logits (utils/losses.py); no state."""
    cos = _cosines(x, w, -1.0, 1.0, k)
    target = cos.gather(1, labels[:, None]).squeeze(1).detach()
    margins = elastic_margins(target, seed, step, m, std, plus)
    m_hot = F.one_hot(labels, cos.shape[1]).to(x.dtype) * margins[:, None]
    z = torch.cos(cos.acos() + m_hot) if kind == "arc" else cos - m_hot
    return s * z, 0.0, state


def stateful_loss_and_grads(logits_fn, x, w, labels, state, columns=None):
    """Loss (cross-entropy + any regulariser), its gradients w.r.t. x and w, and the new state,
    for one of the functions above (``logits_fn(x, w, labels, state) -> (z, extra, state)``)."""
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    z, extra, new_state = logits_fn(x, w, labels, state)
    target_labels = labels
    if columns is not None:
        z = z[:, columns]
        target_labels = torch.searchsorted(columns, labels)
        assert torch.equal(columns[target_labels], labels), "a label is missing from the columns"
    loss = F.cross_entropy(z, target_labels) + extra
    gx, gw = torch.autograd.grad(loss, [x, w])
    return loss.detach(), gx, gw, new_state
