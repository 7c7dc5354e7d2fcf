"""What a saved run says about itself: its ``config.json`` and its backbone's weights.

The trainer writes the run's whole config as ``config.json`` into every checkpoint; ``export``,
``eval``, ``eval-ijb`` and the converters need only the part that rebuilds the backbone (and, for
``torch2mxnet``, the margin). Reading it here, as plain data checked field by field, keeps those
readers free of the trainer's typed config: the trainer turns the same dictionary into its
:class:`~partialfc.train.config.Config` with ``Config.from_saved``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch import nn

from partialfc import backbones, margins
from partialfc.checkpoint.store import resolve
from partialfc.errors import UserFileError

CONFIG_FILE = "config.json"
"""Written by the trainer (and the converters) beside the DCP files of each checkpoint."""

FLAT_MARGIN_KEYS = ("s", "m1", "m2", "m3", "straight_through")
"""The head's flat margin keys before ``[head.margin_args]``: each meant something else per margin."""


@dataclass(frozen=True)
class SavedRun:
    """A checkpoint's ``config.json``, with the fields that rebuild its backbone checked.

    Attributes:
        path: the checkpoint folder.
        config: the saved config as written (sections of plain values), old flat margin keys
            turned into the ``margin_args`` they meant.
        backbone: the registered backbone name.
        embedding_size: the embedding width D.
        dropout: the dropout before the embedding layer (no parameters; kept so the module is
            the one that trained).
    """

    path: Path
    config: dict[str, Any]
    backbone: str
    embedding_size: int
    dropout: float = 0.0

    def margin(self) -> margins.Margin | None:
        """The margin the run trained with, ``MARGINS[head.margin](**head.margin_args)``; None
        when the saved config names none (a converted checkpoint may say only its backbone).

        Raises:
            UserFileError: the saved head names an unknown margin or arguments it does not take.
        """
        head = self.config.get("head")
        if not isinstance(head, dict) or "margin" not in head:
            return None
        try:
            return margins.build_margin(head["margin"], head.get("margin_args", {}))
        except ValueError as err:
            raise UserFileError(f"{self.path / CONFIG_FILE}: head.margin: {err}") from None


def upgrade_flat_margin(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with a saved head's flat margin keys turned into the ``margin_args`` they meant."""
    head = raw.get("head")
    if not isinstance(head, dict) or not set(head) & set(FLAT_MARGIN_KEYS):
        return raw
    head = dict(head)
    flat = {key: head.pop(key) for key in FLAT_MARGIN_KEYS if key in head}
    s, m1, m2, m3 = (
        flat.get(k, d) for k, d in (("s", 64.0), ("m1", 1.0), ("m2", 0.5), ("m3", 0.0))
    )
    st = flat.get("straight_through", False)
    head["margin_args"] = {
        "arcface": {"s": s, "m": m2, "straight_through": st},
        "cosface": {"s": s, "m": m3, "straight_through": st},
        "normface": {"s": s},
        "combined": {"s": s, "m1": m1, "m2": m2, "m3": m3, "straight_through": st},
        "sphereface": {"m": int(m1)},  # what build_margin made of m1 then
        "lsoftmax": {"m": int(m1)},
    }.get(head.get("margin", "arcface"), {})
    return {**raw, "head": head}


def read_run(path: str | os.PathLike[str]) -> SavedRun:
    """The ``config.json`` of a checkpoint folder (or of an ``output_dir``'s newest checkpoint).

    Raises:
        UserFileError: no complete checkpoint there, no ``config.json`` in it, or one that is not
            JSON or does not name a registered backbone and a positive embedding width.
    """
    try:
        ckpt = resolve(path)
    except FileNotFoundError as err:
        raise UserFileError(str(err)) from None
    file = ckpt / CONFIG_FILE
    if not file.is_file():
        raise UserFileError(f"{ckpt} has no {CONFIG_FILE}; was it written by partialfc's trainer?")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserFileError(f"{file}: not a readable JSON config ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise UserFileError(f"{file}: has no [model] section")
    model = raw["model"]
    name, width = model.get("backbone"), model.get("embedding_size")
    if name not in backbones.list_backbones():
        raise UserFileError(
            f"{file}: model.backbone {name!r} is no registered backbone; "
            f"known: {', '.join(backbones.list_backbones())}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise UserFileError(
            f"{file}: model.embedding_size must be a positive integer, got {width!r}"
        )
    dropout = model.get("dropout", 0.0)
    return SavedRun(ckpt, upgrade_flat_margin(raw), name, width, float(dropout))


def load_backbone(path: str | os.PathLike[str]) -> tuple[nn.Module, SavedRun]:
    """The backbone of a checkpoint, in eval mode on the CPU, and what its ``config.json`` says.

    Args:
        path: a checkpoint folder, or a run's ``output_dir`` (its newest complete checkpoint).

    Raises:
        UserFileError: see :func:`read_run`.
    """
    run = read_run(path)
    model = backbones.create(run.backbone, embedding_size=run.embedding_size, dropout=run.dropout)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=run.path, no_dist=True)
    model.load_state_dict(state["model"])
    return model.eval(), run
