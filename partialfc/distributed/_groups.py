"""Process-group helpers that degrade to a single process.

Every function takes the group as an argument. ``None`` means the default group when
``torch.distributed`` is initialised, and a lone process (world size 1, rank 0) when it is not, so
the maths of the heads runs unchanged in a plain Python process.
"""

from __future__ import annotations

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
