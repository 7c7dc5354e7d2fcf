"""``python -m partialfc.train --help`` documents every config field; misspelt options get a hint."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from partialfc.train import __main__ as train_main
from partialfc.train import config, options
from partialfc.train.config import Config

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "partialfc" / "configs" / "demo_cpu.toml"


def _fields():
    for section in config.SECTIONS:
        section_type = typing.get_type_hints(Config)[section]
        docs = options.field_docs(section_type)
        for f in dataclasses.fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield section, f, default, docs.get(f.name, "")


def _help(capsys) -> str:
    assert train_main.main(["--help"]) == 0
    return capsys.readouterr().out


def test_help_lists_every_field_with_its_type_default_and_docstring(capsys) -> None:
    lines = _help(capsys).splitlines()
    seen = 0
    for section, f, default, doc in _fields():
        assert doc, f"{section}.{f.name} has no docstring under it in config.py"
        flag = f"--{section}.{f.name}"
        (at,) = [
            i for i, line in enumerate(lines) if line.split()[:1] in ([flag], [f"{flag}.NAME"])
        ]
        assert f"default: {default!r})" in lines[at], lines[at]
        body = []
        for line in lines[at + 1 :]:
            if not line.startswith("      "):
                break
            body.append(line.strip())
        assert " ".join(body) == " ".join(doc.split()), flag
        seen += 1
    assert seen == sum(len(dataclasses.fields(t)) for _, t in options.sections()) > 40


def test_help_shows_the_types_lists_and_tables(capsys) -> None:
    text = _help(capsys)
    assert "--optim.lr VALUE  (float, default: 0.1)" in text
    assert "--optim.head_lr VALUE  (float | None, default: None)" in text
    assert "--eval.sets VALUE ...  (list[str], default: [])" in text
    assert "--head.margin_args.NAME VALUE  (dict[str, Any], default: {})" in text
    assert "--eval.sets a.bin b.bin" in text and "--eval.sets= gives the empty list" in text
    assert "--head.margin_args.m 0.35" in text
    assert "--world-size N" in text and "--check" in text, "the trainer's own options too"


def test_field_docs_reads_the_literal_under_each_field() -> None:
    docs = options.field_docs(config.OptimConfig)
    assert docs["lr"] == "Peak learning rate."
    assert docs["name"].startswith("Backbone optimizer: sgd or adamw;")
    assert "\n" in docs["name"] and "    " not in docs["name"], "indentation is removed"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["--optim.lrr", "0.1"], "--optim.lrr: unknown option; did you mean --optim.lr?"),
        (["--optm.lr", "0.1"], "--optm.lr: unknown section 'optm'; did you mean --optim.lr?"),
        (["--haed.margin_args.m", "1"], "did you mean --head.margin_args?"),
        (["--train.max_step", "5"], "did you mean --train.max_steps?"),
    ],
)
def test_a_misspelt_option_gets_a_hint(overrides, expected) -> None:
    with pytest.raises(config.ConfigError) as err:
        Config.load(DEMO, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_key_nothing_resembles_lists_what_the_section_has() -> None:
    with pytest.raises(config.ConfigError, match=r"optim has \['decay_power'"):
        Config.load(DEMO, ["--optim.qqqqqqq", "1"])


def test_a_misspelt_key_in_the_file_gets_the_hint_too(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(DEMO.read_text().replace("warmup_steps = 20", "warmup_step = 20"))
    with pytest.raises(
        config.ConfigError, match=r"optim.warmup_step: .*did you mean optim.warmup_steps\?"
    ):
        Config.load(path)


def test_the_trainer_command_gives_the_hint_and_exit_2_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "partialfc.train", str(DEMO), "--optim.lrr", "0.1", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --optim.lrr: unknown option; did you mean --optim.lr?"
    assert "Traceback" not in result.stderr + result.stdout


def test_a_misspelt_trainer_option_gets_a_hint(capsys) -> None:
    assert train_main.main([str(DEMO), "--chek"]) == 2
    assert "--chek: unknown option; did you mean --check?" in capsys.readouterr().err


def test_no_arguments_prints_the_usage_and_exits_2(capsys) -> None:
    assert train_main.main([]) == 2
    out = capsys.readouterr().out
    assert "usage: python -m partialfc.train" in out and "--help also lists" in out


@pytest.mark.parametrize(
    ("overrides", "sets"),
    [
        (["--eval.sets", "a.bin", "b.bin"], ["a.bin", "b.bin"]),
        (["--eval.sets", "a.bin", "b.bin", "--eval.every", "7"], ["a.bin", "b.bin"]),
        (["--eval.sets=a.bin,b.bin"], ["a.bin", "b.bin"]),
        (["--eval.sets=a.bin", "--eval.every=7"], ["a.bin"]),
        (["--eval.sets="], []),
    ],
)
def test_lists_take_every_value_up_to_the_next_option(overrides, sets) -> None:
    cfg = Config.load(DEMO, overrides)
    assert cfg.eval.sets == sets
    assert cfg.eval.every == (7 if "7" in "".join(overrides) else 50)


def test_a_list_option_without_values_says_how_to_clear_it() -> None:
    with pytest.raises(
        config.ConfigError, match=r"--eval.sets needs one or more values \(--eval.sets= clears"
    ):
        Config.load(DEMO, ["--eval.sets", "--eval.every", "3"])


def test_a_table_entry_overrides_one_entry_and_keeps_the_others() -> None:
    cfg = Config.load(DEMO, ["--head.margin_args.m", "0.25"])
    assert cfg.head.margin_args == {"s": 30.0, "m": 0.25}
    margin = cfg.head.build_margin()
    assert (margin.scale, margin.m3) == (30.0, 0.25)
