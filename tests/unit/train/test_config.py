import pytest

import partialfc as pfc
from partialfc.train.config import Config

TOML = """
[data]
root = "/data/ms1mv3"
loader = "dali"
global_batch_size = 1024

[model]
backbone = "iresnet50"

[head]
margin = "combined"
m1 = 1.0
m2 = 0.3
m3 = 0.2
sample_rate = 0.2

[train]
max_steps = 5000
precision = "bf16"

[eval]
sets = ["lfw.bin", "agedb_30.bin"]
"""


def _write(tmp_path, text=TOML):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_toml_sections_become_typed_and_frozen(tmp_path) -> None:
    cfg = Config.load(_write(tmp_path))
    assert cfg.data.loader == "dali" and cfg.data.global_batch_size == 1024
    assert cfg.head.sample_rate == 0.2 and cfg.train.precision == "bf16"
    assert cfg.eval.sets == ["lfw.bin", "agedb_30.bin"]
    assert cfg.optim.lr == 0.1 and cfg.metrics.port == 0, "absent keys keep their defaults"
    margin = cfg.head.build_margin()
    assert isinstance(margin, pfc.CombinedMargin) and (margin.m2, margin.m3) == (0.3, 0.2)
    with pytest.raises(AttributeError):
        cfg.train.max_steps = 1  # type: ignore[misc]


def test_command_line_overrides_are_parsed_to_the_field_type(tmp_path) -> None:
    cfg = Config.load(
        _write(tmp_path),
        [
            "--train.max_steps",
            "7",
            "--optim.lr=0.05",
            "--head.straight_through",
            "true",
            "--eval.sets",
            "a.bin,b.bin",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.05
    assert cfg.head.straight_through is True and cfg.eval.sets == ["a.bin", "b.bin"]


@pytest.mark.parametrize("value,expected", [(None, None), ("false", False), ("on", True)])
def test_checkpoint_activations_is_unset_or_a_bool(tmp_path, value, expected) -> None:
    # unset: the backbone decides (on for arcface_torch's big ViTs); set: it is forced either way
    overrides = [] if value is None else ["--model.checkpoint_activations", value]
    cfg = Config.load(_write(tmp_path), overrides)
    assert cfg.model.checkpoint_activations is expected
    assert Config.from_dict(cfg.to_dict()) == cfg, "config.json keeps it"
    with pytest.raises(ValueError, match=r"model\.checkpoint_activations: expected"):
        Config.from_dict({"model": {"checkpoint_activations": "yes"}})


@pytest.mark.parametrize("name", ["r50", "mbf_large", "vit_t", "vit_h", "r2060"])
def test_arcface_torch_backbone_names_are_accepted(tmp_path, name) -> None:
    assert Config.load(_write(tmp_path), ["--model.backbone", name]).model.backbone == name


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], ("sgd", 0.1, 5e-4)),
        (["--optim.name", "adamw", "--optim.lr", "1e-3"], ("adamw", 1e-3, 5e-4)),
        (["--optim.name", "adamw", "--optim.head_name", "sgd"], ("sgd", 0.1, 5e-4)),
        (["--optim.head_lr", "0.3", "--optim.head_weight_decay", "0"], ("sgd", 0.3, 0.0)),
    ],
)
def test_the_centres_follow_the_backbone_optimizer_unless_told(tmp_path, overrides, expected):
    cfg = Config.load(_write(tmp_path), overrides)
    assert cfg.optim.head_settings() == expected
    assert Config.from_dict(cfg.to_dict()) == cfg, "config.json keeps the head_* fields"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["--optim.head_name", "adam"], r"optim\.head_name: must be one of \('sgd', 'adamw'\)"),
        (["--optim.head_lr", "0"], r"optim\.head_lr: must be > 0"),
        (["--optim.head_weight_decay", "-1"], r"optim\.head_weight_decay: must be >= 0"),
        (["--head.margin", "bogus"], r"head\.margin: must be one of"),
        (["--head.sample_rate", "0"], r"head\.sample_rate: must be in \(0, 1\]"),
        (["--train.precision", "fp8"], r"train\.precision"),
        (["--train.max_steps", "ten"], r"--train\.max_steps: expected int, got 'ten'"),
        (["--head.bogus", "1"], r"--head\.bogus: unknown option"),
        (["--nosection.key", "1"], r"--nosection\.key: unknown section 'nosection'"),
        (["--data.loader", "torch", "--data.root", ""], r"data\.root: is required"),
        (["--head.m2", "-0.5"], r"head: m2 must be >= 0"),
        (["train.max_steps", "3"], r"--section\.key value"),
        (["--train.max_steps"], r"needs a value"),
    ],
)
def test_bad_values_name_the_field(tmp_path, overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        Config.load(_write(tmp_path), overrides)


def test_wrong_types_in_the_file_name_the_field(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"data\.global_batch_size: expected int, got '1024'"):
        Config.load(
            _write(tmp_path, TOML.replace("global_batch_size = 1024", 'global_batch_size = "1024"'))
        )
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['extra'\]"):
        Config.load(_write(tmp_path, TOML + "\n[extra]\nx = 1\n"))
    with pytest.raises(ValueError, match="invalid TOML"):
        Config.load(_write(tmp_path, "[data\n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")


def test_a_missing_required_section_says_what_is_needed() -> None:
    with pytest.raises(ValueError, match=r"data\.root: is required"):
        Config.from_dict({})
    cfg = Config.from_dict({"data": {"loader": "synthetic", "num_classes": 10}})
    with pytest.raises(ValueError, match=r"data\.num_classes"):
        Config.from_dict({"data": {"loader": "synthetic"}})
    assert cfg.train.epochs == 20 and cfg.train.max_steps == 0
