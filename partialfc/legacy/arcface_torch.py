"""``partialfc convert arcface-torch SRC OUT``: an insightface arcface_torch run -> partialfc.

arcface_torch's ``train_v2.py`` writes, in its output folder, ``model.pt`` (rank 0: the backbone's
``state_dict``) and, with ``save_all_states``, one ``checkpoint_gpu_{rank}.pt`` per rank holding
``state_dict_backbone``, ``state_dict_softmax_fc`` (``{"weight": (num_local, D)}``, the rank's
rows of ``PartialFC_V2``), ``state_optimizer`` (one SGD or AdamW over two groups, the backbone's
parameters then the centres, "the params of partial fc must be last") and ``global_step``
(micro-batches). Its class split is ours (DESIGN rule 1, ``PartialFC_V2.__init__``): rank r of W
owns ``start = r*(C//W) + min(r, C%W)``, ``count = C//W + (r < C%W)``; so the full matrix is the
shards concatenated in rank order.

The partialfc checkpoint ``OUT/step-XXXXXXXX`` holds ``model``, ``head.weight`` (C, D) and, when
the optimizer state has them, the centres' SGD momentum (``head.weight.momentum_buffer``) or AdamW
moments and step (``head.weight.exp_avg``, ``exp_avg_sq``, ``step``), with ``head.step`` (forward
calls) and ``trainer.step`` (optimizer steps: ``global_step // gradient_acc``). DCP reads the plain
(C, D) tensors back row-sharded for any world size. The backbone's optimizer state, the loader
position and the RNG streams are not converted: the resumed run starts them fresh.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from partialfc.errors import UserError, UserFileError
from partialfc.progress import track

log = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"checkpoint_gpu_(\d+)\.pt")
ADAMW_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class ArcfaceTorchConversion:
    """What a conversion wrote, for the command's summary and for tests."""

    path: Path
    step: int = 0
    num_classes: int = 0
    embedding_size: int = 0
    ranks: int = 0
    optimizer_state: tuple[str, ...] = ()
    """The centres' optimizer entries converted (momentum_buffer, or exp_avg, exp_avg_sq, step)."""


def convert(
    src: str | Path, out: str | Path, gradient_acc: int = 1, progress: bool = False
) -> ArcfaceTorchConversion:
    """Convert the arcface_torch output folder ``src`` into a partialfc checkpoint under ``out``.

    Args:
        src: the folder with ``model.pt`` and/or ``checkpoint_gpu_{rank}.pt``.
        out: a partialfc ``train.output_dir`` (created).
        gradient_acc: arcface_torch's ``config.gradient_acc``: its ``global_step`` counts
            micro-batches, partialfc's step counts optimizer steps.
        progress: report the loading of the rank files (:mod:`partialfc.progress`).

    Raises:
        UserError: no such folder, none of the files, missing ranks, or inconsistent shards.
    """
    from partialfc import checkpoint

    src = Path(src)
    if not src.is_dir():
        raise UserFileError(f"convert arcface-torch: {src} is not a folder")
    shards = _rank_files(src)
    if not shards:
        if not (src / "model.pt").is_file():
            raise UserFileError(
                f"convert arcface-torch: {src} holds neither model.pt nor checkpoint_gpu_*.pt"
            )
        model = _load(src / "model.pt")
        result = ArcfaceTorchConversion(path=Path(out))
        result.path = checkpoint.save({"model": model}, out, step=0)
        return result
    # Each rank's file holds its shard of the centres and their momentum: gigabytes at Glint360K.
    loaded = [_load(path) for path in track(shards, "load", "shard", enabled=progress)]
    for path, ckpt in zip(shards, loaded, strict=True):
        for key in ("state_dict_backbone", "state_dict_softmax_fc", "global_step"):
            if key not in ckpt:
                raise UserError(f"convert arcface-torch: {path} has no {key!r}")
    weights = [_shard_weight(path, ckpt) for path, ckpt in zip(shards, loaded, strict=True)]
    _check_split(shards, weights)
    global_step = int(loaded[0]["global_step"])
    step = global_step // gradient_acc
    state: dict[str, Any] = {
        "model": loaded[0]["state_dict_backbone"],  # identical on every rank (DDP)
        "head.weight": torch.cat(weights),
        "head.step": global_step,  # forward calls: one per micro-batch
        "head.margin": {},
        "trainer": {"step": step, "nonfinite_total": 0},
    }
    opt_state = [_centre_state(p, c, w) for p, c, w in zip(shards, loaded, weights, strict=True)]
    keys = set(opt_state[0])
    if any(set(s) != keys for s in opt_state):
        log.warning(
            "the ranks' optimizer states differ in kind: the centres' state is not converted"
        )
        keys = set()
    for key in sorted(keys):
        if key == "step":
            state["head.weight.step"] = torch.tensor(
                float(opt_state[0]["step"]), dtype=torch.float64
            )
        else:
            state[f"head.weight.{key}"] = torch.cat([s[key] for s in opt_state])
    path = checkpoint.save(state, out, step=step)
    num_classes, dim = state["head.weight"].shape
    return ArcfaceTorchConversion(
        path=path,
        step=step,
        num_classes=int(num_classes),
        embedding_size=int(dim),
        ranks=len(shards),
        optimizer_state=tuple(sorted(keys)),
    )


