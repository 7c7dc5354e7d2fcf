"""``partialfc convert``: insightface MXNet checkpoints <-> partialfc checkpoints.

``partialfc convert mxnet2torch PREFIX EPOCH OUT`` reads ``PREFIX-symbol.json`` and
``PREFIX-%04d.params`` (what ``mx.model.save_checkpoint`` writes) and writes a partialfc
checkpoint ``OUT/step-00000000``:

* ``fc7_weight`` as ``head.weight`` (and ``fc7_bias`` as ``head.bias``), a plain (C, D) tensor
  that DCP reads back row-sharded for any world size (``read_class_centers(OUT)``, or
  ``checkpoint.load(head_state(head), OUT)`` on every rank), with ``head.step = 0`` and an empty
  ``head.margin``;
* the backbone, where it is an insightface ``fresnet`` (unit version 3, PReLU, output "E"), as
  ``model`` (an iresnet ``state_dict``; :mod:`partialfc.legacy.names` has the mapping), plus a
  ``config.json`` naming the iresnet when its depth is a registered one, so ``partialfc export``
  and ``partialfc eval`` load it.

``partialfc convert arcface-torch SRC OUT`` converts an insightface arcface_torch output folder
(see :mod:`partialfc.legacy.arcface_torch`).

``partialfc convert torch2mxnet CHECKPOINT OUT_PREFIX`` goes back: ``head.weight`` as
``fc7_weight`` (``head.bias`` as ``fc7_bias``) and an iresnet backbone as fresnet parameters,
saved with ``mx.model.save_checkpoint`` at epoch 0 (``--epoch``) with insightface's training
symbol. Both directions copy arrays bit for bit, so mxnet -> torch -> mxnet is lossless.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partialfc.checkpoint.run import CONFIG_FILE, SavedRun
from partialfc.errors import UserError
from partialfc.legacy import names
from partialfc.legacy._mx import import_mxnet
from partialfc.margins import CombinedMargin, Margin

log = logging.getLogger(__name__)

REGISTERED_DEPTHS = {
    (2, 2, 2, 2): "iresnet18",
    (3, 4, 6, 3): "iresnet34",
    (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100",
    (6, 26, 60, 6): "iresnet200",
}


@dataclass
class Conversion:
    """What a conversion wrote, for the command's summary and for tests."""

    path: Path
    num_classes: int = 0
    embedding_size: int = 0
    backbone: str | None = None
    """The registered iresnet name, "iresnet[...]" for an unregistered depth, or None."""
    unmapped: list[str] = field(default_factory=list)
    """Parameters that were not converted."""


# --------------------------------------------------------------------------- MXNet -> torch


def _read_params(prefix: str, epoch: int) -> dict[str, np.ndarray]:
    path = Path(f"{prefix}-{epoch:04d}.params")
    if not path.is_file():
        raise FileNotFoundError(f"no MXNet parameter file {path} (PREFIX-%04d.params of EPOCH)")
    mx = import_mxnet()
    out: dict[str, np.ndarray] = {}
    for key, value in mx.nd.load(str(path)).items():
        kind, _, name = key.partition(":")
        if kind not in ("arg", "aux") or not name:
            raise ValueError(
                f"{path}: unexpected entry {key!r} (expected 'arg:NAME' or 'aux:NAME')"
            )
        out[name] = value.asnumpy()
    return out


def _fixed_gamma_layers(prefix: str) -> set[str]:
    """BatchNorm layers with ``fix_gamma=True`` in ``PREFIX-symbol.json`` (MXNet's default!)."""
    path = Path(f"{prefix}-symbol.json")
    if not path.is_file():
        log.warning("%s not found; assuming insightface's layout (only fc1 has fix_gamma)", path)
        return {"fc1"}
    graph = json.loads(path.read_text())
    fixed = set()
    for node in graph.get("nodes", []):
        if node.get("op") == "BatchNorm":
            attrs = node.get("attrs", node.get("param", {})) or {}
            if str(attrs.get("fix_gamma", "True")).lower() in ("true", "1"):
                fixed.add(node["name"])
    return fixed


def _backbone_state(
    params: dict[str, np.ndarray], fixed_gamma: set[str]
) -> tuple[dict[str, torch.Tensor], tuple[int, ...], list[str]] | None:
    """The iresnet state_dict of fresnet ``params``, its stage depths, and what did not map."""
    units = names.fresnet_units(params)
    if units is None:
        return None
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, value in params.items():
        if name in names.HEAD_NAMES:
            continue
        key = names.mxnet_to_torch(name)
        if key is None:
            unmapped.append(name)
            continue
        if name.endswith("_gamma") and name[: -len("_gamma")] in fixed_gamma:
            # fix_gamma: MXNet computes with a scale of 1 whatever is stored; so must we.
            if not np.all(value == 1):
                log.warning("%s is stored as non-1 but fixed at 1 by fix_gamma; writing 1", name)
            value = np.ones_like(value)
        state[key] = torch.from_numpy(np.array(value, copy=True))
    return state, units, unmapped


