"""Verification evaluation on insightface-format pair sets."""

from partialfc.eval.verification import VerificationResult, embed, fold_accuracy, verify

__all__ = ["VerificationResult", "embed", "fold_accuracy", "verify"]
