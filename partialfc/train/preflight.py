"""Preflight: everything a run needs, checked before any work, each problem named in one line.

``python -m partialfc.train CONFIG --check [overrides]`` runs these checks and prints the run it
would start (exit 0) or the problems (exit 2); every run runs them again in each process before
the process group forms, and ``launch/*.sh`` run them before torchrun spawns anything. Each check
is cheap (the ``.idx`` is parsed, no image is read) unless ``data.verify = true``, which decodes
every record as ``partialfc inspect --verify`` does.

Checks: the config (every field and cross-field rule, with the key), the batch split over the
ranks, the dataset's files, ``property`` against record 0, every ``.idx`` offset inside the
``.rec``, the step count against ``optim.warmup_steps``, the eval sets, ``train.output_dir``
writable and not held by another run, the metrics ports free, the packages of the TensorBoard and
W&B sinks installed where they are asked for, and an existing checkpoint's
shapes, backbone, margin, batch and seed against the config.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from partialfc import checkpoint
from partialfc.errors import UserError
from partialfc.train import lock
from partialfc.train.config import Config, OptimConfig

MAX_LISTED = 10  # bad records listed by data.verify before "... and N more"


class PreflightError(UserError):
    """The run cannot start; ``problems`` lists why, one line each."""

    same_on_every_rank = True


@dataclass
class Preflight:
    """What the checks found out about the run (valid only when ``problems`` is empty)."""

    cfg: Config
    world_size: int
    problems: list[str] = field(default_factory=list)
    num_images: int = 0
    num_classes: int = 0
    total_steps: int = 0
    resume_from: Path | None = None
    resume_step: int = 0

    def summary(self) -> str:
        """The run these checks would start, in a few lines."""
        c = self.cfg
        data = (
            f"synthetic images of {self.num_classes} classes"
            if c.data.loader == "synthetic"
            else f"{self.num_images} images of {self.num_classes} classes in {c.data.root} "
            f"({c.data.loader} loader, {c.data.workers} workers a rank)"
        )
        start = (
            f"resumes {self.resume_from} at step {self.resume_step}"
            if self.resume_from
            else "starts at step 0"
        )
        return "\n".join(
            [
                f"data:    {data}",
                f"model:   {c.model.backbone}, embedding {c.model.embedding_size}, head "
                f"{c.head.margin} over {self.num_classes} classes, "
                + (
                    f"sample_rate_schedule {c.head.sample_rate_schedule}"
                    if c.head.sample_rate_schedule
                    else f"sample_rate {c.head.sample_rate}"
                ),
                f"steps:   {self.total_steps} of {c.data.global_batch_size} images on "
                f"{self.world_size} rank(s), warmup {c.optim.warmup_steps}, lr {c.optim.lr}, "
                f"{c.train.precision}",
                f"output:  {c.train.output_dir} ({start}; checkpoint every "
                f"{c.train.checkpoint_every} steps)",
                f"eval:    {', '.join(c.eval.sets) or 'none'}",
                f"metrics: {f'port {c.metrics.port}' if c.metrics.port else 'no server'}"
                f"{', metrics.jsonl' if c.metrics.jsonl else ''}"
                f"{', tensorboard' if c.metrics.tensorboard_enabled() else ''}"
                f"{f', wandb {c.metrics.wandb_project}' if c.metrics.wandb_project else ''}",
            ]
        )


def run_checks(
    cfg: Config,
    world_size: int = 1,
    local_ranks: range | None = None,
    check_lock: bool = True,
) -> Preflight:
    """Every check; the problems are in the result (nothing is raised for them).

    Args:
        cfg: the validated config.
        world_size: ranks the run will have.
        local_ranks: local ranks whose metrics ports (``metrics.port + local_rank``) must be free
            on this host (default: ``range(world_size)``).
        check_lock: report a live lock on ``output_dir`` (off where the run itself may hold it).
    """
    pf = Preflight(cfg, world_size)
    _check_batching(pf)
    _check_dataset(pf)
    _check_steps(pf)
    _check_eval_sets(pf)
    _check_output_dir(pf, check_lock)
    _check_ports(pf, range(world_size) if local_ranks is None else local_ranks)
    _check_sink_packages(pf)
    _check_checkpoint(pf)
    _check_pretrained(pf)
    return pf


def check(cfg: Config, world_size: int = 1, **kwargs) -> Preflight:
    """:func:`run_checks`, raising :class:`PreflightError` when any check fails."""
    pf = run_checks(cfg, world_size, **kwargs)
    if pf.problems:
        raise PreflightError(*pf.problems)
    return pf


def _check_batching(pf: Preflight) -> None:
    c = pf.cfg
    split = pf.world_size * c.train.grad_accum
    if c.data.global_batch_size % split:
        pf.problems.append(
            f"data.global_batch_size: {c.data.global_batch_size} does not split over "
            f"{pf.world_size} rank(s) x train.grad_accum {c.train.grad_accum}; use a multiple "
            f"of {split}"
        )


def _check_dataset(pf: Preflight) -> None:
    d = pf.cfg.data
    if d.loader == "synthetic":
        pf.num_classes, pf.num_images = d.num_classes, 0
        return
    if d.loader == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            pf.problems.append(
                "data.loader: 'dali' needs NVIDIA DALI (pip install 'partialfc[dali]'), which is "
                "not installed; or use data.loader = 'torch'"
            )
    root = Path(d.root)
    if not root.exists():
        pf.problems.append(
            f"data.root: {root} does not exist (relative paths are from {Path.cwd()})"
        )
        return
    from partialfc.data.layout import FaceRecord

    try:
        record = FaceRecord(root)
    except (UserError, FileNotFoundError, ValueError) as err:
        pf.problems.append(f"data.root: {err}")
        return
    try:
        pf.num_images, pf.num_classes = len(record), record.num_classes
        pf.problems += _layout_problems(record)
    finally:
        record.close()
    if pf.num_images < d.global_batch_size:
        pf.problems.append(
            f"data.global_batch_size: {d.global_batch_size} is more than the {pf.num_images} "
            f"images in {root}"
        )
    if d.verify and not pf.problems:
        pf.problems += _verify_records(root)


def _layout_problems(record) -> list[str]:
    """``property`` against record 0, and every image key's ``.idx`` offset inside the ``.rec``."""
    problems = []
    header = record.header
    if header is not None and record.identity_keys.size:
        ids = int(record.identity_keys.size)
        if ids != record.num_classes:
            problems.append(
                f"{record.property_path}: says {record.num_classes} classes but record 0 of "
                f"{record.rec_path} lists {ids} identities"
            )
    reader = record.reader
    # A record needs at least its 8-byte frame header and the 24-byte IRHeader inside the file.
    last_start = reader.file_size - 32
    bad = [k for k in record.image_keys.tolist() if not 0 <= reader.idx.get(k, -1) <= last_start]
    if bad:
        missing = [k for k in bad if k not in reader.idx]
        outside = [k for k in bad if k in reader.idx]
        if missing:
            problems.append(
                f"{reader.idx_path}: {len(missing)} image key(s) of record 0's range are missing, "
                f"first {missing[0]}; repack the dataset (partialfc pack) or fix the index"
            )
        if outside:
            k = outside[0]
            problems.append(
                f"{reader.idx_path}: {len(outside)} offset(s) lie outside the "
                f"{reader.file_size}-byte {reader.rec_path}, first key {k} at {reader.idx[k]}; "
                "the .rec is truncated or the .idx belongs to another file"
            )
    return problems