def _rank_files(src: Path) -> list[Path]:
    """``checkpoint_gpu_{rank}.pt`` for ranks 0..W-1 in rank order; an error if one is missing."""
    found = {int(m.group(1)): p for p in src.iterdir() if (m := CHECKPOINT.fullmatch(p.name))}
    missing = sorted(set(range(max(found, default=-1) + 1)) - set(found))
    if missing:
        raise UserError(
            f"convert arcface-torch: {src} has checkpoint_gpu_*.pt of ranks {sorted(found)} but "
            f"not of rank(s) {missing}: every rank's shard of the class centres is needed"
        )
    return [found[r] for r in sorted(found)]


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors of a damaged or foreign file
        raise UserFileError(f"convert arcface-torch: {path} is not readable ({err})") from None


def _shard_weight(path: Path, ckpt: dict) -> torch.Tensor:
    fc = ckpt["state_dict_softmax_fc"]
    weight = fc.get("weight") if isinstance(fc, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UserError(
            f"convert arcface-torch: {path}: state_dict_softmax_fc has no (rows, D) weight"
        )
    return weight


def _check_split(shards: list[Path], weights: list[torch.Tensor]) -> None:
    """The shards' row counts must be arcface_torch's (and our) split of their total."""
    from partialfc.distributed import shard_range

    total, world = sum(w.shape[0] for w in weights), len(weights)
    for rank, (path, w) in enumerate(zip(shards, weights, strict=True)):
        _, count = shard_range(total, world, rank)
        if w.shape[0] != count or w.shape[1] != weights[0].shape[1]:
            raise UserError(
                f"convert arcface-torch: {path} holds {tuple(w.shape)} class centres; rank {rank} "
                f"of {world} owns {count} of {total} classes (width {weights[0].shape[1]}): the "
                "files are not one run's"
            )


def _centre_state(path: Path, ckpt: dict, weight: torch.Tensor) -> dict[str, Any]:
    """The centres' SGD momentum or AdamW moments in ``state_optimizer``, if there."""
    opt = ckpt.get("state_optimizer")
    try:
        centre_id = opt["param_groups"][-1]["params"][-1]  # the centres come last
        entry = opt["state"].get(centre_id, {})
    except (KeyError, IndexError, TypeError, AttributeError):
        log.warning(
            "%s: no usable state_optimizer: the centres' optimizer state starts fresh", path
        )
        return {}
    if "momentum_buffer" in entry and entry["momentum_buffer"] is not None:
        state = {"momentum_buffer": entry["momentum_buffer"]}
    elif all(k in entry for k in ADAMW_KEYS):
        state = {k: entry[k] for k in ADAMW_KEYS} | {"step": entry.get("step", 0)}
    else:
        return {}
    for key, value in state.items():
        if key != "step" and tuple(value.shape) != tuple(weight.shape):
            raise UserError(
                f"convert arcface-torch: {path}: the optimizer's {key} has shape "
                f"{tuple(value.shape)}, the centres {tuple(weight.shape)}"
            )
    return state
