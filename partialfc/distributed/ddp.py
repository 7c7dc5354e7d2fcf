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
