"""Verification evaluation on insightface-format pair sets, and IJB-B/C (:mod:`.ijb`)."""

from partialfc.eval.pair_sets import load_pair_set
from partialfc.eval.verification import VerificationResult, embed, fold_accuracy, verify

__all__ = ["VerificationResult", "embed", "fold_accuracy", "load_pair_set", "verify"]
