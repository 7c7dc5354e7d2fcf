"""Learning-rate schedule: linear warmup, then polynomial decay to zero (insightface's PolyScheduler)."""

from __future__ import annotations


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
