"""partialfc: exact sharded margin-softmax training for millions of identities.

The public API (see DESIGN.md): shard ranges, the margin family, the sharded head and the sparse
optimizer for its class centres. Importing partialfc does no work: no process group, no device.
"""

from partialfc.distributed import shard_range
from partialfc.heads import CenterLoss, PartialFC, TripletLoss
from partialfc.margins import (
    MARGINS,
    AdaFace,
    ArcFace,
    CombinedMargin,
    CosFace,
    CurricularFace,
    ElasticFace,
    LSoftmax,
    MagFace,
    Margin,
    NormFace,
    Softmax,
    SphereFace,
)
from partialfc.optim import SparseAdamW, SparseSGD

__version__ = "0.1.0"

__all__ = [
    "MARGINS",
    "AdaFace",
    "ArcFace",
    "CenterLoss",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "ElasticFace",
    "LSoftmax",
    "MagFace",
    "Margin",
    "NormFace",
    "PartialFC",
    "Softmax",
    "SparseAdamW",
    "SparseSGD",
    "SphereFace",
    "TripletLoss",
    "shard_range",
]
