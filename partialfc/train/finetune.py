"""Starting a run from existing weights: ``[model] pretrained``, ``freeze_bn``, ``[head] init``.

Weights come from a state_dict file (arcface_torch's ``model.pt`` and model-zoo ``backbone.pth``
are plain state_dicts of the backbone), an arcface_torch ``checkpoint_gpu_{rank}.pt`` (its
``state_dict_backbone``), an arcface_torch output folder (its ``model.pt``) or a partialfc run or
checkpoint folder (the ``model`` entry). They load strictly: every key and shape must match.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from partialfc import checkpoint
from partialfc.distributed import all_gather_no_grad
from partialfc.errors import UserError, UserFileError
from partialfc.heads import PartialFC

ARCFACE_TORCH_KEY = "state_dict_backbone"  # the backbone's entry of checkpoint_gpu_{rank}.pt
SHOWN = 8  # keys listed per kind in an error; the rest are counted


class PretrainedError(UserError):
    """The pretrained weights do not fit the backbone (every rank finds it: rank 0 reports)."""

    same_on_every_rank = True


def read_pretrained(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone state_dict stored at ``path`` (any of the module docstring's forms), on CPU.

    Raises:
        UserFileError: nothing readable there.
    """
    path = Path(path)
    if not path.exists():
        raise UserFileError(f"model.pretrained: {path} does not exist")
    if path.is_dir():
        if (path / "model.pt").is_file():  # an arcface_torch output folder
            return read_pretrained(path / "model.pt")
        try:
            ckpt = checkpoint.resolve(path)
        except FileNotFoundError:
            raise UserFileError(
                f"model.pretrained: {path} is a folder with neither a model.pt (arcface_torch) "
                "nor a complete partialfc checkpoint"
            ) from None
        return _read_partialfc(ckpt)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors of a damaged or foreign file
        raise UserFileError(f"model.pretrained: {path} is not a torch file ({err})") from None
    if isinstance(obj, dict) and isinstance(obj.get(ARCFACE_TORCH_KEY), dict):
        obj = obj[ARCFACE_TORCH_KEY]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserFileError(
            f"model.pretrained: {path} holds a {type(obj).__name__}, not a state_dict of tensors"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _read_partialfc(ckpt: Path) -> dict[str, torch.Tensor]:
    meta = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
    state = {
        key.removeprefix("model."): torch.empty(tuple(m.size), dtype=m.properties.dtype)
        for key, m in meta.items()
        if key.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    with checkpoint.quiet_sharded_tensor():
        dcp.load({"model": state}, checkpoint_id=ckpt, no_dist=True)
    return state


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load the weights at ``path`` into ``model``, strictly.

    Raises:
        PretrainedError: keys missing from the file, keys the model does not have, or other shapes;
            each listed (the first few of each kind, then a count).
    """
    state = read_pretrained(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (the model: {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"model.pretrained: {path}: {len(found)} {kind}: {_listed(found)}"
        for kind, found in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("other shape(s)", shapes),
        )
        if found
    ]
    if problems:
        raise PretrainedError(*problems)
    model.load_state_dict(state, strict=True)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm layer of ``model`` in eval mode, whatever ``model.train()`` says;
    returns how many there are."""

    def stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        # nn.Module.train calls each child's own train(): an instance attribute wins.
        layer.train = types.MethodType(stay_in_eval, layer)
        layer.eval()
    return len(layers)


@torch.no_grad()
def init_class_means(
    backbone: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    head: PartialFC,
    device: torch.device,
) -> int:
    """Set each centre to the normalised mean unit embedding of its class under ``backbone``.

    Each rank embeds its own ``batches`` (its slice of one pass over the data; every rank the same
    number of batches of the same size); the embeddings and labels of every rank are gathered, and
    each rank sums those of the classes it owns, so each centre is written by its owner. Classes
    with no image keep their initial centre. Returns the number of this rank's classes set.
    """
    if head.sub_centers != 1:  # K equal rows per class: the first would win every sample
        raise ValueError("class_means initialises one centre per class, not sub-centres")
    dim = head.weight.shape[1]
    sums = torch.zeros(head.num_local, dim, dtype=torch.float64, device=device)
    counts = torch.zeros(head.num_local, dtype=torch.float64, device=device)
    was_training = backbone.training
    backbone.eval()
    try:
        for images, labels in batches:
            emb = F.normalize(backbone(images.to(device)).double(), dim=1)  # (b, D)
            every = all_gather_no_grad(emb)  # (B, D): the global batch, rank order
            local = all_gather_no_grad(labels.to(device)) - head.class_start  # (B,)
            mine = (local >= 0) & (local < head.num_local)
            sums.index_add_(0, local[mine], every[mine])
            counts.index_add_(0, local[mine], torch.ones_like(local[mine], dtype=counts.dtype))
    finally:
        backbone.train(was_training)
    seen = counts > 0
    head.weight[seen] = F.normalize(sums[seen], dim=1).to(head.weight.dtype)
    return int(seen.sum())
