"""NIST's 1:N protocol CSVs: read by header name, located under meta/ or protocols/, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partialfc.errors import UserFileError
from partialfc.eval.ijb import IJBError
from partialfc.eval.ijb_1n_meta import protocol_files_1n, read_1n_meta, read_template_subjects

# IJB-C's own header (abridged): the two columns we read are not the only ones.
HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(f"{r}\n" for r in rows))
    return path


def test_templates_and_subjects_one_per_template(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "g.csv",
        ["7,70,img/1.jpg,1,0,0,9,9", "3,30,img/2.jpg,2,0,0,9,9", "7,70,frames/5.png,3,1,1,8,8"],
    )
    read = read_template_subjects(path)
    assert read.templates.tolist() == [3, 7] and read.subjects.tolist() == [30, 70]


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.csv", ["7,70,img/1.jpg"], "\ufeff" + HEADER)
    assert read_template_subjects(path).templates.tolist() == [7]


def test_columns_are_found_by_name(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "g.csv",
        ["img/1.jpg,70,7", "img/2.jpg,30,3"],
        "FILENAME,subject_id,TEMPLATE_ID\n",
    )
    read = read_template_subjects(path)
    assert read.templates.tolist() == [3, 7] and read.subjects.tolist() == [30, 70]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("TEMPLATE,SUBJECT\n", ["1,2"], "must name TEMPLATE_ID and SUBJECT_ID"),
        (HEADER, ["1,x,img/1.jpg"], r"g.csv:2: TEMPLATE_ID and SUBJECT_ID must be integers"),
        (HEADER, [], "no template rows"),
        (HEADER, ["5,1,a", "5,2,b", "6,3,c"], r"listed under two subjects, e.g. \[5\]"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, header, rows, message) -> None:
    path = _write(tmp_path / "g.csv", rows, header)
    with pytest.raises(IJBError, match=message):
        read_template_subjects(path)


def _protocol(folder: Path, probes: list[str]) -> None:
    _write(folder / "ijbc_1N_gallery_G1.csv", ["1,10,a"])
    _write(folder / "ijbc_1N_gallery_G2.csv", ["2,20,b"])
    _write(folder / "ijbc_1N_probe_mixed.csv", probes)


def test_found_in_meta_then_protocols(tmp_path: Path) -> None:
    assert protocol_files_1n(tmp_path, "IJBC")["probes"].parent == tmp_path / "meta"
    _protocol(tmp_path / "protocols", ["3,10,c", "4,20,d"])
    files = protocol_files_1n(tmp_path, "IJBC")
    assert files["G1"] == tmp_path / "protocols" / "ijbc_1N_gallery_G1.csv"
    meta = read_1n_meta(tmp_path, "IJBC", np.arange(1, 5))
    assert list(meta.galleries) == ["G1", "G2"]
    assert meta.probes.templates.tolist() == [3, 4] and meta.probes.subjects.tolist() == [10, 20]
    assert list(protocol_files_1n(tmp_path, "IJBB")) == ["S1", "S2", "probes"]


def test_missing_files_and_templates_without_images(tmp_path: Path) -> None:
    with pytest.raises(UserFileError, match=r"ijbc_1N_gallery_G1.csv: no such IJB 1:N protocol"):
        read_1n_meta(tmp_path, "IJBC", np.arange(1, 5))
    _protocol(tmp_path / "meta", ["3,10,c", "9,20,d"])
    with pytest.raises(IJBError, match=r"probe_mixed.csv: 1 templates have no image in faces.txt"):
        read_1n_meta(tmp_path, "IJBC", np.arange(1, 5), faces_file="faces.txt")
    # An explicit folder is used as it is.
    other = tmp_path / "elsewhere"
    _protocol(other, ["3,10,c"])
    assert (
        read_1n_meta(tmp_path, "IJBC", np.arange(1, 5), directory=other).files["G2"].parent == other
    )
