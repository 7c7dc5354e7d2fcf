"""Every shipped config file loads and validates (a new preset gets tested by being added)."""

from pathlib import Path

import pytest

from partialfc import backbones
from partialfc.train.config import Config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.toml"))


def test_the_demo_and_the_presets_are_shipped() -> None:
    assert {p.stem for p in CONFIGS} >= {
        "demo_cpu",
        "ms1mv3_r50",
        "glint360k_r100",
        "webface42m_r100",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_names_a_known_backbone(path: Path) -> None:
    cfg = Config.load(path)
    assert cfg.model.backbone in backbones.list_backbones()
    assert cfg.head.build_margin() is not None
