"""Progress of the long commands: a bar on a terminal, periodic lines elsewhere, a last line that
says how far the work got; the real commands (pack, inspect --verify, synth) report every item."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partialfc.data.inspect import verify
from partialfc.progress import INTERVAL_ENV, Progress, track
from tests.unit.data._datasets import damage_record, make_synth, write_image_folder

REPO = Path(__file__).resolve().parents[2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_lines_come_every_interval_and_the_last_says_done(monkeypatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    out = io.StringIO()
    with Progress(4, "pack", "img", stream=out) as progress:
        for _ in range(4):
            progress.update()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4", "4/4"]
    assert lines[2].startswith("pack: 3/4 img (75%)") and "eta" in lines[2]
    assert re.fullmatch(r"pack: 4/4 img \(100%\)  in \d+\.\d s", lines[-1])


def test_an_interrupted_count_ends_with_how_far_it_got(monkeypatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    out = io.StringIO()
    with pytest.raises(KeyError), Progress(10, "verify", "img", stream=out) as progress:
        progress.update(3)
        raise KeyError
    assert out.getvalue().startswith("verify: 3/10 img (30%)  in ")


def test_on_a_terminal_it_is_a_bar_and_disabled_it_is_silent() -> None:
    term = _Terminal()
    assert list(track(range(5), "embed", "img", enabled=True)) == list(range(5))
    with Progress(5, "embed", "img", stream=term) as progress:
        progress.update(5)
    assert "5/5" in term.getvalue() and "100%" in term.getvalue() and "\r" in term.getvalue()
    quiet = io.StringIO()
    with Progress(5, "embed", "img", enabled=False, stream=quiet) as progress:
        progress.update(5)
    assert quiet.getvalue() == ""


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, INTERVAL_ENV: "0"}  # stderr is a pipe here: the line form, every update
    return subprocess.run(
        [sys.executable, "-m", "partialfc", *args], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=120,
    )  # fmt: skip


def test_pack_reports_every_image_up_to_100_percent(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", identities=4, per_identity=3)
    done = _command("pack", str(images), str(tmp_path / "out"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("pack: ")]
    assert lines[-1].startswith("pack: 12/12 img (100%)  in "), done.stderr
    assert "packed 12 images" in done.stdout and "pack: " not in done.stdout


def test_inspect_verify_on_workers_finds_the_same_problems_in_order(tmp_path: Path) -> None:
    data = make_synth(tmp_path / "synth")
    damage_record(data, 9)
    damage_record(data, 40)
    one = [(p.key, p.message) for p in verify(data)]
    assert [key for key, _ in one] == [9, 40]
    assert [(p.key, p.message) for p in verify(data, workers=2)] == one
    done = _command("inspect", str(data), "--verify", "--workers", "2")
    assert done.returncode == 1
    assert [line.split()[2] for line in done.stdout.splitlines() if line.startswith("BAD")] == [
        "9",
        "40",
    ]
    assert done.stderr.splitlines()[-1].startswith("verify: 72/72 img (100%)  in ")


def test_synth_reports_its_images(tmp_path: Path) -> None:
    done = _command(
        "synth", str(tmp_path / "s"), "--identities", "3", "--images-per-identity", "2",
        "--val-identities", "2", "--val-pairs", "4", "--workers", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "synth train: 6/6 img (100%)  in " in done.stderr
    shutil.rmtree(tmp_path / "s")
