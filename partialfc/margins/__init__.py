"""Margin maths for the margin-softmax family, on plain tensors, and the margin registry.

:mod:`partialfc.margins.base` holds the contract a head relies on (:class:`Margin`,
:class:`MarginBatch`); each family lives in its own module; :data:`MARGINS` maps a config's
``[head] margin`` name to its class, and :func:`build_margin` builds one from
``[head.margin_args]``. Nothing here touches ``torch.distributed``.
"""

from partialfc.margins.adaface import AdaFace
from partialfc.margins.base import (
    COS_EPS,
    Margin,
    MarginBatch,
    annealed_lambda,
    clamp_cos,
    combined_psi,
)
from partialfc.margins.classic import (
    ArcFace,
    CombinedMargin,
    CosFace,
    LSoftmax,
    NormFace,
    Softmax,
    SphereFace,
)
from partialfc.margins.curricularface import CurricularFace
from partialfc.margins.elasticface import ElasticFace
from partialfc.margins.magface import MagFace
from partialfc.margins.registry import MARGINS, build_margin, margin_arguments, register

__all__ = [
    "COS_EPS",
    "MARGINS",
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "ElasticFace",
    "LSoftmax",
    "MagFace",
    "Margin",
    "MarginBatch",
    "NormFace",
    "Softmax",
    "SphereFace",
    "annealed_lambda",
    "build_margin",
    "clamp_cos",
    "combined_psi",
    "margin_arguments",
    "register",
]
