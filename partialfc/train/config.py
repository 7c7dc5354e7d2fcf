"""Typed training configuration: one dataclass per concern, loaded from TOML.

A run is described by a TOML file (mountable from a Kubernetes ConfigMap, diffable) with the
sections below; any field can be overridden on the command line as ``--section.key value``.
Every field is validated when the dataclass is built; errors name the field and what it accepts.
Nothing here is mutated at run time: the trainer reads a frozen :class:`Config`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import itertools
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from partialfc import backbones, margins
from partialfc.checkpoint.run import FLAT_MARGIN_KEYS, upgrade_flat_margin
from partialfc.errors import ConfigError, UserFileError
from partialfc.train.schedule import piecewise_constant

FUSED: dict[str, bool | str] = {"off": False, "on": True, "auto": "auto"}
HEAD_INITS = ("random", "class_means")
LOADERS = ("torch", "dali", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")


# While a whole config is built, failed checks are collected here instead of raised one at a time,
# so that a user sees every problem of the file and the overrides in one go.
_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "config_problems", default=None
)


def _check(ok: bool, name: str, message: str) -> None:
    if ok:
        return
    problem = f"{name}: {message}"
    collected = _PROBLEMS.get()
    if collected is None:
        raise ConfigError(problem)
    collected.append(problem)


@contextlib.contextmanager
def _collect_problems() -> Iterator[list[str]]:
    """Collect failed checks; raise one ConfigError naming all of them at the end.

    Nested uses share the outermost list (which alone raises).
    """
    outer = _PROBLEMS.get()
    if outer is not None:
        yield outer
        return
    problems: list[str] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)
    if problems:
        raise ConfigError(*dict.fromkeys(problems))  # in order, each once


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are batched."""

    root: str = ""
    """Folder with train.rec, train.idx and property (insightface layout)."""
    loader: str = "torch"
    """torch (CPU decoding in DataLoader workers), dali (GPU decoding) or synthetic (random)."""
    global_batch_size: int = 512
    """Images per optimizer step over all ranks; fixed whatever the world size."""
    workers: int = 2
    """Decoding workers (torch) or threads (DALI) per rank."""
    num_classes: int = 0
    """Classes of the synthetic loader (read from ``property`` for real data)."""
    image_size: int = 112
    """Side of the synthetic loader's square images."""
    verify: bool = False
    """Check and decode every record at preflight (``partialfc inspect --verify``) and refuse to
    start on a bad one, instead of stopping at the first batch that holds it; damage that leaves a
    JPEG well-formed is invisible to every check (see docs/data.md, "Damaged JPEGs")."""

    def __post_init__(self) -> None:
        _check(
            self.loader in LOADERS, "data.loader", f"must be one of {LOADERS}, got {self.loader!r}"
        )
        _check(
            self.global_batch_size > 0,
            "data.global_batch_size",
            f"must be > 0, got {self.global_batch_size}",
        )
        _check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")
        _check(
            self.loader == "synthetic" or bool(self.root),
            "data.root",
            "is required unless data.loader = 'synthetic'",
        )
        _check(
            self.loader != "synthetic" or self.num_classes > 0,
            "data.num_classes",
            "must be > 0 for the synthetic loader",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The backbone."""

    backbone: str = "iresnet50"
    """A name from partialfc.backbones.list_backbones()."""
    embedding_size: int = 512
    """Width D of the embedding."""
    dropout: float = 0.0
    """Dropout before the embedding layer."""
    checkpoint_activations: bool | None = None
    """Recompute activations in backward to save memory; unset: the backbone's default (on for
    vit_b, vit_l, vit_h and r2060, as in arcface_torch; off for the others)."""
    pretrained: str = ""
    """Fine-tune from these backbone weights (a state_dict file, arcface_torch's model.pt or
    backbone.pth, or a partialfc run folder), loaded strictly before the first step; ignored when
    the run resumes from its own checkpoint."""
    freeze_bn: bool = False
    """BatchNorm layers keep their running statistics and normalise with them (eval mode) while
    training; their scale and shift still train."""

    def __post_init__(self) -> None:
        known = backbones.list_backbones()
        _check(
            self.backbone in known,
            "model.backbone",
            f"unknown backbone {self.backbone!r}; known: {', '.join(known)}",
        )
        _check(
            self.embedding_size > 0,
            "model.embedding_size",
            f"must be > 0, got {self.embedding_size}",
        )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class HeadConfig:
    """The sharded margin-softmax head."""

    margin: str = "arcface"
    """A name from partialfc.MARGINS: arcface, cosface, normface, combined, sphereface, lsoftmax,
    softmax, ... (docs/margins.md)."""
    margin_args: dict[str, Any] = field(default_factory=dict)
    """That margin's constructor arguments (``[head.margin_args]``, ``--head.margin_args.m 0.35``);
    absent ones keep the class's defaults (cosface: s = 64, m = 0.4)."""
    sample_rate: float = 1.0
    """Fraction of each rank's classes scored per step (Partial FC)."""
    sample_rate_schedule: list[list[float]] = field(default_factory=list)
    """``[[step, rate], ...]``: from optimizer step ``step`` on the rate is ``rate`` (steps rising
    from 0; LVFace trains sampled, then full); replaces sample_rate, which must then stay 1.0."""
    interclass_filtering_threshold: float = 0.0
    """Zero non-target cosines above this (0 disables)."""
    fused: str = "off"
    """Triton kernels that never store the logits: on, off, or auto (on with CUDA)."""
    fused_update: bool = False
    """The fused backward applies the class-centre optimizer's update (SparseSGD or SparseAdamW,
    ``optim.head_name``) chunk by chunk as it computes dW, so no dW is stored; needs head.fused
    'on' or 'auto', train.grad_accum = 1 and no fp16 loss scaling."""
    init: str = "random"
    """Starting centres: random, or class_means (the normalised mean embedding of each class
    under the starting backbone, one pass over the data); not on resume."""
    sub_centers: int = 1
    """Sub-centres per class (Sub-center ArcFace, K = 3 in the paper): a class's cosine is the
    maximum over its K centres; angular margins only; clean with ``partialfc subcenter-clean``."""

    def __post_init__(self) -> None:
        _check(
            self.margin in margins.MARGINS,
            "head.margin",
            f"must be one of {tuple(margins.MARGINS)}, got {self.margin!r}",
        )
        _check(
            0.0 < self.sample_rate <= 1.0,
            "head.sample_rate",
            f"must be in (0, 1], got {self.sample_rate}",
        )
        if self.sample_rate_schedule:
            self._check_sample_rate_schedule()
        _check(
            self.interclass_filtering_threshold >= 0,
            "head.interclass_filtering_threshold",
            "must be >= 0",
        )
        _check(
            self.fused in FUSED,
            "head.fused",
            f"must be one of {tuple(FUSED)}, got {self.fused!r}",
        )
        _check(
            not self.fused_update or self.fused != "off",
            "head.fused_update",
            "needs head.fused = 'on' or 'auto' (the reference path stores dW)",
        )
        _check(
            self.init in HEAD_INITS,
            "head.init",
            f"must be one of {HEAD_INITS}, got {self.init!r}",
        )
        if self.margin in margins.MARGINS:
            try:
                margin = self.build_margin()
            except ValueError as err:
                _check(False, "head.margin_args", str(err))
            else:
                self._check_sub_centers(margin)

    def _check_sub_centers(self, margin: margins.Margin) -> None:
        k, name = self.sub_centers, "head.sub_centers"
        ok = isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 255
        _check(ok, name, f"must be an integer from 1 to 255, got {k!r}")
        if not ok or k == 1:
            return
        _check(
            margin.normalize_weight and not margin.has_bias,
            name,
            f"needs an angular margin (normalised centres); {self.margin!r} scores raw dot "
            "products",
        )
        _check(
            self.fused != "on",
            name,
            "has no fused kernel: set head.fused = 'auto' (falls back) or 'off'",
        )
        _check(
            self.init != "class_means",
            name,
            "head.init = 'class_means' would start all K centres of a class equal (one would win "
            "every sample): use init = 'random'",
        )

    def _check_sample_rate_schedule(self) -> None:
        name, schedule = "head.sample_rate_schedule", self.sample_rate_schedule
        pairs = all(isinstance(p, list) and len(p) == 2 for p in schedule)
        _check(pairs, name, f"must be a list of [step, rate] pairs, got {schedule!r}")
        if not pairs:
            return
        steps, rates = [p[0] for p in schedule], [p[1] for p in schedule]
        _check(
            all(isinstance(s, int) for s in steps) and steps[0] == 0,
            name,
            f"steps must be integers starting at 0, got {steps}",
        )
        _check(
            all(a < b for a, b in itertools.pairwise(steps)),
            name,
            f"steps must be strictly increasing, got {steps}",
        )
        _check(all(0.0 < r <= 1.0 for r in rates), name, f"rates must be in (0, 1], got {rates}")
        _check(
            self.sample_rate == 1.0,
            name,
            f"replaces head.sample_rate ({self.sample_rate}): set one of them (the schedule's "
            "first pair is the starting rate)",
        )

    def sample_rate_at(self, step: int) -> float:
        """The head's sample rate for optimizer step ``step`` (0-based): the schedule's value
        there, or ``sample_rate`` without a schedule."""
        if not self.sample_rate_schedule:
            return self.sample_rate
        return piecewise_constant(self.sample_rate_schedule, step)

    def fused_option(self) -> bool | str:
        """``PartialFC(fused=...)`` for this section."""
        return FUSED[self.fused]

    def build_margin(self) -> margins.Margin:
        """The margin object this section describes: ``MARGINS[margin](**margin_args)``."""
        return margins.build_margin(self.margin, self.margin_args)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizers and the learning-rate schedule (warmup, then polynomial decay to 0)."""

    name: str = "sgd"
    """Backbone optimizer: sgd or adamw; the class centres follow it (SparseSGD, SparseAdamW)
    unless head_name is set."""
    lr: float = 0.1
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum (backbone and centres, where they use sgd)."""
    weight_decay: float = 5e-4
    """L2 penalty (decoupled for adamw)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr."""
    decay_power: float = 2.0
    """Polynomial decay exponent after warmup (insightface uses 2)."""
    head_name: str | None = None
    """Class-centre optimizer: sgd (SparseSGD) or adamw (SparseAdamW); unset: name."""
    head_lr: float | None = None
    """Peak learning rate of the class centres (same schedule); unset: lr."""
    head_weight_decay: float | None = None
    """Weight decay of the class centres; unset: weight_decay."""

    def __post_init__(self) -> None:
        _check(
            self.name in OPTIMIZERS, "optim.name", f"must be one of {OPTIMIZERS}, got {self.name!r}"
        )
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        _check(
            self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}"
        )
        _check(self.decay_power >= 0, "optim.decay_power", f"must be >= 0, got {self.decay_power}")
        _check(
            self.head_name is None or self.head_name in OPTIMIZERS,
            "optim.head_name",
            f"must be one of {OPTIMIZERS}, got {self.head_name!r}",
        )
        _check(
            self.head_lr is None or self.head_lr > 0,
            "optim.head_lr",
            f"must be > 0, got {self.head_lr}",
        )
        _check(
            self.head_weight_decay is None or self.head_weight_decay >= 0,
            "optim.head_weight_decay",
            f"must be >= 0, got {self.head_weight_decay}",
        )

    def head_settings(self) -> tuple[str, float, float]:
        """The class centres' (optimizer name, peak lr, weight decay): the head_* fields where set,
        else the backbone's."""
        return (
            self.head_name if self.head_name is not None else self.name,
            self.head_lr if self.head_lr is not None else self.lr,
            self.head_weight_decay if self.head_weight_decay is not None else self.weight_decay,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Length, precision, checkpoints."""

    max_steps: int = 0
    """Optimizer steps to run; 0: use epochs."""
    epochs: int = 20
    """Passes over the data when max_steps is 0."""
    output_dir: str = "runs/default"
    """Checkpoints, metrics.jsonl and the exported model go here."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (also written on SIGTERM/SIGINT and at the end)."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept in output_dir."""
    seed: int = 0
    """Seeds initialisation, sampling, data order and augmentation."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast + one GradScaler for both optimizers)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the global batch is split into this many."""
    clip_grad_norm: float = 0.0
    """Clip the backbone's gradient norm to this (0 disables)."""
    max_nonfinite_steps: int = 10
    """Stop after this many consecutive steps with a non-finite loss (each is skipped)."""
    log_every: int = 10
    """Steps between console lines."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 0 and self.epochs >= 0, "train.max_steps/epochs", "must be >= 0")
        _check(
            self.max_steps > 0 or self.epochs > 0,
            "train.max_steps",
            "set train.max_steps or train.epochs",
        )
        _check(
            self.precision in PRECISIONS,
            "train.precision",
            f"must be one of {PRECISIONS}, got {self.precision!r}",
        )
        _check(
            self.checkpoint_every > 0,
            "train.checkpoint_every",
            f"must be > 0, got {self.checkpoint_every}",
        )
        _check(
            self.keep_checkpoints > 0,
            "train.keep_checkpoints",
            f"must be > 0, got {self.keep_checkpoints}",
        )
        _check(self.grad_accum > 0, "train.grad_accum", f"must be > 0, got {self.grad_accum}")
        _check(
            self.clip_grad_norm >= 0,
            "train.clip_grad_norm",
            f"must be >= 0, got {self.clip_grad_norm}",
        )
        _check(self.max_nonfinite_steps > 0, "train.max_nonfinite_steps", "must be > 0")
        _check(self.log_every > 0, "train.log_every", f"must be > 0, got {self.log_every}")


@dataclass(frozen=True)
class EvalConfig:
    """Verification on insightface .bin pair sets."""

    sets: list[str] = field(default_factory=list)
    """Paths of .bin files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...)."""
    every: int = 0
    """Steps between evaluations during training (0: only at the end, if sets are given)."""
    batch_size: int = 256
    """Images per forward pass of the backbone."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", f"must be >= 0, got {self.every}")
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class MetricsConfig:
    """Observability."""

    port: int = 0
    """Prometheus endpoint on port + local_rank; 0 disables."""
    host: str = "0.0.0.0"
    """Address the metrics and /healthz server binds (127.0.0.1: this machine only; :: IPv6)."""
    stall_seconds: float = 1800.0
    """/healthz answers 503 once no step has completed for this long (counted from the start)."""
    jsonl: bool = True
    """Write output_dir/metrics.jsonl, one JSON object per step."""
    tensorboard: bool | None = None
    """Write output_dir/tensorboard/ event files (rank 0); unset: on when tensorboard is installed."""
    wandb_project: str = ""
    """Also log to this Weights & Biases project (rank 0; needs wandb; WANDB_MODE=offline works)."""
    log_all_ranks: bool = False
    """Every rank logs its INFO lines (default: rank 0 only; others log warnings and errors)."""

    # host: 0.0.0.0 by default because Prometheus and the Kubernetes probes reach the pod at its
    # own address; 127.0.0.1 suits a shared workstation (and still answers the Docker healthcheck).
    # stall_seconds: the longest legitimate gap between two completed steps is the first one
    # (startup, including a resume that reads a checkpoint of the whole head) or a step followed
    # by an evaluation of the .bin sets and a checkpoint write (about 4 GB per million identities
    # with momentum, minutes on a slow shared file system): 1800 s leaves a wide margin. Hung
    # collectives also end after 30 minutes (the process group's timeout), but a hang outside one
    # (a data loader on a dead mount, a deadlock) never does: only /healthz reports it.

    def __post_init__(self) -> None:
        _check(0 <= self.port < 65536, "metrics.port", f"must be in [0, 65535], got {self.port}")
        _check(
            bool(self.host) and not any(c.isspace() for c in self.host),
            "metrics.host",
            f"must be an address such as 0.0.0.0, 127.0.0.1 or ::, got {self.host!r}",
        )
        _check(
            0 < self.stall_seconds < float("inf"),
            "metrics.stall_seconds",
            f"must be a number of seconds > 0, got {self.stall_seconds}",
        )
        _check(
            not any(c.isspace() for c in self.wandb_project),
            "metrics.wandb_project",
            f"must be a W&B project name without spaces, got {self.wandb_project!r}",
        )

    def tensorboard_enabled(self) -> bool:
        """``tensorboard`` as set, or (unset) whether the tensorboard package is installed."""
        if self.tensorboard is not None:
            return self.tensorboard
        from partialfc.metrics.tensorboard import tensorboard_available

        return tensorboard_available()


