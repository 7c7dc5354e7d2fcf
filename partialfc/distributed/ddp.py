"""DDP glue for a backbone trained through a sharded head.

The head's loss is the *global* mean, identical on every rank, and ``autograd.grad(loss, x_r)`` is
already the exact partial derivative for rank r's embeddings. The backbone parameters are shared,
so their true gradient is the *sum* over ranks of the local contributions. DDP's default hook
averages (divides by the world size); :func:`sum_gradients_hook` all-reduces with SUM instead, so
the backbone receives exactly the gradient of the global loss.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at run time.
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def sum_gradients_hook(
    group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: sum the bucket over ranks instead of averaging it."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def use_global_loss_gradients(
    ddp: DistributedDataParallel, group: dist.ProcessGroup | None = None
) -> None:
    """Make ``ddp`` sum gradients, as a backbone under a sharded global-mean loss needs."""
    ddp.register_comm_hook(group, sum_gradients_hook)


def broadcast_buffers(
    module: torch.nn.Module, src: int = 0, group: dist.ProcessGroup | None = None
) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    DDP broadcasts buffers at the start of each forward, so between steps every rank holds the
    statistics of its own last micro-batch. A checkpoint must hold the copy the next forward would
    have used (rank ``src``'s), whichever rank the writer takes a replicated entry from: call this
    before saving. One broadcast per dtype.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buf in module.buffers():
        by_dtype.setdefault((buf.dtype, buf.device), []).append(buf)
    for bufs in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        dist.broadcast(flat, src=dist.get_global_rank(group, src) if group else src, group=group)
        offset = 0
        for b in bufs:
            b.detach().copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