def mxnet_to_torch(prefix: str, epoch: int, out: str | Path) -> Conversion:
    """Convert an insightface MXNet checkpoint into a partialfc checkpoint under ``out``.

    Raises:
        FileNotFoundError: no ``PREFIX-EPOCH.params``.
        ValueError: it holds neither ``fc7_weight`` nor a fresnet backbone.
    """
    from partialfc import checkpoint
    from partialfc.backbones.iresnet import IResNet

    params = _read_params(prefix, epoch)
    state: dict[str, Any] = {}
    result = Conversion(path=Path(out))
    if "fc7_weight" in params:
        weight = torch.from_numpy(params["fc7_weight"].copy())
        result.num_classes, result.embedding_size = weight.shape
        state.update({"head.weight": weight, "head.step": 0, "head.margin": {}})
        if "fc7_bias" in params:
            state["head.bias"] = torch.from_numpy(params["fc7_bias"].copy())
    else:
        log.warning(
            "%s has no fc7_weight (an embedding-only checkpoint?): no class centres", prefix
        )

    files: dict[str, bytes] = {}
    backbone = _backbone_state(params, _fixed_gamma_layers(prefix))
    if backbone is not None:
        mapped, units, unmapped = backbone
        emb = int(mapped["fc.weight"].shape[0]) if "fc.weight" in mapped else 0
        missing: list[str] = []
        model = None
        if min(units) >= 1 and emb > 0:
            model = IResNet(units, embedding_size=emb)
            expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
            missing = sorted(expected - set(mapped))
        if model is None or unmapped or missing:
            # A different fresnet variant (SE blocks, bottlenecks, another output layer...).
            log.warning(
                "backbone not converted: it does not match iresnet%s (unmapped MXNet "
                "parameters: %s; missing iresnet parameters: %s)",
                list(units), unmapped[:8], missing[:8],
            )  # fmt: skip
            result.unmapped = sorted(k for k in params if k not in names.HEAD_NAMES)
        else:
            shapes_ok = all(model.state_dict()[k].shape == v.shape for k, v in mapped.items())
            if not shapes_ok:
                raise ValueError(f"{prefix}: fresnet parameter shapes do not match iresnet{units}")
            model.load_state_dict(mapped, strict=False)  # num_batches_tracked stay 0
            state["model"] = model.state_dict()
            name = REGISTERED_DEPTHS.get(tuple(units))
            result.backbone = name or f"iresnet{list(units)}"
            result.embedding_size = result.embedding_size or emb
            if name is None:
                log.warning(
                    "stage depths %s are no registered iresnet: the backbone is saved as 'model' "
                    "but without config.json (partialfc export cannot build it)",
                    list(units),
                )
            else:
                files["config.json"] = _config_json(name, emb, result.num_classes, state)
    if not state:
        raise ValueError(f"{prefix}-{epoch:04d}.params holds neither fc7_weight nor a fresnet")
    result.path = checkpoint.save(state, out, step=0, files=files)
    return result


def _config_json(backbone: str, emb: int, num_classes: int, state: dict[str, Any]) -> bytes:
    # Only what the run's config must say; the trainer's Config.from_saved fills in the defaults
    # (tests/unit/legacy/test_convert.py reads it so). The data section is a placeholder (the
    # synthetic loader); a training run sets its own data.root. export and eval read the model.
    raw: dict[str, Any] = {
        "model": {"backbone": backbone, "embedding_size": emb, "dropout": 0.0},
        "data": {"loader": "synthetic", "num_classes": max(num_classes, 1)},
        # insightface's default (m1, m2, m3) = (1, 0.5, 0) is ArcFace; softmax is the only
        # partialfc head with a class bias
        "head": {"margin": "softmax" if "head.bias" in state else "arcface"},
    }
    return json.dumps(raw, indent=2).encode()


# --------------------------------------------------------------------------- torch -> MXNet


