"""Process-group helpers that degrade to a single process.

Every function takes the group as an argument. ``None`` means the default group when
``torch.distributed`` is initialised, and a lone process (world size 1, rank 0) when it is not, so
the maths of the heads runs unchanged in a plain Python process.
"""

from __future__ import annotations

import datetime

import torch.distributed as dist


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether collectives over ``group`` involve more than this process."""
    return world_size(group) > 1


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks in ``group``; 1 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group``; 0 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def backend(group: dist.ProcessGroup | None = None) -> str:
    """Name of the backend serving ``group`` ("gloo", "nccl", ...); "none" for a lone process."""
    if not (dist.is_available() and dist.is_initialized()):
        return "none"
    return str(dist.get_backend(group))


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous block of classes that ``rank`` owns: ``(start, count)``.

    The first ``num_classes % world_size`` ranks own one class more than the others, so shard sizes
    differ by at most one and every class has exactly one owner.

    Raises:
        ValueError: if ``world_size < 1``, ``rank`` is outside ``[0, world_size)`` or
            ``num_classes < world_size`` (a rank would own no class).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_classes < world_size:
        raise ValueError(
            f"num_classes ({num_classes}) must be >= world_size ({world_size}): "
            "every rank needs at least one class"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    return start, count


def leave_together(timeout_s: float = 600.0) -> None:
    """Returns once every rank of the default group has called it: the last step of a run that
    succeeded, before ``destroy_process_group``.

    A rank that exits, closing its sockets, while a peer is still finishing the last collective
    (its final send, or reading the last bytes) makes that peer fail after a run that succeeded:
    gloo's "Connection reset by peer", or its abort from a background thread. The meeting goes
    through the group's store, not through a collective, so it ends with no message of the
    backend's left in flight. Rank 0 returns last: when it hosts the store (plain ``env://``),
    its exit ends the store, so it waits until every other rank is past its last store call.
    Not for error paths: there, failing fast beats waiting for a peer that may never come.
    """
    if not is_distributed():
        return
    store = dist.distributed_c10d._get_default_store()  # no public accessor
    me, world = dist.get_rank(), dist.get_world_size()
    timeout = datetime.timedelta(seconds=timeout_s)
    store.set(f"partialfc/leave/{me}", "1")
    store.wait([f"partialfc/leave/{r}" for r in range(world)], timeout)
    if me:
        store.set(f"partialfc/left/{me}", "1")
    else:
        store.wait([f"partialfc/left/{r}" for r in range(1, world)], timeout)
