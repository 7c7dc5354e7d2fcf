"""Health as progress: a process is healthy while its training steps keep completing.

A rank hung in a collective (a peer died, stopped or deadlocked) still has a live metrics thread,
so "the server answers" proves nothing; what proves progress is a step that completed recently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class StallWatch:
    """Healthy while a training step completed within the last ``stall_seconds``.

    The training thread calls :meth:`step_completed`; the metrics server's thread calls
    :meth:`healthy`. They share one float, which the training thread replaces and the server thread
    reads: both are atomic under the GIL, so no lock is taken. A lock would be wrong here, because
    the server must answer precisely while the training thread is stuck (in a collective, in the
    data loader) and could be holding it.

    The clock starts when the watch is created, at the trainer's start: startup, including the
    resume from a checkpoint, gets ``stall_seconds`` like any step does. Evaluation and checkpoint
    writes happen between two steps and are therefore part of the gap between two completions.

    Args:
        stall_seconds: longest gap between completions (or from the start to the first one) that
            still counts as healthy; must be > 0.
        clock: seconds on a monotonic clock (a test injects its own).
    """

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (stall_seconds > 0 and math.isfinite(stall_seconds)):
            raise ValueError(f"stall_seconds must be a finite number > 0, got {stall_seconds}")
        self.stall_seconds = float(stall_seconds)
        self._clock = clock
        self._last_progress = clock()

    def step_completed(self) -> None:
        """Record that a training step has just completed."""
        self._last_progress = self._clock()

    def seconds_since_progress(self) -> float:
        """Seconds since the last completed step (or since the start, before the first)."""
        return self._clock() - self._last_progress

    def healthy(self) -> bool:
        """Whether the last step (or the start) is less than ``stall_seconds`` ago."""
        return self.seconds_since_progress() < self.stall_seconds