@dataclass(frozen=True)
class Config:
    """A whole run."""

    data: DataConfig
    model: ModelConfig
    head: HeadConfig
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig
    metrics: MetricsConfig

    def __post_init__(self) -> None:
        # With train.epochs the step count needs the dataset's size: preflight checks that case.
        _check(
            self.train.max_steps == 0 or self.optim.warmup_steps < self.train.max_steps,
            "optim.warmup_steps",
            f"must be below the run's {self.train.max_steps} steps (train.max_steps), got "
            f"{self.optim.warmup_steps}",
        )
        if self.head.fused_update:  # the centres are updated inside backward
            _check(
                self.train.precision != "fp16",
                "head.fused_update",
                "would update the centres with the fp16 loss scale still in the gradient: use "
                "train.precision = 'bf16' or 'fp32'",
            )
            _check(
                self.train.grad_accum == 1,
                "head.fused_update",
                f"needs train.grad_accum = 1 (each backward updates the centres), got "
                f"{self.train.grad_accum}",
            )

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
        """Read a TOML file (or start from defaults) and apply ``--section.key value`` overrides.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: unknown section or key, a value of the wrong type, or a failed check;
                the message names the field.
        """
        raw: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise UserFileError(f"config file {path} does not exist")
            try:
                raw = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: invalid TOML: {err}") from None
        with _collect_problems():
            for dotted, text in _pairs(overrides):
                section, _, key = dotted.partition(".")
                if section not in SECTIONS:
                    hint = _did_you_mean(dotted) or f"known: {SECTIONS}"
                    _check(False, f"--{dotted}", f"unknown section {section!r}; {hint}")
                    continue
                hints = _field_types(_section_type(section))
                key, _, entry = key.partition(".")
                if key not in hints:
                    _check(False, f"--{dotted}", _unknown_key(section, key, hints, dotted))
                    continue
                if _is_table(hints[key]) != bool(entry):
                    table = f"give one entry at a time: --{section}.{key}.NAME VALUE"
                    _check(False, f"--{dotted}", table if not entry else "is not a table")
                    continue
                values = raw.setdefault(section, {})
                if entry:  # --head.margin_args.m 0.35: one entry of a table, typed as TOML types it
                    values.setdefault(key, {})[entry] = _parse_literal(text)
                    continue
                try:
                    values[key] = _parse(text, hints[key], dotted)
                except ConfigError as err:
                    _check(False, f"--{dotted}", str(err).partition(": ")[2])
            return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build and validate from nested dicts (a parsed TOML file); absent sections use defaults."""
        with _collect_problems():
            _check(
                not set(raw) - set(SECTIONS),
                "config",
                f"unknown section(s) {sorted(set(raw) - set(SECTIONS))}; known: {SECTIONS}",
            )
            sections = {}
            for name in SECTIONS:
                values = raw.get(name, {})
                if isinstance(values, dict):
                    sections[name] = _build(_section_type(name), values, name)
                else:
                    _check(False, f"[{name}]", f"must be a table, got {values!r}")
            cfg = cls(**sections) if len(sections) == len(SECTIONS) else None
        return cfg

    @classmethod
    def from_saved(cls, raw: dict[str, Any]) -> Config:
        """Build from a run's ``config.json``. One written before ``[head.margin_args]`` (flat
        ``s, m1, m2, m3`` keys) is read as the margin that run trained, traps included."""
        return cls.from_dict(upgrade_flat_margin(raw))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ["data", "model", "head", "optim", "train", "eval", "metrics"]


def _section_type(name: str) -> type:
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section {name!r}; known: {SECTIONS}")
    return typing.get_type_hints(Config)[name]


def _field_types(section_type: type) -> dict[str, Any]:
    return typing.get_type_hints(section_type)


def _build(section_type: type, values: dict[str, Any], section: str) -> Any:
    """The section from ``values``; unknown or mistyped keys are reported and left at their
    defaults, so that the other fields are still checked."""
    hints = _field_types(section_type)
    good = {}
    for key, value in values.items():
        if key not in hints:
            _check(False, f"{section}.{key}", _unknown_key(section, key, hints))
        elif not _matches(value, hints[key]):
            _check(False, f"{section}.{key}", f"expected {_describe(hints[key])}, got {value!r}")
        else:
            good[key] = value
    return section_type(**good)


def _unknown_key(section: str, key: str, hints: dict[str, Any], flag: str | None = None) -> str:
    """Why ``section.key`` is refused; ``flag``: the command line's ``section.key[.entry]``."""
    if section == "head" and key in FLAT_MARGIN_KEYS:
        return (
            "unknown option: the margin's arguments go in [head.margin_args] by the margin's own "
            "names (arcface: s, m; cosface: s, m; combined: s, m1, m2, m3; docs/margins.md)"
        )
    hint = _did_you_mean(flag or f"{section}.{key}", dashes="--" if flag else "")
    return f"unknown option; {hint or f'{section} has {sorted(hints)}'}"


