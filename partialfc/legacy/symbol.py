"""insightface arcface_mxnet's ``get_symbol``: the training outputs on top of an embedding symbol.

The graph is the published one (insightface ``recognition/ArcFace/train.py``), rebuilt node for
node so the same parameter dict binds both:

* arguments ``fc7_weight`` (C, D; ``lr_mult``/``wd_mult`` from the config, Normal(0.01) init),
  ``fc7_bias`` (softmax without ``fc7_no_bias``; ``lr_mult=2``, ``wd_mult=0``) and
  ``softmax_label`` (N,), plus whatever arguments the embedding symbol has;
* outputs, in order: ``BlockGrad(embedding)``, then ``SoftmaxOutput(fc7, normalization='valid')``
  and, with ``ce_loss``, ``BlockGrad(sum(-log softmax * onehot) / per_batch_size)``; for the
  triplet losses ``BlockGrad(softmax_label)`` and ``MakeLoss(mean(relu(ap - an + alpha)))``.
  The leading embedding output is insightface's too (its metrics read ``preds[1]`` for the
  softmax and ``preds[-1]`` for a loss), so it is kept: index 1 is the softmax, -1 the last loss.

``margin_softmax`` forms the target logit as insightface does, ``s*(cos(m1*theta + m2) - m3)``
with ``theta = arccos(zy / s)``, *without* the ``(-1)^k`` continuation of DESIGN.md rule 3: past
``m1*theta + m2 > pi`` the logit turns back up, where partialfc's keeps decreasing. MXNet
differentiates the whole formula (arccos, cos), so the gradient equals partialfc's exact one
(``straight_through=False``) wherever ``m1*theta + m2 <= pi``. CosFace alone (m1=1, m2=0) is
insightface's shortcut ``fc7 - s*m3*onehot``, with no arccos at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from partialfc.legacy._mx import import_mxnet

LOSSES = ("softmax", "margin_softmax", "triplet", "atriplet")

# Fields each loss reads from the config (insightface's names); anything else is ignored.
_FIELDS: dict[str, tuple[str, ...]] = {
    "softmax": (
        "num_classes", "emb_size", "fc7_no_bias", "fc7_lr_mult", "fc7_wd_mult", "ce_loss",
    ),
    "margin_softmax": (
        "num_classes", "emb_size", "loss_s", "loss_m1", "loss_m2", "loss_m3",
        "fc7_lr_mult", "fc7_wd_mult", "ce_loss",
    ),
    "triplet": ("triplet_alpha", "per_batch_size"),
    "atriplet": ("triplet_alpha", "per_batch_size"),
}  # fmt: skip


@dataclass(frozen=True)
class SymbolConfig:
    """The config fields :func:`get_symbol` uses, checked (insightface's names and meanings)."""

    loss_name: str
    """softmax, margin_softmax, triplet or atriplet."""
    num_classes: int = 0
    """Number of classes C (rows of fc7_weight)."""
    emb_size: int = 0
    """Embedding width D."""
    loss_s: float = 64.0
    """Logit scale of margin_softmax."""
    loss_m1: float = 1.0
    """Multiplicative angular margin."""
    loss_m2: float = 0.0
    """Additive angular margin."""
    loss_m3: float = 0.0
    """Additive cosine margin."""
    fc7_no_bias: bool = False
    """softmax without the class bias fc7_bias."""
    fc7_lr_mult: float = 1.0
    """Learning-rate multiplier of fc7_weight."""
    fc7_wd_mult: float = 1.0
    """Weight-decay multiplier of fc7_weight."""
    ce_loss: bool = False
    """Add the (gradient-blocked) cross-entropy value as an extra output."""
    triplet_alpha: float = 0.3
    """Margin alpha of the triplet losses."""
    per_batch_size: int = 0
    """Batch size per device; the ce_loss divisor, and the triplet batch split into thirds."""

    def __post_init__(self) -> None:
        if self.loss_name not in LOSSES:
            raise ValueError(f"cfg.loss_name must be one of {LOSSES}, got {self.loss_name!r}")
        if self.loss_name in ("softmax", "margin_softmax"):
            if self.num_classes < 1:
                raise ValueError(f"cfg.num_classes must be >= 1, got {self.num_classes}")
            if self.emb_size < 1:
                raise ValueError(f"cfg.emb_size must be >= 1, got {self.emb_size}")
            if self.ce_loss and self.per_batch_size < 1:
                raise ValueError(
                    f"cfg.per_batch_size must be >= 1 with ce_loss, got {self.per_batch_size}"
                )
        if self.loss_name == "margin_softmax" and not self.loss_s > 0:
            raise ValueError(f"cfg.loss_s must be > 0, got {self.loss_s}")
        if self.loss_name in ("triplet", "atriplet") and (
            self.per_batch_size < 3 or self.per_batch_size % 3
        ):
            raise ValueError(
                "cfg.per_batch_size must be a positive multiple of 3 for the triplet losses "
                f"(anchors, positives, negatives), got {self.per_batch_size}"
            )

    @classmethod
    def from_any(cls, cfg: Any) -> SymbolConfig:
        """Read the fields from a mapping (dict, easydict) or an object with attributes.

        Raises:
            KeyError: a field the chosen loss needs is missing (the message names it).
            ValueError: a field has an invalid value.
        """

        def get(name: str) -> Any:
            if isinstance(cfg, Mapping):
                if name in cfg:
                    return cfg[name]
            elif hasattr(cfg, name):
                return getattr(cfg, name)
            raise KeyError(
                f"get_symbol: cfg has no field {name!r}"
                + (f" (needed by loss_name={loss!r})" if name != "loss_name" else "")
            )

        loss = get("loss_name")
        if loss not in LOSSES:
            raise ValueError(f"cfg.loss_name must be one of {LOSSES}, got {loss!r}")
        needed = _FIELDS[loss] + (("per_batch_size",) if _truthy(cfg, "ce_loss") else ())
        values = {name: get(name) for name in needed}
        casts = {f: type(getattr(cls, f)) for f in values}  # class defaults give the types
        return cls(loss_name=loss, **{f: casts[f](v) for f, v in values.items()})


def _truthy(cfg: Any, name: str) -> bool:
    value = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, False)
    return bool(value)


