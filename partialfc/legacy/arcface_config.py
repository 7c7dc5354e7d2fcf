"""``partialfc import-config arcface_torch CONFIG.py``: an arcface_torch config as partialfc TOML.

arcface_torch's configs are Python (``config = edict(); config.lr = 0.1; ...``) merged over
``configs/base.py`` (``utils_config.get_config``). This reads them **without executing them**: the
file is parsed with :mod:`ast` and only assignments ``config.NAME = EXPR`` are evaluated, where
EXPR is a literal, a tuple or list of them, an earlier ``config.NAME``, or arithmetic on those
(``config.warmup_epoch = config.num_epoch // 10``). Anything else is reported as not read. The
printed TOML has every setting that maps and a comment for each that does not.
"""

from __future__ import annotations

import ast
import json
import operator
from pathlib import Path
from typing import Any

from partialfc.errors import UserFileError

# arcface_torch's configs/base.py (the values every job config starts from).
BASE: dict[str, Any] = {
    "margin_list": (1.0, 0.5, 0.0),
    "network": "r50",
    "resume": False,
    "save_all_states": False,
    "output": "ms1mv3_arcface_r50",
    "embedding_size": 512,
    "sample_rate": 1,
    "interclass_filtering_threshold": 0,
    "fp16": False,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "verbose": 2000,
    "frequent": 10,
    "dali": False,
    "dali_aug": False,
    "gradient_acc": 1,
    "seed": 2048,
    "num_workers": 2,
    "wandb_key": "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "suffix_run_name": None,
    "using_wandb": False,
    "wandb_entity": "entity",
    "wandb_project": "project",
    "wandb_log_all": True,
    "save_artifacts": False,
    "wandb_resume": False,
}
NOT_MAPPED = {
    "resume": "partialfc resumes from train.output_dir's newest checkpoint by itself",
    "save_all_states": "partialfc's checkpoints always hold every state (resumable on any size)",
    "dali_aug": "partialfc's DALI loader applies its own augmentation",
    "num_classes": "partialfc reads it from data.root's property file",
    "num_image": "partialfc counts the records (used above for optim.warmup_steps)",
    "suffix_run_name": "no Weights & Biases in partialfc",
}
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def read_config(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """``config.NAME`` values assigned in ``path`` (not executed), and the statements not read.

    Raises:
        UserFileError: no such file, or not Python.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except OSError as err:
        raise UserFileError(f"import-config: {path}: {err.strerror}") from None
    except SyntaxError as err:
        raise UserFileError(f"import-config: {path}:{err.lineno}: not Python ({err.msg})") from None
    values: dict[str, Any] = {}
    skipped: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or _is_config_creation(node):
            continue
        target = _config_target(node)
        if target is None:
            skipped.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
            continue
        try:
            values[target] = _evaluate(node.value, values)
        except ValueError as err:
            skipped.append(f"line {node.lineno}: config.{target} ({err})")
    return values, skipped


def _is_config_creation(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and [ast.unparse(t) for t in node.targets] == ["config"]
        and isinstance(node.value, ast.Call)
    )


def _config_target(node: ast.stmt) -> str | None:
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return None
    t = node.targets[0]
    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "config":
        return t.attr
    return None


def _evaluate(node: ast.expr, values: dict[str, Any]) -> Any:
    """A literal, a tuple/list, ``config.NAME`` (assigned before) or arithmetic on them."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List):
        items = [_evaluate(e, values) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand, values)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "config":
        if node.attr in values:
            return values[node.attr]
        raise ValueError(f"config.{node.attr} is used before it is set")
    raise ValueError(f"not a literal: {ast.unparse(node)[:60]}")


def to_partialfc(
    cfg: dict[str, Any], world_size: int, name: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """partialfc sections for the merged arcface_torch ``cfg``, and comments for what does not map.

    ``world_size`` is the number of GPUs the arcface_torch run used (its batch_size is per GPU).
    """
    from partialfc import backbones

    c = {**BASE, **cfg}
    notes: list[str] = []
    acc = int(c["gradient_acc"])
    global_batch = int(c["batch_size"]) * world_size * acc
    data: dict[str, Any] = {
        "root": c.get("rec", ""),
        "loader": "dali" if c["dali"] else "torch",
        "global_batch_size": global_batch,
        "workers": int(c["num_workers"]),
    }
    model: dict[str, Any] = {"embedding_size": int(c["embedding_size"])}
    if c["network"] in backbones.list_backbones():
        model["backbone"] = c["network"]
    else:
        notes.append(f"config.network = {c['network']!r}: no partialfc backbone of that name")
    head = _margin(tuple(c["margin_list"]), notes)
    head["sample_rate"] = float(c["sample_rate"])
    head["interclass_filtering_threshold"] = float(c["interclass_filtering_threshold"])
    optim: dict[str, Any] = {"name": c["optimizer"], "lr": float(c["lr"])}
    optim["weight_decay"] = float(c["weight_decay"])
    if c["optimizer"] == "sgd":
        optim["momentum"] = float(c["momentum"])
    optim["decay_power"] = 1.0  # train_v2.py's PolynomialLRWarmup, power 1
    train: dict[str, Any] = {
        "output_dir": c["output"] or f"work_dirs/{name}",
        "seed": int(c["seed"]),
        "precision": "fp16" if c["fp16"] else "fp32",
        "grad_accum": acc,
        "clip_grad_norm": 5.0,  # train_v2.py clips the backbone's gradient norm at 5
        "log_every": max(1, int(c["frequent"]) // acc),
    }
    if "num_epoch" in c:
        train["epochs"] = int(c["num_epoch"])
    if "num_image" in c and "warmup_epoch" in c:
        # arcface_torch counts micro-batches of batch_size x world size; partialfc counts steps
        optim["warmup_steps"] = int(c["num_image"]) // global_batch * int(c["warmup_epoch"])
    rec = c.get("rec", "")
    evaluation = {
        "sets": [f"{rec}/{t}.bin" for t in c.get("val_targets", [])],
        "every": max(1, int(c["verbose"]) // acc),
    }
    wandb = [k for k in c if "wandb" in k or k == "save_artifacts"]
    if wandb:
        notes.append(
            f"config.{', config.'.join(wandb)}: no Weights & Biases in partialfc (metrics go to "
            "metrics.jsonl, Prometheus and TensorBoard)"
        )
    for key in c:
        if key in NOT_MAPPED:
            notes.append(f"config.{key} = {c[key]!r}: {NOT_MAPPED[key]}")
        elif key not in _MAPPED and key not in wandb:
            notes.append(f"config.{key} = {c[key]!r}: not a setting partialfc knows")
    sections = {
        "data": data,
        "model": model,
        "head": head,
        "optim": optim,
        "train": train,
        "eval": evaluation,
    }
    return sections, notes


_MAPPED = {
    "margin_list",
    "network",
    "output",
    "embedding_size",
    "sample_rate",
    "interclass_filtering_threshold",
    "fp16",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "verbose",
    "frequent",
    "dali",
    "gradient_acc",
    "seed",
    "num_workers",
    "rec",
    "num_epoch",
    "warmup_epoch",
    "val_targets",
}


def _margin(margins: tuple, notes: list[str]) -> dict[str, Any]:
    """arcface_torch's CombinedMarginLoss(64, m1, m2, m3): arcface (m1 = 1, m3 = 0, its gradient
    straight through, computed under no_grad) or cosface (m3 > 0; m1 and m2 are then unused)."""
    m1, m2, m3 = (float(m) for m in margins)
    arcface = {"s": 64.0, "m": m2, "straight_through": True}
    if m1 == 1.0 and m3 == 0.0:
        return {"margin": "arcface", "margin_args": arcface}
    if m3 > 0:
        if (m1, m2) != (1.0, 0.0):
            notes.append(f"config.margin_list = {margins}: arcface_torch uses m3 alone (cosface)")
        return {"margin": "cosface", "margin_args": {"s": 64.0, "m": m3}}
    notes.append(f"config.margin_list = {margins}: arcface_torch raises for it; arcface 0.5 used")
    return {"margin": "arcface", "margin_args": {**arcface, "m": 0.5}}


def to_toml(sections: dict[str, dict[str, Any]], notes: list[str], skipped: list[str]) -> str:
    lines = []
    for title, group in (("not mapped", notes), ("not read (not a literal assignment)", skipped)):
        if group:
            lines += [f"# {title}:", *(f"#   {n}" for n in group), ""]
    for section, values in sections.items():
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if key not in tables]
        lines.append("")
        for key, table in tables.items():  # [head.margin_args]
            lines.append(f"[{section}.{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"