def _did_you_mean(dotted: str, dashes: str = "--") -> str:
    """``"did you mean --optim.lr?"`` for ``optim.lrr`` or ``optm.lr``; empty when nothing is close."""
    known = [f"{s}.{k}" for s in SECTIONS for k in _field_types(_section_type(s))]
    # A table's entries are free (--head.margin_args.m): compare section.key only.
    close = difflib.get_close_matches(".".join(dotted.split(".")[:2]), known, n=1, cutoff=0.7)
    return f"did you mean {dashes}{close[0]}?" if close else ""


def _is_table(hint: Any) -> bool:
    return typing.get_origin(hint) is dict


def _parse_literal(text: str) -> Any:
    """A command-line value as TOML would type it (4 -> int, 0.35 -> float, true -> bool); any
    other text is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _matches(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    return hint is type(None) and value is None


def _describe(hint: Any) -> str:
    if _is_table(hint):
        return "a table"
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if typing.get_origin(item) is list:
            return f"a list of lists of {_describe(typing.get_args(item)[0])}"
        return f"a list of {_describe(item)}"
    return getattr(hint, "__name__", str(hint))


def _parse(text: str, hint: Any, name: str) -> Any:
    """A command-line string as the field's type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        # An optional field (``bool | None``): a value given on the command line is its type.
        (hint,) = (h for h in typing.get_args(hint) if h is not type(None))
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ConfigError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if typing.get_origin(hint) is list:  # _pairs joins the values of --eval.sets a b with ","
            if typing.get_origin(typing.get_args(hint)[0]) is list:
                # A list of lists (head.sample_rate_schedule): TOML's own notation, "[[0, 0.1]]".
                value = _parse_literal(text)
                if not isinstance(value, list):
                    raise ValueError(text)
                return value
            return [v for v in text.split(",") if v]
        return text
    except ValueError:
        raise ConfigError(f"--{name}: expected {_describe(hint)}, got {text!r}") from None


def _pairs(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``["--a.b", "1", "--c.d=2"]`` -> ``[("a.b", "1"), ("c.d", "2")]``.

    A list field takes every value up to the next ``--option`` (joined with commas, which also
    separate); ``--eval.sets=`` is the empty list.
    """
    pairs, items = [], list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or "." not in flag:
            raise ConfigError(f"overrides look like --section.key value, got {flag!r}")
        name = flag[2:]
        if "=" in name:
            name, value = name.split("=", 1)
        elif _is_list(name):
            values = []
            while items and not items[0].startswith("--"):
                values.append(items.pop(0))
            if not values:
                raise ConfigError(f"--{name} needs one or more values (--{name}= clears the list)")
            value = ",".join(values)
        elif items:
            value = items.pop(0)
        else:
            raise ConfigError(f"--{name} needs a value")
        pairs.append((name, value))
    return pairs


def _is_list(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        return False
    return typing.get_origin(_field_types(_section_type(section)).get(key)) is list
