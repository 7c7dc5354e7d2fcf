"""The head's checkpoint entries: row-sharded centres and optimizer state, plus its counters.

``head_state`` returns entries that wrap the *live* tensors (no copies): DCP saves them from there,
and loads into them in place, each rank reading exactly the rows it owns under the current world
size. Load with :func:`partialfc.checkpoint.load`, then call :func:`restore_head_state`.
"""

from __future__ import annotations

from typing import Any

import torch

from partialfc.checkpoint import row_sharded
from partialfc.heads import PartialFC
from partialfc.optim import RowSparseOptimizer


def head_state(
    head: PartialFC, optimizer: RowSparseOptimizer | None = None, prefix: str = "head"
) -> dict[str, Any]:
    """Checkpoint entries of ``head`` (and of ``optimizer``'s state for its parameters)."""

    # Sub-centres: the class-major (C*K, D) matrix; this rank's rows start at class_start*K.
    k = head.sub_centers

    def sharded(t: torch.Tensor) -> Any:
        return row_sharded(t, head.class_start * k, head.num_classes * k, head.process_group)

    state: dict[str, Any] = {
        f"{prefix}.weight": sharded(head.weight.detach()),
        f"{prefix}.step": head.step,
        f"{prefix}.margin": head.margin.state_dict(),
    }
    if head.bias is not None:
        state[f"{prefix}.bias"] = sharded(head.bias.detach())
    if optimizer is not None:
        for name, param in (("weight", head.weight), ("bias", head.bias)):
            if param is None:
                continue
            # The state exists before the first step, so that it can be saved or loaded into.
            optimizer.init_state(param)
            for key, value in optimizer.state[param].items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() >= 1 and value.shape[0] == param.shape[0]:
                    state[f"{prefix}.{name}.{key}"] = sharded(value)
                elif value.dim() == 0:  # SparseAdamW's step count: the same on every rank
                    state[f"{prefix}.{name}.{key}"] = value
    return state


def restore_head_state(head: PartialFC, state: dict[str, Any], prefix: str = "head") -> None:
    """Apply the non-tensor entries of a loaded :func:`head_state` (tensors were loaded in place)."""
    head.step = int(state[f"{prefix}.step"])
    head.margin.load_state_dict(state[f"{prefix}.margin"])
