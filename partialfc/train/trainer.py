"""The training loop: DDP backbone, PartialFC head, checkpoints, metrics, evaluation.

One optimizer step consumes one global batch (``data.global_batch_size`` images over all ranks),
split into ``train.grad_accum`` micro-batches. The head's loss is the mean over the global
(micro-)batch and identical on every rank; the backbone's DDP all-reduce *sums* its gradients
(see :func:`partialfc.distributed.use_global_loss_gradients`), and each micro-batch's loss is
divided by ``grad_accum``, so every step applies the exact gradient of the global batch's mean loss.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from partialfc import backbones, checkpoint
from partialfc.distributed import (
    all_gather_no_grad,
    all_reduce_max,
    broadcast_buffers,
    use_global_loss_gradients,
)
from partialfc.errors import UserError
from partialfc.heads import PartialFC
from partialfc.metrics import StallWatch
from partialfc.optim import RowSparseOptimizer, SparseAdamW, SparseSGD
from partialfc.seeding import mix_seed
from partialfc.train import finetune
from partialfc.train.config import Config
from partialfc.train.data import build_loader, load_loader_state, loader_files
from partialfc.train.evaluation import EvalMetrics, evaluate_sets
from partialfc.train.runtime import Runtime
from partialfc.train.schedule import learning_rate
from partialfc.train.sinks import build_sinks
from partialfc.train.state import head_state, restore_head_state

log = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive steps had a non-finite loss (the ranks agree on every step's)."""

    same_on_every_rank = True


