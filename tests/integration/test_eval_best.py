"""The best verification accuracy so far is the whole run's: a resumed run continues it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration._service import demo_overrides, error_lines, make_dataset, train


def _eval_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval/val" in r]


def test_a_resumed_run_continues_the_best_accuracy_so_far(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    every = ("--eval.every=2", "--train.checkpoint_every=2")
    first = train(*demo_overrides(data, out, "--train.max_steps=2", *every))
    assert first.returncode == 0, first.stderr[-3000:]
    saved = out / "step-00000002" / "eval-best.json"
    (record,) = _eval_records(out)[:1]
    assert json.loads(saved.read_text()) == {"val": record["eval/val/best"]}

    # Above anything this model reaches: only the checkpoint can bring it into the resumed run.
    saved.write_text(json.dumps({"val": 0.999}))
    second = train(*demo_overrides(data, out, "--train.max_steps=4", *every))
    assert second.returncode == 0, second.stderr[-3000:]
    last = _eval_records(out)[-1]
    assert last["step"] == 4 and last["eval/val"] < 0.999
    assert last["eval/val/best"] == 0.999

    saved.write_text("[not a record")  # a damaged file is one line naming it
    (out / "step-00000004").rename(out / "later")
    third = train(*demo_overrides(data, out, "--train.max_steps=4", *every))
    assert third.returncode == 2, third.stderr[-3000:]
    (line,) = error_lines(third.stderr)
    assert line.startswith(f"error: {saved}: not a record of the best evaluation results")
