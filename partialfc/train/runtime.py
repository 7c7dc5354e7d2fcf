"""Process setup for the trainer: torchrun's environment or a single plain process."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(timeout_s: float = 1800.0) -> Runtime:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR ...).

    NCCL with one GPU per local rank when CUDA is available, gloo on CPU. Without torchrun's
    variables this is a lone process and no group is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=_restart_safe_store(world, timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    return Runtime(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _restart_safe_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The agent's store under a per-attempt prefix, when torchrun shares one across restarts.

    torchrun (c10d rendezvous) hosts one TCPStore for all restart rounds and hands it to the
    workers without a per-attempt prefix, so after a worker is killed the keys of the dead attempt
    (gloo's peer addresses among them) are still there, and a restarted worker may read its peer's
    old address and fail to connect. A prefix per restart count gives every attempt clean keys.
    Returns None (init from the environment as usual) in every other setting.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"partialfc/attempt-{attempt}", base)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
