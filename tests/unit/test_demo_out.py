"""``partialfc demo --out DIR`` deletes only what the demo itself created in DIR.

The demo's arguments and its folder handling run for real (``partialfc demo --out DIR`` through
the CLI); the 8-minute part is cut at its process boundary: the synthetic data set is stubbed and
the torchrun launch is replaced by a fake "run" that writes what the trainer writes (checkpoint
folders, a temporary checkpoint, metrics.jsonl) and then stops the demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import partialfc.commands.demo
import partialfc.data.synth
from partialfc.cli import main


class _Stopped(Exception):
    """Raised by the fake torchrun: the demo stops where training would start."""


@pytest.fixture
def launches(monkeypatch) -> list[list[str]]:
    """Stubs the data set and torchrun; returns, per launch, the --out entries it found."""
    seen: list[list[str]] = []

    def fake_synth(data: Path, *args, **kwargs) -> None:
        data.mkdir(parents=True, exist_ok=True)
        (data / "property").write_text("200,112,112")

    def fake_torchrun(cmd: list[str], **kwargs) -> None:
        out = Path(next(a for a in cmd if a.startswith("--train.output_dir=")).split("=", 1)[1])
        seen.append(sorted(p.name for p in out.iterdir()))
        (out / "step-00000050").mkdir()
        (out / "step-00000050" / "model.distcp").write_bytes(b"demo checkpoint")
        (out / ".step-00000100").mkdir()
        (out / "metrics.jsonl").write_text('{"step": 50}\n')
        raise _Stopped

    monkeypatch.setattr(partialfc.data.synth, "synth_dataset", fake_synth)
    monkeypatch.setattr(partialfc.commands.demo.subprocess, "run", fake_torchrun)
    return seen


def test_user_files_in_out_survive(tmp_path, launches, capsys) -> None:
    out = tmp_path / "results"
    (out / "step-00000001").mkdir(parents=True)
    (out / "step-00000001" / "model.pt").write_bytes(b"the user's checkpoint")
    (out / "metrics.jsonl").write_text("the user's metrics\n")
    assert main(["demo", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: demo --out {out}: the folder is not empty and was not created by partialfc "
        "demo (no .partialfc-demo.json); the demo deletes its previous run's checkpoints and "
        "metrics in its folder, so give it a new or empty one\n"
    )
    assert launches == []  # refused before any work
    assert (out / "step-00000001" / "model.pt").read_bytes() == b"the user's checkpoint"
    assert (out / "metrics.jsonl").read_text() == "the user's metrics\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "step-00000001"]


def test_rerun_deletes_only_what_the_demo_created(tmp_path, launches) -> None:
    out = tmp_path / "demo"
    with pytest.raises(_Stopped):
        main(["demo", "--out", str(out)])
    marker = json.loads((out / ".partialfc-demo.json").read_text())
    assert marker["created"] == [".step-00000100", "metrics.jsonl", "step-00000050"]
    (out / "notes.txt").write_text("the user's notes")  # put into the demo's folder later
    with pytest.raises(_Stopped):
        main(["demo", "--out", str(out)])
    assert launches == [
        [".partialfc-demo.json", "data"],  # a new folder: the demo's data set only
        [".partialfc-demo.json", "data", "notes.txt"],  # the first run's outputs deleted
    ]
    assert (out / "notes.txt").read_text() == "the user's notes"


def test_unrecorded_checkpoint_in_a_demo_folder_is_refused(tmp_path, launches, capsys) -> None:
    out = tmp_path / "demo"
    with pytest.raises(_Stopped):
        main(["demo", "--out", str(out)])
    (out / "step-00000007").mkdir()  # not recorded: say a run killed with SIGKILL, or the user
    assert main(["demo", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: demo --out {out}: holds step-00000007, which no demo run recorded creating (a "
        "run killed outright, or files put there); delete them or give another folder\n"
    )
    assert (out / "step-00000007").is_dir() and len(launches) == 1
