"""Progress of the long commands (pack, inspect --verify, synth, eval, eval-ijb, convert).

On a terminal it is a tqdm bar on stderr. Anywhere else (a Kubernetes log, CI, a pipe) a redrawn
bar is noise, so it is one line every few seconds and a last line when the work ends::

    pack: 1536/5120 img (30%)  812 img/s  eta 0:00:04
    pack: 5120/5120 img (100%) in 6.1 s

stdout stays the command's own output (its tables and results): progress always goes to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

INTERVAL_ENV = "PARTIALFC_PROGRESS_SECONDS"
"""Seconds between two progress lines off a terminal (default 5)."""


class Progress:
    """A count towards ``total`` (None: unknown), shown as a bar or as periodic lines.

    Args:
        total: the count at which the work is done, or None.
        desc: what is counted, first word of each line ("pack", "verify", "embed").
        unit: the unit of the count ("img", "batch", "pair").
        enabled: False shows nothing (``--no-progress``).
        stream: where it goes (stderr).
        bar: a tqdm bar; None: when ``stream`` is a terminal and tqdm imports.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        bar: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self.started = self.last_line = time.perf_counter()
        self.interval = float(os.environ.get(INTERVAL_ENV, "5"))
        self._bar = None
        self._closed = False
        if enabled and (bar if bar is not None else _is_terminal(self.stream)):
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, mininterval=0.5)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_line >= self.interval:
                self.last_line = now
                self._line(self._running(now))

    def close(self) -> None:
        """Ends the bar, or writes the last line (done, or how far it got)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._line(f"in {time.perf_counter() - self.started:.1f} s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _running(self, now: float) -> str:
        rate = self.count / max(now - self.started, 1e-9)
        text = f"{rate:.0f} {self.unit}/s"
        if self.total and rate > 0:
            eta = int(max(self.total - self.count, 0) / rate)
            text += f"  eta {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
        return text

    def _line(self, tail: str) -> None:
        done = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        share = f" ({100 * self.count // self.total}%)" if self.total else ""
        print(f"{self.desc}: {done} {self.unit}{share}  {tail}", file=self.stream, flush=True)


def track(
    items: Iterable[T],
    desc: str,
    unit: str = "it",
    total: int | None = None,
    enabled: bool = True,
) -> Iterator[T]:
    """Yields ``items``, counting each; ``total`` defaults to ``len(items)`` where it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled) as progress:
        for item in items:
            yield item
            progress.update()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False
