"""Per-step values of a run, read from its ``metrics.jsonl`` (the trainer keeps none in memory)."""

from __future__ import annotations

import json
from pathlib import Path


def step_losses(output_dir: str | Path) -> dict[int, float]:
    """Step -> loss; a step logged twice (redone after a restart) keeps its last record."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def losses(output_dir: str | Path, after: int = 0) -> list[float]:
    """The losses of steps ``after + 1, after + 2, ...`` in step order."""
    by_step = step_losses(output_dir)
    return [by_step[s] for s in sorted(by_step) if s > after]
