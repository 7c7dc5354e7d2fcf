"""TensorBoard event files for one run (rank 0), through ``torch.utils.tensorboard``.

The ``tensorboard`` package (extra ``tensorboard``) is imported when the sink writes its first
record, so the module imports without it; :func:`tensorboard_available` tells a config check.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Logged keys that are no curve: a Unix time (float32 in an event file: minutes off) and this
# rank's share of the batch (Prometheus' counter; samples_per_second is the run's throughput).
_SKIPPED = {"checkpoint_time", "rank_samples"}
# Both optimizers' learning rates on one card.
_TAGS = {"lr": "lr/backbone", "head_lr": "lr/head"}


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package that ``torch.utils.tensorboard`` writes with is there."""
    return importlib.util.find_spec("tensorboard") is not None


def tag(key: str) -> str | None:
    """The TensorBoard tag of a logged key (None: not written).

    ``lr`` and ``head_lr`` become ``lr/backbone`` and ``lr/head``; an evaluation's accuracy
    ``eval/<set>`` becomes ``eval/<set>/accuracy`` beside ``eval/<set>/val``, ``.../xnorm``, ...;
    other keys (``loss``, ``time/forward``, ``margin/t``) are their own tags.
    """
    if key in _SKIPPED:
        return None
    if key.startswith("eval/") and key.count("/") == 1:
        return f"{key}/accuracy"
    return _TAGS.get(key, key)


class TensorBoardSink:
    """Scalars in ``log_dir`` (``OUTPUT_DIR/tensorboard``), one event file per process start.

    A resumed run redoes the steps after its checkpoint. The writer opens at the first record, with
    ``purge_step`` set to that record's step: TensorBoard then drops the earlier attempt's events
    at that step and after, so every step shows once, with the values of the run that continued.
    (A run resumed at its last step trains nothing and evaluates again: that step then shows the
    new evaluation only.)

    Args:
        log_dir: folder of the event files (created).
        flush_secs: seconds between flushes to disk (a crash loses at most that much).
    """

    def __init__(self, log_dir: str | os.PathLike, flush_secs: float = 30.0) -> None:
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self._writer: Any = None

    def _open(self, step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(str(self.log_dir), purge_step=step, flush_secs=self.flush_secs)

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        # A non-finite loss is a skipped step: TensorBoard would draw it as a spike to inf.
        scalars = {tag(k): v for k, v in values.items() if tag(k) is not None and math.isfinite(v)}
        if not scalars:  # the resume's checkpoint time alone must not set purge_step
            return
        if self._writer is None:
            self._writer = self._open(step)
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
