"""Checkpoints that reshard: torch.distributed.checkpoint with row-sharded class centres.

Layout of ``output_dir``::

    step-00001200/      one complete checkpoint (DCP files + .metadata + COMPLETE)
    step-00001300/
    .step-00001400.tmp/  a checkpoint being written (ignored; removed by the next save)

A checkpoint is written into a hidden temporary folder and renamed into place by rank 0 only after
every rank has finished writing, so a crash mid-write never spoils the last good checkpoint, and
:func:`latest_checkpoint` only ever sees complete ones.

Each class-centre shard is stored with its global row range (a DCP sharded tensor of global shape
(C, D) whose local piece sits at row ``class_start``), and so is its momentum; DCP then reads, for
any new world size, exactly the rows each new rank owns. Everything else (the backbone, optimizer
hyper-parameters, schedule, scaler) is an ordinary replicated state-dict entry.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from partialfc.distributed import is_distributed, rank, world_size

STEP_DIR = re.compile(r"^step-(\d{8})$")
COMPLETE = "COMPLETE"
CENTERS_KEY = "head.weight"


@contextmanager
def quiet_sharded_tensor() -> Iterator[None]:
    """Silences DCP's ShardedTensor deprecation notice within the block."""
    # DCP reshards a ShardedTensor with arbitrary row offsets; DTensor (its successor) only knows
    # torch.chunk splits, which differ from shard_range's. Its deprecation notice is not for users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        yield


def row_sharded(
    local: torch.Tensor, row_start: int, total_rows: int, group: dist.ProcessGroup | None = None
) -> Any:
    """Wrap this rank's rows ``[row_start, row_start + len(local))`` of a (total_rows, ...) tensor.

    The result is what DCP saves with its global position and loads with resharding. With one
    process and no process group the plain tensor is returned (it already is the whole matrix).
    """
    if not is_distributed(group):
        if local.shape[0] != total_rows:
            raise ValueError(f"one process must hold all {total_rows} rows, got {local.shape[0]}")
        return local
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    device = "cpu" if local.device.type == "cpu" else f"{local.device.type}:{local.device.index}"
    meta = ShardMetadata(
        shard_offsets=[row_start] + [0] * (local.dim() - 1),
        shard_sizes=list(local.shape),
        placement=f"rank:{rank(group)}/{device}",
    )
    with quiet_sharded_tensor():
        return init_from_local_shards(
            [Shard(local, meta)], total_rows, *local.shape[1:], process_group=group
        )


def local_rows(value: Any) -> torch.Tensor:
    """The local tensor behind :func:`row_sharded`'s result."""
    if isinstance(value, torch.Tensor) and not hasattr(value, "local_shards"):
        return value
    with quiet_sharded_tensor():
        return value.local_shards()[0].tensor


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"step-{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save(
    state: dict[str, Any],
    output_dir: str | os.PathLike,
    step: int,
    group: dist.ProcessGroup | None = None,
    keep: int | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``state`` atomically as ``output_dir/step-XXXXXXXX``; every rank must call it.

    Args:
        state: a DCP state dict; row-sharded entries come from :func:`row_sharded`.
        output_dir: the run's folder (shared by all ranks).
        step: the training step the state belongs to.
        group: the ranks writing it.
        keep: keep only the newest ``keep`` complete checkpoints (None keeps all).
        files: extra files this rank writes into the checkpoint (name -> bytes), inside the same
            atomic rename as the DCP files.

    Returns:
        The final checkpoint folder.
    """
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if rank(group) == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(group)  # the folder exists before anyone writes
    with quiet_sharded_tensor():
        dcp.save(state, checkpoint_id=tmp, process_group=group, no_dist=not is_distributed(group))
    for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)
    _barrier(group)  # every rank's files are written
    if rank(group) == 0:
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():  # a re-save of the same step replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears whole
        if keep is not None:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(group)
    return final


def load(
    state: dict[str, Any], path: str | os.PathLike, group: dist.ProcessGroup | None = None
) -> None:
    """Fill ``state`` in place from the checkpoint at ``path`` (any world size wrote it).

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint.
    """
    path = Path(path)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(
            f"{path} is not a complete partialfc checkpoint (no {COMPLETE} marker)"
        )
    with quiet_sharded_tensor():
        dcp.load(state, checkpoint_id=path, process_group=group, no_dist=not is_distributed(group))


def stored_entries(path: str | os.PathLike, keys: Iterator[str] | list[str]) -> set[str]:
    """Which of the state-dict entries ``keys`` the checkpoint at ``path`` holds.

    DCP flattens nested dicts into dotted names, so entry ``k`` is present when a stored name is
    ``k`` or starts with ``k.``. A checkpoint converted from another framework may hold only some
    entries (say the class centres and the backbone, without optimizer or data position).
    """
    stored = list(dcp.FileSystemReader(Path(path)).read_metadata().state_dict_metadata)
    return {k for k in keys if any(name == k or name.startswith(k + ".") for name in stored)}


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or the newest complete checkpoint of an ``output_dir``."""
    path = Path(path)
    if (path / COMPLETE).exists():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no complete partialfc checkpoint at or under {path}")
    return found


def read_class_centers(path: str | os.PathLike, key: str = CENTERS_KEY) -> torch.Tensor:
    """The full (C, D) class-centre matrix of a checkpoint, whatever world size wrote it.

    Args:
        path: a checkpoint folder, or an ``output_dir`` (its newest complete checkpoint is read).
        key: the state-dict key of the centres.

    Runs in one process, without torch.distributed.
    """
    path = resolve(path)
    metadata = dcp.FileSystemReader(path).read_metadata()
    if key not in metadata.state_dict_metadata:
        raise KeyError(f"{path} holds no '{key}'; it has {sorted(metadata.state_dict_metadata)}")
    entry = metadata.state_dict_metadata[key]
    out = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
    state = {key: out}
    with quiet_sharded_tensor():
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return state[key]


def _barrier(group: dist.ProcessGroup | None) -> None:
    if world_size(group) > 1:
        dist.barrier(group=group)