def get_symbol(cfg: Any, embedding: Any) -> Any:
    """insightface's training symbol on top of ``embedding``.

    Args:
        cfg: insightface's config fields (see :class:`SymbolConfig`), as a dict/easydict or an
            object with attributes; a :class:`SymbolConfig` works too.
        embedding: an MXNet symbol of shape (N, emb_size).

    Returns:
        ``mx.sym.Group`` of ``[BlockGrad(embedding), softmax, (ce_loss)]`` for softmax and
        margin_softmax, ``[BlockGrad(softmax_label), triplet_loss]`` after the embedding for the
        triplet losses (the module docstring has the details).

    Raises:
        ImportError: MXNet is not installed.
        KeyError: a needed config field is missing.
        ValueError: a config field is invalid.
    """
    c = cfg if isinstance(cfg, SymbolConfig) else SymbolConfig.from_any(cfg)
    mx = import_mxnet()
    gt_label = mx.sym.Variable("softmax_label")
    outputs = [mx.sym.BlockGrad(embedding, name="embedding_blockgrad")]
    if c.loss_name in ("triplet", "atriplet"):
        outputs += [mx.sym.BlockGrad(gt_label, name="label_blockgrad"), _triplet(mx, c, embedding)]
        return mx.sym.Group(outputs)
    fc7 = _fc7(mx, c, embedding, gt_label)
    outputs.append(
        mx.sym.SoftmaxOutput(data=fc7, label=gt_label, name="softmax", normalization="valid")
    )
    if c.ce_loss:
        logp = mx.sym.log(mx.sym.SoftmaxActivation(data=fc7))
        neg_onehot = mx.sym.one_hot(gt_label, depth=c.num_classes, on_value=-1.0, off_value=0.0)
        ce = mx.sym.sum(logp * neg_onehot) / c.per_batch_size
        outputs.append(mx.sym.BlockGrad(ce, name="ce_loss"))
    return mx.sym.Group(outputs)


