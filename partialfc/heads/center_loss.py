"""Center loss (Wen et al., ECCV 2016) with class centres sharded like PartialFC's."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from partialfc.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum_identity_grad,
    rank,
    shard_range,
    world_size,
)


class CenterLoss(nn.Module):
    """``lam/2 * mean_i |x_i - c_{y_i}|^2`` over the global batch, centres sharded by rows.

    The paper sums over the mini-batch; the mean used here keeps ``lam`` independent of the batch
    size. The centres are not learnt by the optimizer but moved by the paper's rule after each
    training-mode forward, using the whole global batch::

        c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + #{i: y_i = j})

    Each rank stores and updates the centres of its class range
    (:func:`partialfc.shard_range`), so the loss scales to as many classes as PartialFC does.

    Args:
        num_classes: total number of classes over all ranks.
        embedding_size: width D of the embeddings.
        alpha: centre learning rate of the update rule, in [0, 1].
        lam: weight lambda of the loss.
        process_group: the ranks sharing the centres; None: default group or a lone process.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        alpha: float = 0.5,
        lam: float = 0.003,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.alpha, self.lam = float(alpha), float(lam)
        self.process_group = process_group
        self.class_start, self.num_local = shard_range(
            num_classes, world_size(process_group), rank(process_group)
        )
        self.register_buffer("centers", torch.zeros(self.num_local, self.embedding_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch (the same on every rank); moves the centres when training.

        Args:
            embeddings: (b, D) this rank's embeddings.
            labels: (b,) global class ids.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"CenterLoss expects embeddings (batch, {self.embedding_size}), got "
                f"{tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must be (batch,), got {tuple(labels.shape)}")
        group = self.process_group
        x = all_gather_with_grad(embeddings.to(self.centers.dtype), group)  # (B, D)
        y = all_gather_no_grad(labels, group)
        local = y - self.class_start
        has = (local >= 0) & (local < self.num_local)
        local = local.clamp(0, self.num_local - 1)
        diff = x - self.centers.index_select(0, local)  # (B, D), junk rows where ~has
        partial = (diff.square().sum(1) * has).sum()
        loss = all_reduce_sum_identity_grad(partial, group) * (0.5 * self.lam / x.shape[0])
        if self.training and self.alpha > 0:
            self._update_centers(diff.detach(), local, has)
        return loss

    @torch.no_grad()
    def _update_centers(self, diff: torch.Tensor, local: torch.Tensor, has: torch.Tensor) -> None:
        weight = has.to(diff.dtype)
        counts = torch.zeros(self.num_local, dtype=diff.dtype, device=diff.device)
        counts.index_add_(0, local, weight)
        delta = torch.zeros_like(self.centers)
        delta.index_add_(0, local, diff * weight.unsqueeze(1))  # sum_i (x_i - c_j)
        self.centers.add_(delta / (1.0 + counts).unsqueeze(1), alpha=self.alpha)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"alpha={self.alpha}, lam={self.lam}, classes=[{self.class_start}, "
            f"{self.class_start + self.num_local})"
        )
