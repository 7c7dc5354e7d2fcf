"""Schedules over optimizer steps: the learning rate (linear warmup, then polynomial decay to zero,
insightface's PolyScheduler) and piecewise-constant values such as the head's sample rate."""

from __future__ import annotations

from collections.abc import Sequence


def learning_rate(
    step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, power: float = 2.0
) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    Warmup rises linearly from ``base_lr / warmup_steps`` at step 0 to ``base_lr``; then the rate
    decays as ``base_lr * (1 - progress) ** power`` with progress from 0 to 1 over the remaining
    steps, reaching 0 after the last step.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * max(0.0, 1.0 - progress) ** power


def piecewise_constant(schedule: Sequence[Sequence[float]], step: int) -> float:
    """The value of optimizer step ``step`` (0-based) under ``[[s0, v0], [s1, v1], ...]``: from
    step ``s_i`` on it is ``v_i``. A pure function of the step, so a resumed run needs no state.

    Raises:
        ValueError: the schedule is empty or does not start at step 0.
    """
    if not schedule or schedule[0][0] != 0:
        raise ValueError(f"a schedule must start at step 0, got {list(schedule)}")
    value = schedule[0][1]
    for start, v in schedule:
        if start > step:
            break
        value = v
    return float(value)