def _fc7(mx: Any, c: SymbolConfig, embedding: Any, gt_label: Any) -> Any:
    """The (N, C) logits: plain FullyConnected, or insightface's margin construction."""
    weight = mx.sym.Variable(
        "fc7_weight",
        shape=(c.num_classes, c.emb_size),
        lr_mult=c.fc7_lr_mult,
        wd_mult=c.fc7_wd_mult,
        init=mx.init.Normal(0.01),
    )
    if c.loss_name == "softmax":
        if c.fc7_no_bias:
            return mx.sym.FullyConnected(
                data=embedding, weight=weight, no_bias=True, num_hidden=c.num_classes, name="fc7"
            )
        bias = mx.sym.Variable("fc7_bias", lr_mult=2.0, wd_mult=0.0)
        return mx.sym.FullyConnected(
            data=embedding, weight=weight, bias=bias, num_hidden=c.num_classes, name="fc7"
        )
    s = c.loss_s
    nweight = mx.sym.L2Normalization(weight, mode="instance", name="fc7_weight_norm")
    nembedding = mx.sym.L2Normalization(embedding, mode="instance", name="fc1n") * s
    fc7 = mx.sym.FullyConnected(
        data=nembedding, weight=nweight, no_bias=True, num_hidden=c.num_classes, name="fc7"
    )  # s * cos, (N, C)
    m1, m2, m3 = c.loss_m1, c.loss_m2, c.loss_m3
    if m1 == 1.0 and m2 == 0.0 and m3 == 0.0:  # NormFace
        return fc7
    if m1 == 1.0 and m2 == 0.0:  # CosFace: insightface subtracts s*m3 on the target directly
        return fc7 - mx.sym.one_hot(gt_label, depth=c.num_classes, on_value=s * m3, off_value=0.0)
    zy = mx.sym.pick(fc7, gt_label, axis=1)  # (N,) target logit s*cos
    t = mx.sym.arccos(zy / s)  # no clamp, no (-1)^k continuation: insightface's formula
    if m1 != 1.0:
        t = t * m1
    if m2 > 0.0:
        t = t + m2
    body = mx.sym.cos(t)
    if m3 > 0.0:
        body = body - m3
    # fc7 + onehot * (new_zy - zy): the pick's gradient cancels fc7's on the target column, so
    # the target's gradient is exactly that of s*(cos(m1*theta + m2) - m3).
    diff = mx.sym.expand_dims(body * s - zy, 1)
    onehot = mx.sym.one_hot(gt_label, depth=c.num_classes, on_value=1.0, off_value=0.0)
    return fc7 + mx.sym.broadcast_mul(onehot, diff)


def _triplet(mx: Any, c: SymbolConfig, embedding: Any) -> Any:
    """``MakeLoss(mean(relu(d(a, p) - d(a, n) + alpha)))`` over the batch thirds."""
    x = mx.sym.L2Normalization(embedding, mode="instance", name="fc1n")
    third = c.per_batch_size // 3
    anchor = mx.sym.slice_axis(x, axis=0, begin=0, end=third)
    positive = mx.sym.slice_axis(x, axis=0, begin=third, end=2 * third)
    negative = mx.sym.slice_axis(x, axis=0, begin=2 * third, end=c.per_batch_size)
    if c.loss_name == "triplet":  # squared Euclidean distance of unit vectors
        ap, an = anchor - positive, anchor - negative
        ap = mx.sym.sum(ap * ap, axis=1, keepdims=True)
        an = mx.sym.sum(an * an, axis=1, keepdims=True)
    else:  # angle; arccos unclamped, as insightface
        ap = mx.sym.arccos(mx.sym.sum(anchor * positive, axis=1, keepdims=True))
        an = mx.sym.arccos(mx.sym.sum(anchor * negative, axis=1, keepdims=True))
    loss = mx.sym.Activation(data=ap - an + c.triplet_alpha, act_type="relu")
    return mx.sym.MakeLoss(mx.sym.mean(loss), name="triplet_loss")
