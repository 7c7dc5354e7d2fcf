"""Every shipped config file loads and validates (a new preset gets tested by being added)."""

from pathlib import Path

import pytest

from partialfc import backbones
from partialfc.train.config import Config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "partialfc" / "configs").glob("*.toml"))


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


def test_the_package_resources_are_these_files(capsys) -> None:
    """partialfc.configs (importlib.resources: what an installed wheel reads) lists these files."""
    from partialfc import configs
    from partialfc.cli import main

    assert configs.names() == sorted(p.stem for p in CONFIGS)
    for path in CONFIGS:
        assert configs.read_text(path.stem) == path.read_text()
        assert configs.read_text(path.name) == path.read_text()
        with configs.as_file(path.stem) as real:
            assert real.read_text() == path.read_text()
    assert main(["configs", "ms1mv3_r50"]) == 0
    assert capsys.readouterr().out == (CONFIGS[0].parent / "ms1mv3_r50.toml").read_text()
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == configs.names()
    assert listed[0].split()[1] == str(CONFIGS[0])


def test_an_unknown_config_is_a_user_error(capsys) -> None:
    from partialfc.cli import main

    assert main(["configs", "ms1mv3_r5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no shipped config 'ms1mv3_r5'; shipped: demo_cpu, ")
