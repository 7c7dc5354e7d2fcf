"""partialfc.checkpoint.run: a saved run's config.json and backbone, read without the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import partialfc as pfc
from partialfc import backbones, checkpoint
from partialfc.errors import UserFileError
from partialfc.train.config import Config


def _save_run(out: Path, config: dict | None, model: torch.nn.Module | None = None) -> Path:
    files = {} if config is None else {"config.json": json.dumps(config).encode()}
    state = {"model": (model or backbones.create("tinyface", embedding_size=8)).state_dict()}
    return checkpoint.save(state, out, step=3, files=files)


def test_load_backbone_rebuilds_the_trained_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = backbones.create("tinyface", embedding_size=8)
    # What the trainer writes: the whole typed config.
    raw = Config.from_dict(
        {
            "model": {"backbone": "tinyface", "embedding_size": 8, "dropout": 0.1},
            "data": {"loader": "synthetic", "num_classes": 10},
        }
    ).to_dict()
    _save_run(tmp_path, raw, trained)
    model, saved = checkpoint.load_backbone(tmp_path)  # the output_dir: its newest checkpoint
    assert (saved.backbone, saved.embedding_size, saved.dropout) == ("tinyface", 8, 0.1)
    assert saved.path == tmp_path / "step-00000003"
    assert not model.training
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), trained.eval()(x))
    assert isinstance(saved.margin(), pfc.ArcFace)  # Config's default head, as saved


def test_flat_margin_keys_are_read_as_what_they_meant(tmp_path: Path) -> None:
    _save_run(
        tmp_path,
        {
            "model": {"backbone": "tinyface", "embedding_size": 8},
            "head": {"margin": "cosface", "s": 30.0, "m3": 0.35},
        },
    )
    margin = checkpoint.read_run(tmp_path).margin()
    assert isinstance(margin, pfc.CosFace) and (margin.scale, margin.m3) == (30.0, 0.35)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "has no config.json; was it written by partialfc's trainer?"),
        ({"data": {}}, "config.json: has no [model] section"),
        (
            {"model": {"backbone": "resnet9000", "embedding_size": 8}},
            "config.json: model.backbone 'resnet9000' is no registered backbone; known: ",
        ),
        (
            {"model": {"backbone": "tinyface", "embedding_size": "8"}},
            "config.json: model.embedding_size must be a positive integer, got '8'",
        ),
        (
            {"model": {"backbone": "tinyface", "embedding_size": 8}, "head": {"margin": "x"}},
            "config.json: head.margin: unknown margin 'x'",
        ),
    ],
)
def test_a_bad_run_folder_is_a_user_error_naming_the_file(
    tmp_path: Path, config: dict | None, message: str
) -> None:
    folder = _save_run(tmp_path, config)
    with pytest.raises(UserFileError) as err:
        checkpoint.read_run(tmp_path).margin()
    assert str(folder) in str(err.value) and message in str(err.value)


def test_no_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(
        UserFileError, match=f"no complete partialfc checkpoint at or under {tmp_path}"
    ):
        checkpoint.load_backbone(tmp_path)
