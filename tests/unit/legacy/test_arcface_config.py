"""``partialfc import-config arcface_torch``: arcface_torch's own ViT config (and its base.py)
becomes a partialfc TOML that validates, with the values arcface_torch would train with; the
file is read, never executed."""

from __future__ import annotations

from pathlib import Path

import pytest

from partialfc.cli import main as cli
from partialfc.errors import UserError
from partialfc.legacy.arcface_config import read_config
from partialfc.train.config import Config

# recognition/arcface_torch/configs/wf42m_pfc03_40epoch_8gpu_vit_b.py, verbatim
VIT_B = """from easydict import EasyDict as edict

# make training faster
# our RAM is 256G
# mount -t tmpfs -o size=140G  tmpfs /train_tmp

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "vit_b_dp005_mask_005"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.3
config.fp16 = True
config.weight_decay = 0.1
config.batch_size = 256
config.gradient_acc = 12 # total batchsize is 256 * 12
config.optimizer = "adamw"
config.lr = 0.001
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/WebFace42M"
config.num_classes = 2059906
config.num_image = 42474557
config.num_epoch = 40
config.warmup_epoch = config.num_epoch // 10
config.val_targets = []
"""


def _import(tmp_path: Path, text: str, capsys, *extra: str) -> tuple[Config, str]:
    """The printed TOML, loaded (and so validated) as a partialfc config, and the text."""
    path = tmp_path / "configs" / "job.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    assert cli(["import-config", "arcface_torch", str(path), *extra]) == 0
    out = capsys.readouterr().out
    (tmp_path / "job.toml").write_text(out)
    return Config.load(tmp_path / "job.toml"), out


def test_the_vit_b_config_maps_setting_by_setting(tmp_path: Path, capsys) -> None:
    cfg, out = _import(tmp_path, VIT_B, capsys)
    assert cfg.model.backbone == "vit_b_dp005_mask_005" and cfg.model.embedding_size == 512
    assert (cfg.head.margin, cfg.head.margin_args, cfg.head.sample_rate) == (
        "cosface",
        {"s": 64.0, "m": 0.4},
        0.3,
    )
    assert cfg.optim.head_settings() == ("adamw", 1e-3, 0.1)  # the centres too
    assert cfg.data.global_batch_size == 256 * 8 * 12 and cfg.train.grad_accum == 12
    assert cfg.train.precision == "fp16" and cfg.data.loader == "torch"
    assert cfg.train.epochs == 40 and cfg.optim.decay_power == 1.0
    assert cfg.optim.warmup_steps == 42474557 // (256 * 8 * 12) * 4  # warmup_epoch = 40 // 10
    assert cfg.data.root == "/train_tmp/WebFace42M" and cfg.eval.sets == []
    assert cfg.train.output_dir == "work_dirs/job"  # get_config's default for output = None
    assert "#   config.num_classes = 2059906: partialfc reads it" in out


def test_world_size_base_file_and_arcface_margins(tmp_path: Path, capsys) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.py").write_text(
        "config = edict()\nconfig.batch_size = 64\nconfig.margin_list = (1.0, 0.5, 0.0)\n"
        "config.val_targets = ['lfw', 'cfp_fp']\nconfig.rec = '/data/ms1m'\n"
    )
    cfg, _ = _import(
        tmp_path, "config = edict()\nconfig.network = 'r50'\n", capsys, "--world-size", "4"
    )
    assert cfg.data.global_batch_size == 64 * 4
    assert cfg.head.margin == "arcface"
    assert cfg.head.margin_args == {"s": 64.0, "m": 0.5, "straight_through": True}
    assert cfg.eval.sets == ["/data/ms1m/lfw.bin", "/data/ms1m/cfp_fp.bin"]


def test_the_file_is_read_never_executed(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "executed"
    text = (
        "import os\nconfig = edict()\n"
        f"os.system('touch {marker}')\n"
        f"config.lr = open({str(marker)!r}, 'w').write('x')\n"
        "config.network = 'r18'\nconfig.rec = '/data/x'\n"
        "config.batch_size = config.undefined * 2\n"
    )
    cfg, out = _import(tmp_path, text, capsys)
    assert not marker.exists()
    assert cfg.model.backbone == "r18" and cfg.optim.lr == 0.1  # base.py's lr
    assert "not read" in out and "os.system" in out and "config.lr (not a literal" in out
    assert "config.undefined is used before it is set" in out


def test_unreadable_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("config.lr = (\n")
    with pytest.raises(UserError, match=r"bad\.py:1: not Python"):
        read_config(tmp_path / "bad.py")
    with pytest.raises(UserError, match="No such file"):
        read_config(tmp_path / "missing.py")
