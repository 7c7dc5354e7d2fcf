"""The metric sink interface and the simple sinks (console, JSON lines, fan-out)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable


@runtime_checkable
class MetricSink(Protocol):
    """Where the trainer sends its numbers. Keys are plain names ("loss", "lr", "time/forward")."""

    def log(self, name: str, value: float, step: int) -> None: ...

    def log_dict(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """One ``step N  key value ...`` line per call."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        parts = "  ".join(f"{k} {v:.6g}" for k, v in values.items())
        print(f"step {step}  {parts}", file=self.stream, flush=True)

    def close(self) -> None:
        self.stream.flush()


class JsonlSink:
    """Appends one JSON object per call to a file: ``{"step": N, "loss": ..., ...}``.

    Non-finite values are written as ``null`` (JSON has no NaN), so every line stays valid JSON.
    Appending (not truncating) keeps the history of a run resumed from a checkpoint.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        record = {"step": step}
        record.update({k: (float(v) if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MultiSink:
    """Sends everything to several sinks."""

    def __init__(self, sinks: Sequence[MetricSink]) -> None:
        self.sinks = list(sinks)

    def log(self, name: str, value: float, step: int) -> None:
        for sink in self.sinks:
            sink.log(name, value, step)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log_dict(values, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