def _verify_records(root: Path) -> list[str]:
    from partialfc.data.inspect import verify

    bad = [str(p) for p in verify(root)]
    if not bad:
        return []
    more = f" ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return [f"data.verify: {root}: {b}" for b in bad[:MAX_LISTED]] + (
        [f"data.verify: {root}: {len(bad)} bad record(s){more}"] if more else []
    )


def _check_steps(pf: Preflight) -> None:
    c = pf.cfg
    if c.train.max_steps:
        pf.total_steps = c.train.max_steps
        return  # Config already checked warmup against max_steps
    if c.data.loader == "synthetic":
        pf.total_steps = c.train.epochs * 1000  # SyntheticLoader's fixed epoch
    elif pf.num_images:
        pf.total_steps = c.train.epochs * (pf.num_images // c.data.global_batch_size)
    else:
        return  # the dataset problem is already reported
    if c.optim.warmup_steps >= pf.total_steps:
        pf.problems.append(
            f"optim.warmup_steps: {c.optim.warmup_steps} must be below the run's "
            f"{pf.total_steps} steps (train.epochs {c.train.epochs} x "
            f"{pf.total_steps // max(c.train.epochs, 1)} steps an epoch)"
        )


def _check_eval_sets(pf: Preflight) -> None:
    from partialfc.data import read_bin

    for path in pf.cfg.eval.sets:
        try:
            read_bin(path)
        except (UserError, OSError, ValueError) as err:
            text = str(err)  # the reader's messages mostly name the file already
            pf.problems.append(f"eval.sets: {text if str(path) in text else f'{path}: {text}'}")


def _check_output_dir(pf: Preflight, check_lock: bool) -> None:
    out = Path(pf.cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        pf.problems.append(f"train.output_dir: {out} exists and is not a folder")
        return
    existing = out
    while not existing.exists():  # the folder is created at the start of the run
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        pf.problems.append(
            f"train.output_dir: cannot write in {existing} ({os.strerror(err.errno or 0)}); "
            "checkpoints and metrics go there"
        )
        return
    if check_lock and lock.is_locked(out):
        pf.problems.append(
            f"train.output_dir: {out} is in use by another run ({lock.holder(out)}); give this "
            "run its own train.output_dir, or stop the other one"
        )


def _check_ports(pf: Preflight, local_ranks: range) -> None:
    m = pf.cfg.metrics
    if not m.port:
        return
    from partialfc.metrics import port_problem

    for local_rank in local_ranks:
        problem = port_problem(m.host, m.port + local_rank)
        if problem:
            pf.problems.append(
                f"metrics.port: local rank {local_rank} serves on {m.port} + {local_rank}: {problem}"
            )


def _check_sink_packages(pf: Preflight) -> None:
    """The optional packages the chosen sinks import on rank 0."""
    m = pf.cfg.metrics
    from partialfc.metrics.tensorboard import tensorboard_available
    from partialfc.metrics.weights_and_biases import missing_wandb_problem, wandb_available

    if m.tensorboard and not tensorboard_available():
        pf.problems.append(
            "metrics.tensorboard = true: the tensorboard package is not installed; "
            "pip install 'partialfc[tensorboard]' (or tensorboard), or set it to false"
        )
    if m.wandb_project and not wandb_available():
        pf.problems.append(missing_wandb_problem(m.wandb_project))


def _check_checkpoint(pf: Preflight) -> None:
    """An existing checkpoint must match the config where resuming depends on it."""
    path = checkpoint.latest_checkpoint(pf.cfg.train.output_dir)
    if path is None:
        return
    pf.resume_from = path
    pf.resume_step = int(path.name.split("-")[1])
    c = pf.cfg
    try:
        import torch.distributed.checkpoint as dcp

        meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as err:  # a damaged .metadata: DCP raises several types
        pf.problems.append(f"train.output_dir: checkpoint {path} is unreadable ({err})")
        return
    entry = meta.get(checkpoint.CENTERS_KEY)
    mismatches = []
    if entry is not None and len(entry.size) == 2:
        rows, width = (int(v) for v in entry.size)
        k = c.head.sub_centers
        if pf.num_classes and rows != pf.num_classes * k:
            what = "data.root's property" + (f" times head.sub_centers ({k})" if k > 1 else "")
            label = "class count" if k == 1 else "class-centre rows"
            mismatches.append((label, rows, pf.num_classes * k, what))
        if width != c.model.embedding_size:
            mismatches.append(
                ("embedding size", width, c.model.embedding_size, "model.embedding_size")
            )
    # The centres' optimizer state is loaded in place: its entries must be those the config's
    # optimizer creates (SparseSGD: momentum_buffer; SparseAdamW: exp_avg, exp_avg_sq, step).
    have = sorted(k.removeprefix("head.weight.") for k in meta if k.startswith("head.weight."))
    want = _centre_state_keys(c.optim)
    if have != want:
        mismatches.append(
            ("class-centre optimizer state", have, want, "optim.head_name (or optim.name)")
        )
    saved = _saved_config(path)
    for key, label in (
        ("model.backbone", "backbone"),
        ("optim.name", "backbone optimizer"),
        ("head.margin", "margin"),
        ("data.global_batch_size", "global batch size (the data order)"),
        ("train.seed", "seed (the data order)"),
    ):
        section, name = key.split(".")
        old = saved.get(section, {}).get(name)
        new = getattr(getattr(c, section), name)
        if old is not None and old != new:
            mismatches.append((label, old, new, key))
    for label, old, new, key in mismatches:
        pf.problems.append(
            f"{key}: the checkpoint {path} has {label} {old!r}, the config {new!r}; use the "
            "checkpoint's value or a new train.output_dir"
        )


def _check_pretrained(pf: Preflight) -> None:
    """The weights to fine-tune from exist (their keys are checked when the trainer loads them);
    a resumed run ignores them."""
    path = pf.cfg.model.pretrained
    if path and pf.resume_from is None and not Path(path).exists():
        pf.problems.append(f"model.pretrained: {path} does not exist")


def _centre_state_keys(o: OptimConfig) -> list[str]:
    """The per-parameter state the trainer's class-centre optimizer keeps (see train.state)."""
    name, _, _ = o.head_settings()
    if name == "adamw":
        return ["exp_avg", "exp_avg_sq", "step"]
    return ["momentum_buffer"] if o.momentum != 0 else []


def _saved_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # converted checkpoints have none: their shapes are still checked