class Trainer:
    """Builds everything a run needs from a :class:`Config` and runs it; resumable at any step."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.output_dir = Path(cfg.train.output_dir)
        # First: /healthz's stall clock starts with the trainer (startup and resume included),
        # and a busy metrics port is reported before the dataset and the model are built.
        self.health = StallWatch(cfg.metrics.stall_seconds)  # healthy while steps complete
        self.sink = build_sinks(cfg, rt, self.health)
        self._eval_metrics = EvalMetrics()  # the sinks' eval keys, with each set's best so far
        if cfg.data.global_batch_size % (rt.world_size * cfg.train.grad_accum):
            raise ValueError(
                f"data.global_batch_size ({cfg.data.global_batch_size}) must be divisible by the world "
                f"size ({rt.world_size}) times train.grad_accum ({cfg.train.grad_accum})"
            )
        torch.manual_seed(cfg.train.seed)  # the same backbone initialisation on every rank
        self.loader = build_loader(cfg, rt)
        self.num_classes = self.loader.num_classes
        model = backbones.create(
            cfg.model.backbone,
            embedding_size=cfg.model.embedding_size,
            dropout=cfg.model.dropout,
            checkpoint_activations=cfg.model.checkpoint_activations,
        ).to(rt.device)
        self.backbone = model
        if cfg.model.freeze_bn and not finetune.freeze_batchnorm(model):
            log.warning("model.freeze_bn: %s has no BatchNorm", cfg.model.backbone)
        # A skipped (non-finite) step must leave no trace, but its forward already moved the
        # BatchNorm running statistics: they are copied before each step and put back.
        self._buffers = [b for b in model.buffers()]
        self._buffers_before = [b.detach().clone() for b in self._buffers]
        if rt.distributed:
            self.model: torch.nn.Module = DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
            )
            use_global_loss_gradients(self.model)
        else:
            self.model = model
        self.head = PartialFC(
            cfg.head.build_margin(),
            cfg.model.embedding_size,
            self.num_classes,
            sample_rate=cfg.head.sample_rate_at(0),  # train_step sets each step's (a schedule)
            seed=cfg.train.seed,
            interclass_filtering_threshold=cfg.head.interclass_filtering_threshold,
            device=rt.device,
            fused=cfg.head.fused_option(),
            sub_centers=cfg.head.sub_centers,
            # The loaders check labels against the dataset's classes; a non-finite embedding (an
            # fp16 overflow) must become a skipped step below, not an exception, and the check
            # would cost a host synchronisation per step.
            validate=False,
        )
        o = cfg.optim
        if o.name == "sgd":
            self.opt_backbone: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            self.opt_backbone = torch.optim.AdamW(
                model.parameters(), lr=o.lr, weight_decay=o.weight_decay
            )
        head_params = [p for p in (self.head.weight, self.head.bias) if p is not None]
        head_name, head_lr, head_wd = o.head_settings()
        if head_name == "sgd":
            self.opt_head: RowSparseOptimizer = SparseSGD(
                head_params, lr=head_lr, momentum=o.momentum, weight_decay=head_wd
            )
        else:
            self.opt_head = SparseAdamW(head_params, lr=head_lr, weight_decay=head_wd)
        # The settings in effect, defaults included (the schedule scales lr).
        log.info(
            "optimizers: backbone %s; class centres %s",
            _describe(self.opt_backbone),
            _describe(self.opt_head),
        )
        if cfg.head.fused_update:  # the fused backward updates the centres: no dW is stored
            self.head.fuse_update(self.opt_head)
        # One scaler for both optimizers: one loss scale, each optimizer skips on its own infs.
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.train.precision == "fp16")
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * len(self.loader)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.last_checkpoint_time = time.time()
        self._signalled = False  # SIGTERM or SIGINT reached this rank
        self._last_eval: dict[str, float] = {}
        self._last_eval_step = -1
        self._stop_requested = False  # some rank was signalled: every rank stops (agreed)

    # ------------------------------------------------------------------ setup helpers

    def _install_signal_handlers(self) -> None:
        # The handler only records the signal; the ranks agree on stopping in the next step's
        # collective (train_step), and the vote never clears a signal that arrives meanwhile.
        def request_stop(signum: int, _frame: Any) -> None:
            self._signalled = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": get_model_state_dict(self.backbone),
            "optim.backbone": get_optimizer_state_dict(self.backbone, self.opt_backbone),
            **head_state(self.head, self.opt_head),
            "scaler": self.scaler.state_dict(),
            "trainer": {"step": self.step, "nonfinite_total": self.nonfinite_total},
            "data": self.loader.state_dict(),
        }

    def _nonfinite_state(self) -> list[str]:
        """Names of the tensors to be saved that hold a NaN or an inf, on any rank (agreed)."""
        named = [
            *((f"model.{n}", t) for n, t in self.backbone.state_dict().items()),
            *((f"optim.backbone.{i}", t) for i, t in enumerate(_state_tensors(self.opt_backbone))),
            ("head.weight", self.head.weight),
            *((("head.bias", self.head.bias),) if self.head.bias is not None else ()),
            *((f"optim.head.{i}", t) for i, t in enumerate(_state_tensors(self.opt_head))),
        ]
        named = [(n, t) for n, t in named if t.is_floating_point()]
        # .to: the AdamW step counts are CPU scalars (torch's and SparseAdamW's) beside CUDA state
        flags = torch.stack([_has_nonfinite(t.detach()).to(self.rt.device) for _, t in named])
        flags = flags.float()
        flags = all_reduce_max(flags).tolist()  # the centres differ per rank: one verdict
        return [n for (n, _), bad in zip(named, flags, strict=True) if bad]

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of ``self.step``; skipped (None) when any state is not finite,
        so the checkpoints already written, the last finite state, are kept as they are."""
        bad = ["the last loss"] if self.nonfinite_in_a_row else self._nonfinite_state()
        if bad:
            names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            log.warning(
                "step %d: no checkpoint written: %s not finite; %s is kept as it is",
                self.step,
                names,
                _newest(self.output_dir),
            )
            return None
        # Per-rank RNG streams (dropout) go beside the DCP files; a run resumed on another world
        # size reseeds from (seed, step, rank) instead. config.json tells `export` the backbone.
        if self.rt.distributed:
            broadcast_buffers(self.backbone)  # the running statistics the next forward would use
        rng = io.BytesIO()
        torch.save(_rng_state(), rng)
        files = {f"rng-rank{self.rt.rank}-of{self.rt.world_size}.pt": rng.getvalue()}
        files |= loader_files(self.loader)  # DALI's per-rank reader state
        if self.rt.is_main:
            files["config.json"] = json.dumps(self.cfg.to_dict(), indent=2).encode()
            files[EvalMetrics.FILE] = self._eval_metrics.to_bytes()
        path = checkpoint.save(
            self._state(),
            self.output_dir,
            self.step,
            keep=self.cfg.train.keep_checkpoints,
            files=files,
        )
        self.last_checkpoint_time = time.time()
        self.sink.log_dict({"checkpoint_time": self.last_checkpoint_time}, self.step)
        return path

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in ``output_dir``, if any.

        Entries the checkpoint lacks start fresh (a checkpoint converted from MXNet holds the
        class centres and the backbone only: training then starts at step 0 from those weights).
        """
        path = checkpoint.latest_checkpoint(self.output_dir)
        if path is None:
            return False
        full = self._state()
        # DCP stores nothing for an empty entry (a margin without annealing state, a disabled
        # scaler): such an entry is present trivially.
        present = checkpoint.stored_entries(path, list(full)) | {
            k for k, v in full.items() if isinstance(v, dict) and not v
        }
        state = {k: v for k, v in full.items() if k in present}
        checkpoint.load(state, path)
        if "model" in state:
            set_model_state_dict(self.backbone, state["model"])
        if "optim.backbone" in state:
            set_optimizer_state_dict(self.backbone, self.opt_backbone, state["optim.backbone"])
        if {"head.step", "head.margin"} <= present:
            restore_head_state(self.head, state)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "trainer" in state:
            self.step = int(state["trainer"]["step"])
            self.nonfinite_total = int(state["trainer"]["nonfinite_total"])
        if "data" in state:
            load_loader_state(self.loader, state["data"], path)
        self._eval_metrics.load(path)
        # The last checkpoint is the one resumed from: its time, not this process's start.
        self.last_checkpoint_time = path.stat().st_mtime
        self.sink.log_dict({"checkpoint_time": self.last_checkpoint_time}, self.step)
        rng = path / f"rng-rank{self.rt.rank}-of{self.rt.world_size}.pt"
        if rng.exists():
            _set_rng_state(_load_rng_state(rng))
        else:
            torch.manual_seed(mix_seed("resume", self.cfg.train.seed, self.step, self.rt.rank))
        missing = sorted(set(full) - present)
        note = f" (not in it, started fresh: {', '.join(missing)})" if missing else ""
        log.info("resumed from %s at step %d%s", path, self.step, note)
        return True

    def start_fresh(self) -> None:
        """Before the first step of a new run (never on resume): the pretrained backbone, then
        the centres' initialisation (``head.init``) under it."""
        cfg, rt = self.cfg, self.rt
        if cfg.model.pretrained:
            finetune.load_pretrained(self.backbone, cfg.model.pretrained)  # every rank: the same
            log.info("backbone weights from %s", cfg.model.pretrained)
        if cfg.head.init == "class_means":
            loader = build_loader(cfg, rt)  # its own pass: the training order stays as it was
            try:
                count = finetune.init_class_means(self.backbone, loader, self.head, rt.device)
            finally:
                loader.close()
            total = int(all_gather_no_grad(torch.tensor([count], device=rt.device)).sum())
            log.info("class centres: %d of %d set to class means", total, self.num_classes)

    # ------------------------------------------------------------------ the loop

    def _batches(self):
        while True:
            yield from self.loader

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimizer step on this rank's part of the global batch; returns the loss (tensor)."""
        cfg, rt = self.cfg, self.rt
        _, head_lr, _ = cfg.optim.head_settings()
        for opt, peak in ((self.opt_backbone, cfg.optim.lr), (self.opt_head, head_lr)):
            opt_lr = learning_rate(
                self.step, peak, self.total_steps, cfg.optim.warmup_steps, cfg.optim.decay_power
            )
            for group in opt.param_groups:
                group["lr"] = opt_lr
        lr, head_lr = (opt.param_groups[0]["lr"] for opt in (self.opt_backbone, self.opt_head))
        # A pure function of the step: a resumed run continues the schedule with nothing stored,
        # and the negatives stay those of (seed, head.step, rank), drawn at this step's rate.
        self.head.sample_rate = cfg.head.sample_rate_at(self.step)
        amp = AMP_DTYPES.get(cfg.train.precision)
        k = cfg.train.grad_accum
        micro = images.shape[0] // k
        times = {"forward": 0.0, "backward": 0.0}
        total = torch.zeros((), device=rt.device)
        for saved, live in zip(self._buffers_before, self._buffers, strict=True):
            saved.copy_(live)
        self.opt_backbone.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        for i in range(k):
            sl = slice(i * micro, (i + 1) * micro)
            # DDP all-reduces only after the last micro-batch: the sum of all of them.
            sync = i == k - 1 or not isinstance(self.model, DistributedDataParallel)
            no_sync = contextlib.nullcontext() if sync else self.model.no_sync()
            t0 = time.perf_counter()
            with no_sync:
                with torch.autocast(rt.device.type, dtype=amp, enabled=amp is not None):
                    loss = self.head(self.model(images[sl]), labels[sl]) / k
                t1 = time.perf_counter()
                self.scaler.scale(loss).backward()
            times["forward"] += t1 - t0
            times["backward"] += time.perf_counter() - t1
            total += loss.detach()

        t0 = time.perf_counter()
        # The loss is the same on every rank; the stop flag must be agreed on: one small collective.
        flags = all_reduce_max(
            torch.stack(
                [
                    (~torch.isfinite(total)).float(),
                    torch.tensor(float(self._signalled), device=rt.device),
                ]
            )
        ).tolist()
        finite, self._stop_requested = flags[0] == 0.0, flags[1] > 0.0
        grad_norm = math.nan
        if finite:
            self.scaler.unscale_(self.opt_backbone)
            # Measured every step (a metric); an infinite bound leaves the gradients as they are.
            clip = cfg.train.clip_grad_norm if cfg.train.clip_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), clip))
            self.scaler.step(self.opt_backbone)
            self.scaler.step(self.opt_head)
            self.scaler.update()
            self.nonfinite_in_a_row = 0
        else:
            with torch.no_grad():
                for saved, live in zip(self._buffers_before, self._buffers, strict=True):
                    live.copy_(saved)
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"train.max_nonfinite_steps: {self.nonfinite_in_a_row} consecutive steps had a "
                    f"non-finite loss (the last was step {self.step + 1}); lower optim.lr, use "
                    f"train.precision = 'bf16' or check the data; {_newest(self.output_dir)} "
                    "holds only finite values and a rerun resumes from it"
                )
        times["optimizer"] = time.perf_counter() - t0
        self.step += 1
        info = {
            "lr": lr,
            "head_lr": head_lr,
            "sample_rate": self.head.sample_rate,
            "grad_norm": grad_norm,
            **{f"time/{k_}": v for k_, v in times.items()},
            **_margin_state(self.head.margin),
        }
        if self.scaler.is_enabled():  # fp16: the scale the next step starts from
            info["loss_scale"] = float(self.scaler.get_scale())
        return total, info

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or until SIGTERM/SIGINT), checkpointing on the way.

        Returns the step reached, whether a signal stopped the run, the last step's loss and the
        final evaluation; per-step values go to the sinks (``metrics.jsonl``), not to memory.
        """
        cfg, rt = self.cfg, self.rt
        self._install_signal_handlers()
        if not self.resume():
            self.start_fresh()
        progress = _Progress(self.total_steps, self.step, bar=rt.is_main, every=cfg.train.log_every)
        batches = self._batches()
        try:
            loss = self._steps(batches, progress)
        finally:
            # The loader's workers end before the last checkpoint, on the trainer's terms: after
            # a SIGTERM they are still alive (they ignore it) and nothing fails inside the write;
            # after an error they end here, not at exit.
            batches.close()
            self.loader.close()
        self.save_checkpoint()
        progress.close()
        stopped = self._stop_requested
        results = {}
        if not stopped and cfg.eval.sets:  # once per step: the last step may have evaluated
            results = self._last_eval if self._last_eval_step == self.step else self._evaluate()
        self.sink.close()
        return {"step": self.step, "stopped": stopped, "loss": loss, "eval": results}

    def _steps(
        self, batches: Generator[tuple[torch.Tensor, torch.Tensor]], progress: _Progress
    ) -> float:
        """Steps until ``total_steps`` or an agreed stop, with their checkpoints and evaluations;
        returns the last step's loss (NaN when no step ran)."""
        cfg, rt = self.cfg, self.rt
        global_batch = cfg.data.global_batch_size
        loss_value = math.nan
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            images, labels = next(batches)
            images, labels = (
                images.to(rt.device, non_blocking=True),
                labels.to(rt.device, non_blocking=True),
            )
            t_data = time.perf_counter() - t0
            loss, info = self.train_step(images, labels)
            step_time = time.perf_counter() - t0
            loss_value = float(loss)  # waits for the step's kernels (and collectives) to finish
            self.health.step_completed()
            values = {
                "loss": loss_value,
                "rank_samples": float(global_batch // rt.world_size),  # this rank's share
                "samples_per_second": global_batch / step_time,
                "time/data": t_data,
                "time/total": step_time,
                "nonfinite_steps": float(self.nonfinite_total),
                "memory_bytes": float(_peak_memory(rt.device)),
                **info,
            }
            self.sink.log_dict(
                {k: v for k, v in values.items() if not (k == "grad_norm" and math.isnan(v))},
                self.step,
            )
            progress.update(self.step, loss_value, values["samples_per_second"])
            if self._stop_requested:
                break
            if self.step % cfg.train.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
            # After the checkpoint: an evaluation that fails loses no training.
            if cfg.eval.sets and cfg.eval.every and self.step % cfg.eval.every == 0:
                self._evaluate()
        return loss_value

    def _evaluate(self) -> dict[str, float]:
        found = evaluate_sets(self.backbone, self.cfg.eval.sets, self.cfg.eval.batch_size, self.rt)
        self.sink.log_dict(self._eval_metrics(found), self.step)
        results = {name: r.accuracy for name, r in found.items()}
        self._last_eval, self._last_eval_step = results, self.step
        log.info("step %d: %s", self.step, "  ".join(f"{n} {a:.4f}" for n, a in results.items()))
        return results


class _Progress:
    """Progress with ETA and samples/s: a tqdm bar on rank 0's terminal, log lines every
    ``every`` steps otherwise (Kubernetes logs, CI), where a redrawn bar would be noise; the
    logging filter decides which ranks' lines show."""

    def __init__(self, total: int, start: int, bar: bool, every: int) -> None:
        self.total, self.last, self.every = total, start, every
        self.bar = None
        self.started, self.start_step = time.perf_counter(), start
        if bar and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0
                )
            except ImportError:
                self.bar = None

    def update(self, step: int, loss: float, samples_per_second: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(
                loss=f"{loss:.4f}", samples_s=f"{samples_per_second:.0f}", refresh=False
            )
        elif step % self.every == 0 or step == self.total:
            rate = (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
            log.info(
                "step %d/%d  loss %.4f  %.0f samples/s  eta %d:%02d:%02d",
                step,
                self.total,
                loss,
                samples_per_second,
                eta // 3600,
                eta % 3600 // 60,
                eta % 60,
            )
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _margin_state(margin: torch.nn.Module) -> dict[str, float]:
    """The margin's scalar buffers (CurricularFace's ``t``, AdaFace's EMAs) as ``margin/<name>``;
    the same on every rank (see DESIGN: stateful margins)."""
    return {f"margin/{n}": float(b) for n, b in margin.named_buffers() if b.numel() == 1}


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _newest(output_dir: Path) -> str:
    newest = checkpoint.latest_checkpoint(output_dir)
    return f"the newest checkpoint {newest}" if newest else "no checkpoint (none was written yet)"


def _has_nonfinite(t: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """Whether ``t`` holds a NaN or an inf (a 0-dim bool tensor), in bounded memory: the class
    centres may be gigabytes, and their ``isfinite`` mask would be a quarter of that again."""
    flat = t.reshape(-1)
    found = torch.zeros((), dtype=torch.bool, device=t.device)
    for start in range(0, flat.numel(), chunk):
        found |= ~torch.isfinite(flat[start : start + chunk]).all()
    return found


def _state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]


def _describe(opt: torch.optim.Optimizer) -> str:
    """``Name(lr=..., ...)``: an optimizer's hyper-parameters as its first group holds them."""
    keys = ("lr", "momentum", "dampening", "nesterov", "betas", "eps", "weight_decay")
    group = opt.param_groups[0]
    args = ", ".join(f"{k}={group[k]}" for k in keys if k in group)
    return f"{type(opt).__name__}({args})"


def _rng_state() -> dict[str, Any]:
    """The generators' states as tensors, ints and tuples only: loadable with weights_only=True."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": (version, torch.tensor(mt, dtype=torch.int64), gauss),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _load_rng_state(path: Path) -> dict[str, Any]:
    """Reads a file written from :func:`_rng_state` without running code from it.

    Raises:
        UserError: the file is not such a state (a crafted or damaged file), naming it.
    """
    try:
        state = torch.load(path, weights_only=True)
        version, mt, gauss = state["python"]
        name, keys, pos, has_gauss, cached = state["numpy"]
        return {
            "torch": state["torch"],
            "python": (version, tuple(mt.tolist()), gauss),
            "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
            **({"cuda": state["cuda"]} if "cuda" in state else {}),
        }
    except Exception as err:  # unpickling refusals and malformed content raise many types
        raise UserError(
            f"{path}: not a random-generator state written by partialfc ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete the file to resume with "
            "fresh generators, or the checkpoint folder to resume from an older one"
        ) from None


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
