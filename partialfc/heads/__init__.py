"""Heads: the sharded margin-softmax (PartialFC), center loss and triplet loss."""

from partialfc.heads.center_loss import CenterLoss
from partialfc.heads.partial_fc import PartialFC
from partialfc.heads.triplet import TripletLoss

__all__ = ["CenterLoss", "PartialFC", "TripletLoss"]
