"""``partialfc inspect``: the summary and ``--verify`` on intact and corrupted files."""

from __future__ import annotations

import shutil

import pytest

from partialfc.cli import main
from partialfc.data import FaceRecord
from partialfc.data.inspect import summarize, verify
from tests.unit.data._datasets import damage_record, make_synth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"))


@pytest.fixture
def copy(synth, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth, out)
    return out


def _overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_summary(synth, capsys):
    assert main(["inspect", str(synth)]) == 0
    out = capsys.readouterr().out
    assert "images:      72" in out
    assert "identities:  12 (property), 12 with images" in out
    assert "image size:  112x112" in out
    assert "min 6, median 6, mean 6.0, max 6" in out
    assert "6-10: 12" in out  # histogram: all 12 identities have 6 images
    summary = summarize(synth)
    assert summary.counts.tolist() == [6] * 12 and summary.histogram() == [("6-10", 12)]


def test_verify_ok(synth, capsys):
    assert main(["inspect", str(synth), "--verify", "--no-progress"]) == 0
    assert "verify: all records OK" in capsys.readouterr().out


def test_verify_reports_bad_magic_by_key_and_offset(copy, capsys):
    offset = FaceRecord(copy).reader.idx[5]
    _overwrite(copy / "train.rec", offset, b"\0\0\0\0")
    assert main(["inspect", str(copy), "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"BAD key 5 at offset {offset}:" in out and "bad magic" in out
    assert "verify: 1 bad record(s)" in out


def test_verify_reports_undecodable_image(copy):
    rec = FaceRecord(copy)
    offset = rec.reader.idx[7]
    # the JPEG's first bytes sit after the 8-byte frame header and the 24-byte image header
    _overwrite(copy / "train.rec", offset + 8 + 24, b"garbage!")
    problems = list(verify(copy))
    assert [(p.key, p.offset) for p in problems] == [(7, offset)]
    assert "does not decode" in problems[0].message


def test_verify_reports_a_damaged_jpeg_pillow_would_decode(copy):
    damage = damage_record(copy, 9)
    problems = list(verify(copy))
    assert [p.key for p in problems] == [9]
    assert problems[0].message.endswith(f"key 9: damaged JPEG ({damage})")


def test_verify_reports_truncated_file(copy, capsys):
    rec_path = copy / "train.rec"
    last = FaceRecord(copy).reader.idx[72]
    rec_path.write_bytes(rec_path.read_bytes()[: last + 100])
    assert main(["inspect", str(copy), "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"BAD key 72 at offset {last}" in out and "truncated" in out


def test_verify_reports_label_out_of_range(copy, capsys):
    (copy / "property").write_text("3,112,112")  # fewer classes than the labels use
    assert main(["inspect", str(copy), "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "summary unavailable" in out and "is not a class in [0, 3)" in out


def test_verify_reports_wrong_image_size(copy):
    (copy / "property").write_text("12,96,112")
    problems = list(verify(copy))
    assert len(problems) == 72 and "image is 112x112 but" in problems[0].message


def test_missing_index_is_named(copy, capsys):
    (copy / "train.idx").unlink()
    assert main(["inspect", str(copy)]) == 2  # a user error: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: RecordIO index (.idx) file not found:") and "train.idx" in err
