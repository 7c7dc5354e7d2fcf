"""Optimizers for sharded class centres."""

from partialfc.optim.sparse_sgd import SparseSGD

__all__ = ["SparseSGD"]
