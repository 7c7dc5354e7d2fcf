"""Training: checkpoints that reshard (the trainer, config and schedules build on them)."""
