"""Optimizers for sharded class centres."""

from partialfc.optim._rows import RowSparseOptimizer
from partialfc.optim.sparse_adamw import SparseAdamW
from partialfc.optim.sparse_sgd import SparseSGD

__all__ = ["RowSparseOptimizer", "SparseAdamW", "SparseSGD"]
