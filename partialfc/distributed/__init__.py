"""Process groups, shard ranges and collectives with correct autograd.

This package (and the trainer) are the only places that touch ``torch.distributed``.
"""

from partialfc.distributed._groups import (
    backend,
    is_distributed,
    leave_together,
    rank,
    shard_range,
    world_size,
)
from partialfc.distributed.collectives import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_max,
    all_reduce_sum_identity_grad,
    combine_softmax_stats,
)
from partialfc.distributed.ddp import (
    broadcast_buffers,
    sum_gradients_hook,
    use_global_loss_gradients,
)

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "all_reduce_max",
    "all_reduce_sum_identity_grad",
    "backend",
    "broadcast_buffers",
    "combine_softmax_stats",
    "is_distributed",
    "leave_together",
    "rank",
    "shard_range",
    "sum_gradients_hook",
    "use_global_loss_gradients",
    "world_size",
]
