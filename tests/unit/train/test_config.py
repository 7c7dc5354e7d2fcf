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
sample_rate = 0.2

[head.margin_args]
m1 = 1.0
m2 = 0.3
m3 = 0.2

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
            "--head.margin_args.straight_through",
            "true",
            "--head.margin_args.s=16",
            "--eval.sets",
            "a.bin,b.bin",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.05
    margin = cfg.head.build_margin()
    assert margin.straight_through is True and margin.scale == 16.0 and margin.m2 == 0.3
    assert cfg.eval.sets == ["a.bin", "b.bin"]


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
        (["--head.margin_args.m2", "-0.5"], r"head\.margin_args: m2 must be >= 0"),
        (["--head.margin_args", "1"], r"--head\.margin_args: give one entry at a time"),
        (["--head.sample_rate.x", "1"], r"--head\.sample_rate\.x: is not a table"),
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


@pytest.mark.parametrize("name", list(pfc.MARGINS))
def test_a_margin_without_arguments_is_its_class_with_its_defaults(name: str) -> None:
    # The trap this replaces: margin = "cosface" trained CosFace with m = 0, "sphereface" m = 1.
    cfg = Config.from_dict(
        {"data": {"loader": "synthetic", "num_classes": 4}, "head": {"margin": name}}
    )
    built = cfg.head.build_margin()
    assert type(built) is pfc.MARGINS[name]
    assert repr(built) == repr(pfc.MARGINS[name]())


def test_cosface_and_sphereface_keep_their_own_margins() -> None:
    head = {"data": {"loader": "synthetic", "num_classes": 4}}
    cosface = Config.from_dict({**head, "head": {"margin": "cosface"}}).head.build_margin()
    assert (cosface.m1, cosface.m2, cosface.m3, cosface.scale) == (1.0, 0.0, 0.4, 64.0)
    sphere = Config.from_dict(
        {**head, "head": {"margin": "sphereface", "margin_args": {"m": 3, "base": 10.0}}}
    ).head.build_margin()
    assert (sphere.m, sphere.base, sphere.lambda_min) == (3, 10.0, 5.0)


@pytest.mark.parametrize(
    "margin,args,match",
    [
        (
            "cosface",
            "m3 = 0.1",
            r"head\.margin_args: margin 'cosface' takes no argument 'm3'; it "
            r"takes: s, m, straight_through",
        ),
        ("sphereface", "m = 2.7", r"argument 'm' must be an integer, got 2\.7"),
        ("arcface", 's = "64"', r"argument 's' must be a number"),
        ("arcface", "m = -0.1", r"head\.margin_args: m must be >= 0"),
    ],
)
def test_margin_arguments_are_checked_against_the_class(tmp_path, margin, args, match) -> None:
    text = TOML.replace('margin = "combined"', f'margin = "{margin}"')
    text = text.replace("m1 = 1.0\nm2 = 0.3\nm3 = 0.2\n", args + "\n")
    with pytest.raises(ValueError, match=match):
        Config.load(_write(tmp_path, text))


def test_the_flat_margin_keys_are_gone_and_say_where_to_go(tmp_path) -> None:
    text = TOML.replace("sample_rate = 0.2\n", "sample_rate = 0.2\nm3 = 0.35\n")
    with pytest.raises(ValueError, match=r"head\.m3: unknown option: .*\[head\.margin_args\]"):
        Config.load(_write(tmp_path, text))


def test_a_saved_config_with_flat_margin_keys_reads_as_the_margin_it_trained() -> None:
    saved = {
        "data": {"loader": "synthetic", "num_classes": 4},
        "head": {"margin": "cosface", "s": 30.0, "m1": 1.0, "m2": 0.5, "m3": 0.35},
    }
    margin = Config.from_saved(saved).head.build_margin()
    assert isinstance(margin, pfc.CosFace) and (margin.scale, margin.m3) == (30.0, 0.35)
    sphere = {**saved, "head": {"margin": "sphereface", "m1": 2.7}}
    assert Config.from_saved(sphere).head.build_margin().m == 2


def test_a_sample_rate_schedule_is_piecewise_constant_over_steps(tmp_path) -> None:
    text = TOML.replace("sample_rate = 0.2\n", "sample_rate_schedule = [[0, 0.1], [200000, 1.0]]\n")
    cfg = Config.load(_write(tmp_path, text))
    assert cfg.head.sample_rate_schedule == [[0, 0.1], [200000, 1.0]]
    rates = [cfg.head.sample_rate_at(s) for s in (0, 1, 199_999, 200_000, 10**7)]
    assert rates == [0.1, 0.1, 0.1, 1.0, 1.0]
    cli = Config.load(_write(tmp_path), ["--head.sample_rate", "1", "--head.sample_rate_schedule", "[[0, 0.3], [5, 0.6]]"])  # fmt: skip
    assert [cli.head.sample_rate_at(s) for s in (4, 5)] == [0.3, 0.6]
    falling = Config.load(_write(tmp_path), ["--head.sample_rate=1", "--head.sample_rate_schedule=[[0, 1.0], [3, 0.5]]"])  # fmt: skip
    assert falling.head.sample_rate_at(3) == 0.5, "a rate may also fall"
    assert Config.load(_write(tmp_path)).head.sample_rate_at(7) == 0.2, "no schedule: sample_rate"


@pytest.mark.parametrize(
    "schedule,match",
    [
        ("[[1, 0.1]]", r"steps must be integers starting at 0, got \[1\]"),
        ("[[0.0, 0.1]]", r"steps must be integers starting at 0"),
        (
            "[[0, 0.1], [100, 0.5], [100, 1.0]]",
            r"steps must be strictly increasing, got \[0, 100, 100\]",
        ),
        ("[[0, 0.0]]", r"rates must be in \(0, 1\], got \[0.0\]"),
        ("[[0, 1.5]]", r"rates must be in \(0, 1\]"),
        ("[[0, 0.1, 5]]", r"must be a list of \[step, rate\] pairs"),
        ("[0.1, 1.0]", r"expected a list of lists of float"),
        ('[[0, "full"]]', r"expected a list of lists of float"),
    ],
)
def test_bad_sample_rate_schedules_name_the_field(tmp_path, schedule, match) -> None:
    text = TOML.replace("sample_rate = 0.2\n", f"sample_rate_schedule = {schedule}\n")
    with pytest.raises(ValueError, match=r"head\.sample_rate_schedule: " + match):
        Config.load(_write(tmp_path, text))


def test_a_sample_rate_schedule_and_a_sample_rate_are_exclusive(tmp_path) -> None:
    text = TOML.replace("sample_rate = 0.2\n", "sample_rate = 0.2\nsample_rate_schedule = [[0, 0.1]]\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"head\.sample_rate_schedule: replaces head\.sample_rate \(0\.2\)"):  # fmt: skip
        Config.load(_write(tmp_path, text))
