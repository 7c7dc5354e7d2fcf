"""Triplet loss on unit embeddings: insightface's batch thirds, or batch-hard mining."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partialfc.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum_identity_grad,
    rank,
)
from partialfc.margins import clamp_cos


class TripletLoss(nn.Module):
    """``mean(relu(d(a, p) - d(a, n) + margin))`` over the triplets of the global batch.

    Embeddings are L2-normalised first. The distance is the squared Euclidean distance between unit
    vectors (``2 - 2 cos``), or the angle ``acos(cos)`` when ``angular`` (insightface's "atriplet").

    Mining:
        ``"thirds"``: insightface ``get_symbol``'s layout. Each rank's batch is three equal parts,
        anchors, positives, negatives, and triplet i is (a_i, p_i, n_i); labels are not used.
        ``"batch_hard"``: every local row is an anchor against the gathered global batch, with its
        farthest positive (same label, not itself) and nearest negative (Hermans et al., 2017);
        anchors without a positive or a negative in the global batch are left out.

    The mean runs over the triplets of all ranks, so the loss is the same on every rank and the
    gradient w.r.t. the local embeddings is its exact partial derivative.

    Args:
        margin: the margin alpha.
        angular: use angles instead of squared distances.
        mining: "thirds" or "batch_hard".
        process_group: the ranks sharing the batch; None: default group or a lone process.
    """

    def __init__(
        self,
        margin: float = 0.3,
        angular: bool = False,
        mining: Literal["thirds", "batch_hard"] = "thirds",
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if mining not in ("thirds", "batch_hard"):
            raise ValueError(f"mining must be 'thirds' or 'batch_hard', got {mining!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.angular, self.mining = float(margin), bool(angular), mining
        self.process_group = process_group

    def _distance(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.acos(clamp_cos(cos)) if self.angular else 2.0 - 2.0 * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Loss over the global batch.

        Args:
            embeddings: (b, D) this rank's embeddings.
            labels: (b,) class ids; required for "batch_hard", ignored by "thirds".
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (batch, D), got {tuple(embeddings.shape)}")
        x = F.normalize(embeddings, dim=1)
        if self.mining == "thirds":
            losses = self._thirds(x)
            valid = torch.ones_like(losses)
        else:
            if labels is None or labels.shape != embeddings.shape[:1]:
                raise ValueError("batch_hard mining needs labels of shape (batch,)")
            losses, valid = self._batch_hard(x, labels)
        # Global mean: numerator and count summed over ranks (the count carries no gradient).
        total = all_reduce_sum_identity_grad((losses * valid).sum(), self.process_group)
        count = all_reduce_sum_identity_grad(valid.sum().detach(), self.process_group)
        return total / count.clamp_min(1.0)

    def _thirds(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % 3:
            raise ValueError(
                f"'thirds' mining needs a batch divisible by 3 (anchors, positives, negatives), "
                f"got {x.shape[0]}"
            )
        a, p, n = x.chunk(3)
        d_ap = self._distance((a * p).sum(1))
        d_an = self._distance((a * n).sum(1))
        return F.relu(d_ap - d_an + self.margin)

    def _batch_hard(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        group = self.process_group
        xg = all_gather_with_grad(x, group)  # (B, D)
        yg = all_gather_no_grad(labels, group)  # (B,)
        b = x.shape[0]
        d = self._distance(x @ xg.t())  # (b, B): local anchors against the global batch
        same = labels.unsqueeze(1) == yg.unsqueeze(0)
        rows = torch.arange(b, device=x.device)
        itself = torch.zeros_like(same)
        itself[rows, rank(group) * b + rows] = True  # this rank's slice of the gathered batch
        pos, neg = same & ~itself, ~same
        big = torch.finfo(d.dtype).max
        d_ap = torch.where(pos, d, torch.full_like(d, -big)).amax(1)
        d_an = torch.where(neg, d, torch.full_like(d, big)).amin(1)
        valid = (pos.any(1) & neg.any(1)).to(d.dtype)
        losses = F.relu(
            torch.where(valid.bool(), d_ap - d_an + self.margin, torch.zeros_like(d_ap))
        )
        return losses, valid