def torch_to_mxnet(checkpoint_path: str | Path, out_prefix: str, epoch: int = 0) -> Conversion:
    """Write a partialfc checkpoint's class centres (and iresnet backbone) as MXNet files.

    The folder of ``out_prefix`` is created (parents too) if missing.

    Raises:
        FileNotFoundError: no complete checkpoint at ``checkpoint_path``.
        ValueError: it holds neither class centres nor a config.json naming an iresnet.
        UserError: the folder of ``out_prefix`` cannot be created.
    """
    import torch.distributed.checkpoint as dcp

    from partialfc.checkpoint import load_backbone, read_class_centers, read_run, resolve

    mx = import_mxnet()
    _make_prefix_folder(out_prefix)  # before reading the checkpoint: a bad path costs nothing
    path = resolve(checkpoint_path)
    keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    result = Conversion(path=Path(out_prefix))
    arrays: dict[str, np.ndarray] = {}
    for mx_name, key in names.HEAD_NAMES.items():
        if key in keys:
            arrays[mx_name] = read_class_centers(path, key=key).numpy()
    if "fc7_weight" in arrays:
        result.num_classes, result.embedding_size = arrays["fc7_weight"].shape

    saved: SavedRun | None = read_run(path) if (path / CONFIG_FILE).is_file() else None
    units: tuple[int, ...] | None = None
    if saved is not None and saved.backbone.startswith("iresnet"):
        model, _ = load_backbone(path)
        units = tuple(
            len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
        )
        for key, value in model.state_dict().items():
            mx_name = names.torch_to_mxnet(key)
            if mx_name is None:
                if not key.endswith("num_batches_tracked"):
                    result.unmapped.append(key)
                continue
            arrays[mx_name] = value.detach().cpu().numpy()
        result.backbone = saved.backbone
        result.embedding_size = result.embedding_size or saved.embedding_size
    elif saved is not None:
        log.warning(
            "backbone %s has no MXNet layout here; only the class centres are written",
            saved.backbone,
        )
    if not arrays:
        raise ValueError(f"{path} holds no head.weight and no iresnet backbone to convert")

    symbol = _training_symbol(mx, saved, units, result, has_bias="fc7_bias" in arrays)
    arg = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items() if not names.is_aux(k)}
    aux = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items() if names.is_aux(k)}
    mx.model.save_checkpoint(out_prefix, epoch, symbol, arg, aux)
    return result


def _make_prefix_folder(out_prefix: str | Path) -> None:
    """Creates the folder of ``OUT_PREFIX`` (and its parents): MXNet's writer does not.

    Raises:
        UserError: a file stands where a folder is needed, or the folder cannot be created.
    """
    folder = Path(out_prefix).parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(
            f"torch2mxnet OUT_PREFIX {out_prefix}: cannot create the folder {folder} "
            f"({'a file of that name exists' if blocker == folder else f'{blocker} is a file'})"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"torch2mxnet OUT_PREFIX {out_prefix}: cannot create the folder {folder} "
            f"({exc.strerror})"
        ) from None


def _training_symbol(
    mx: Any,
    saved: SavedRun | None,
    units: tuple[int, ...] | None,
    result: Conversion,
    has_bias: bool,
) -> Any:
    """insightface's training symbol for the converted arrays (the embedding alone, without fc7)."""
    from partialfc.legacy.fresnet import PARTIALFC_BN_EPS, PARTIALFC_INPUT_SCALE, fresnet_embedding
    from partialfc.legacy.symbol import get_symbol

    if units is not None:
        # The trained function exactly: partialfc's BatchNorm eps and input scaling on 0-255 pixels.
        embedding = fresnet_embedding(
            units, result.embedding_size, bn_eps=PARTIALFC_BN_EPS, dropout=saved.dropout if saved else 0.0,
            input_scale=PARTIALFC_INPUT_SCALE,
        )  # fmt: skip
    else:
        embedding = mx.sym.Variable("data")
    if not result.num_classes:
        return embedding
    sym_cfg: dict[str, Any] = {
        "num_classes": result.num_classes, "emb_size": result.embedding_size, "fc7_lr_mult": 1.0,
        "fc7_wd_mult": 1.0, "ce_loss": False, "fc7_no_bias": not has_bias,
    }  # fmt: skip
    margin = saved.margin() if saved is not None else None
    if has_bias:
        sym_cfg["loss_name"] = "softmax"
    else:
        s, m = _margins(margin) if margin is not None else (64.0, (1.0, 0.5, 0.0))
        if m is None:
            log.warning("margin %s has no insightface symbol; writing NormFace", margin)
            m = (1.0, 0.0, 0.0)
        sym_cfg.update(
            loss_name="margin_softmax", loss_s=s, loss_m1=m[0], loss_m2=m[1], loss_m3=m[2]
        )
    return get_symbol(sym_cfg, embedding)


def _margins(margin: Margin) -> tuple[float, tuple[float, float, float] | None]:
    """The scale and insightface's (m1, m2, m3) of the run's margin; None: it has none (a
    margin that is not a CombinedMargin: NormFace is written instead)."""
    if isinstance(margin, CombinedMargin):
        return margin.scale, (margin.m1, margin.m2, margin.m3)
    return 64.0, None
