"""Collectives with the autograd rules a sharded loss needs.

The loss of a sharded head is one scalar, identical on every rank, built from partial sums that
each rank computes on its own shard. Backward then runs on every rank with the same upstream
gradient (1.0), and each rank back-propagates only through its own partial term. Two consequences
fix the backward rules here:

* ``all_gather_with_grad``: rank r's embeddings feed every rank's partial term, so the gradient
  w.r.t. them is the *sum* over ranks of each rank's gradient for slice r (a reduce-scatter).
* ``all_reduce_sum_identity_grad``: the sum's upstream gradient is already present on every rank,
  so the backward is the identity. (``torch.distributed.nn.all_reduce`` all-reduces the gradient
  instead, which would count it ``world_size`` times here.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from partialfc.distributed._groups import world_size

# torch 2.13 renamed the flat-tensor collectives; older releases (2.11 on our GPU hosts) only have
# the old names, which 2.13 still serves with a FutureWarning.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        ctx.world = world_size(group)
        out = x.new_empty((ctx.world * x.shape[0], *x.shape[1:]))
        _all_gather_flat(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad_in = grad_out.new_empty((grad_out.shape[0] // ctx.world, *grad_out.shape[1:]))
        # Sum every rank's gradient for this rank's slice of the gathered batch.
        _reduce_scatter_flat(grad_in, grad_out.contiguous(), group=ctx.group)
        return grad_in, None


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order.

    Backward sums the gradients of all ranks for this rank's slice (reduce-scatter). Every rank must
    pass the same shape. With one process this returns ``x`` itself.
    """
    if world_size(group) == 1:
        return x
    return _AllGather.apply(x, group)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` (labels, masks, ...) from every rank along dim 0; no autograd."""
    world = world_size(group)
    if world == 1:
        return x
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))
    _all_gather_flat(out, x.contiguous(), group=group)
    return out


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Every rank holds the same upstream gradient of the (identical) sum: pass it through.
        return grad_out, None


def all_reduce_sum_identity_grad(
    x: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Sum ``x`` over ranks; backward passes the gradient through unchanged (see module doc)."""
    if world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


@torch.no_grad()
def all_reduce_max(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Element-wise maximum of ``x`` over ranks (a new tensor); no autograd."""
    out = x.clone()
    if world_size(group) > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


@torch.no_grad()
def combine_softmax_stats(
    row_max: torch.Tensor,
    row_sumexp: torch.Tensor,
    target_logit: torch.Tensor,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-shard softmax statistics into global ones with a single collective.

    Each rank holds, for every row of the global batch, the maximum of its shard's logits, the sum
    of ``exp(logit - row_max)`` over its shard and its contribution to the target logit (zero on
    the ranks that do not own the row's class). One all-gather of these three numbers per row
    replaces the usual max all-reduce followed by a sum all-reduce.

    Args:
        row_max: (B,) per-shard maximum logit.
        row_sumexp: (B,) per-shard ``sum(exp(logit - row_max))``.
        target_logit: (B,) this shard's target logit, 0 where the shard does not own the target.
        group: process group.

    Returns:
        ``(global_max, global_sumexp, target)``: (B,) each, identical on every rank, with
        ``global_sumexp = sum_j exp(logit_j - global_max)`` over all classes of all shards.
    """
    if world_size(group) == 1:
        return row_max, row_sumexp, target_logit
    stats = torch.stack([row_max, row_sumexp, target_logit])  # (3, B)
    world = world_size(group)
    gathered = stats.new_empty((world * 3, stats.shape[1]))  # (W*3, B), rank-major
    _all_gather_flat(gathered, stats, group=group)
    maxes, sumexps, targets = gathered.view(world, 3, -1).unbind(1)  # (W, B) each
    global_max = maxes.amax(0)
    global_sumexp = (sumexps * torch.exp(maxes - global_max)).sum(0)
    return global_max, global_sumexp, targets.sum(0)
