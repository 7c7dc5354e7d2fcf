"""A tiny synthetic face set and a config that trains on it in seconds (integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from partialfc.data.synth import SynthConfig, synth_dataset

STEPS = 10


@pytest.fixture(scope="session")
def small_run_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small-run")
    synth_dataset(
        root / "data",
        SynthConfig(identities=10, images_per_identity=4, val_identities=4, val_pairs=20),
        workers=1,
    )
    path = root / "run.toml"
    path.write_text(
        f"""
[data]
root = "{root / "data"}"
global_batch_size = 12
workers = 0
[model]
backbone = "tinyface"
embedding_size = 16
[head]
margin = "arcface"
sample_rate = 0.6
[head.margin_args]
s = 16.0
m = 0.3
[optim]
lr = 0.05
[train]
max_steps = {STEPS}
checkpoint_every = 2
"""
    )
    return path
