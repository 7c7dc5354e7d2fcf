"""``partialfc pack`` replaces its output folder only with a complete dataset.

A pack that fails (an unreadable image midway, Ctrl-C, SIGTERM) leaves the dataset already in the
output folder byte for byte as it was, and its temporary folder is gone; replacing a dataset
needs ``--overwrite``; what is not packed is counted and (``--verbose``) listed; ``labels.tsv``
maps labels back to identity folders.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from partialfc.cli import main
from tests.unit.data._datasets import write_image_folder

REPO = Path(__file__).resolve().parents[3]


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` and the entries beside it (temporary folders)."""
    files = {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    files["<beside>"] = ",".join(sorted(p.name for p in folder.parent.iterdir()))
    return files


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """A good dataset in ``tmp_path/data/out`` (12 images of 4 identities), packed with the CLI.

    Alone in its parent folder, so that a temporary folder left beside it shows.
    """
    images = write_image_folder(tmp_path / "good", identities=4, per_identity=3)
    out = tmp_path / "data" / "out"
    # default --workers (every CPU): the encoding pool, as users run it
    assert main(["pack", str(images), str(out), "--no-progress"]) == 0
    return out


def _with_corrupt_image(root: Path) -> Path:
    """An image folder whose 8th of 15 images (id02/01.png) is truncated halfway."""
    write_image_folder(root, identities=5, per_identity=3)
    bad = root / "id02" / "01.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


def test_failed_pack_keeps_the_dataset_it_would_replace(packed: Path, tmp_path, capsys) -> None:
    before = _snapshot(packed)
    capsys.readouterr()
    bad = _with_corrupt_image(tmp_path / "corrupt")
    argv = ["pack", str(tmp_path / "corrupt"), str(packed), "--overwrite", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: cannot read image (") and err.count("\n") == 1, err
    assert _snapshot(packed) == before  # same bytes, and no temporary folder left beside it
    assert main(["inspect", str(packed), "--verify", "--no-progress"]) == 0
    assert "images:      12" in capsys.readouterr().out


def test_existing_dataset_needs_overwrite_before_any_work(packed: Path, tmp_path, capsys) -> None:
    before = _snapshot(packed)
    capsys.readouterr()
    _with_corrupt_image(tmp_path / "corrupt")  # never read: the folder is refused first
    assert main(["pack", str(tmp_path / "corrupt"), str(packed), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: {packed}: already holds a dataset (labels.tsv, property, train.idx, "
        "train.rec); pass --overwrite to replace it\n"
    )
    assert _snapshot(packed) == before


def test_overwrite_replaces_the_dataset_and_keeps_other_files(packed: Path, tmp_path) -> None:
    (packed / "lfw.bin").write_bytes(b"the user's verification set")
    images = write_image_folder(tmp_path / "more", identities=6, per_identity=2)
    assert main(["pack", str(images), str(packed), "--overwrite", "--no-progress"]) == 0
    assert (packed / "property").read_text() == "6,48,48"
    assert (packed / "lfw.bin").read_bytes() == b"the user's verification set"
    assert [p.name for p in packed.parent.iterdir()] == ["out"]


def test_folder_that_is_not_a_dataset_is_refused(tmp_path, capsys) -> None:
    images = write_image_folder(tmp_path / "images", identities=2, per_identity=2)
    assert main(["pack", str(images), str(images), "--overwrite", "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: {images}: is not empty (id00, id01) and holds no earlier output of partialfc "
        "pack (labels.tsv, property, train.idx, train.rec); choose a new or empty folder\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_skipped_files_are_counted_and_listed(tmp_path, capsys) -> None:
    images = write_image_folder(tmp_path / "images", identities=3, per_identity=2)
    (images / "id01" / "notes.txt").write_text("not an image")
    (images / "id01" / "crops").mkdir()
    (images / "README").write_text("about this set")
    (images / "id99_empty").mkdir()
    out = tmp_path / "out"
    assert main(["pack", str(images), str(out), "--workers", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out == (
        f"packed 6 images of 3 identities, 48x48, into {out}; skipped 1 non-image file, "
        "1 file outside identity folders, 1 folder inside an identity folder, "
        "1 empty identity folder (--verbose lists them)\n"
    )
    again = ["pack", str(images), str(out), "--overwrite", "--workers", "1", "--no-progress"]
    assert main([*again, "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [
        f"skipped {images / 'README'}: file outside identity folders",
        f"skipped {images / 'id01' / 'crops'}: folder inside an identity folder",
        f"skipped {images / 'id01' / 'notes.txt'}: non-image file",
        f"skipped {images / 'id99_empty'}: empty identity folder",
    ]
    assert lines[-1].endswith("1 empty identity folder")


def test_labels_tsv_maps_labels_to_identity_folders(tmp_path) -> None:
    images = write_image_folder(tmp_path / "images", identities=3, per_identity=2)
    os.rename(images / "id01", images / "Ann\tLee")  # a tab in a name stays on one line
    (images / "id02" / "extra.png").write_bytes((images / "id02" / "00.png").read_bytes())
    out = tmp_path / "out"
    assert main(["pack", str(images), str(out), "--workers", "1", "--no-progress"]) == 0
    assert (out / "labels.tsv").read_text() == (
        "label\tidentity\timages\n0\tAnn\\tLee\t2\n1\tid00\t2\n2\tid02\t3\n"
    )
    from partialfc.data.packer import read_labels

    assert read_labels(out / "labels.tsv") == ["Ann\tLee", "id00", "id02"]


def test_lst_pack_writes_labels_tsv(tmp_path) -> None:
    images = write_image_folder(tmp_path / "images", identities=3, per_identity=2)
    lst = tmp_path / "train.lst"
    lst.write_text("0\t2\tid00/00.png\n1\t0\tid01/00.png\n2\t2\tid00/01.png\n")
    out = tmp_path / "out"
    argv = ["pack", str(lst), str(out), "--root", str(images), "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    # label 1 has no image in the list: no identity folder, 0 images
    assert (out / "labels.tsv").read_text() == (
        "label\tidentity\timages\n0\tid01\t1\n1\t\t0\n2\tid00\t2\n"
    )


def test_lst_with_missing_images_is_refused_before_packing(tmp_path, capsys) -> None:
    images = write_image_folder(tmp_path / "images", identities=1, per_identity=1)
    lst = tmp_path / "train.lst"
    lst.write_text("0\t0\tid00/00.png\n1\t0\tid00/gone.png\n")
    argv = ["pack", str(lst), str(tmp_path / "out"), "--root", str(images), "--no-progress"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: {lst}: 1 listed images not found: {images / 'id00' / 'gone.png'}\n"
    )
    assert not (tmp_path / "out").exists()


def _wait_until_read(fifo: Path, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Opens the write end of ``fifo`` once the packer has opened it for reading; returns it.

    Holding the write end open without writing keeps the packer blocked inside that image: a
    deterministic "midway" at which to press Ctrl-C.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
        time.sleep(0.05)
    raise AssertionError("the packer never reached the image")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_pack_keeps_the_dataset(packed: Path, tmp_path, signum, status) -> None:
    before = _snapshot(packed)
    images = write_image_folder(tmp_path / "new", identities=3, per_identity=4)
    os.mkfifo(images / "id02" / "99.png")
    lst = tmp_path / "new.lst"
    lines = [f"{i}\t{i // 4}\t{p.relative_to(images)}" for i, p in enumerate(_images(images))]
    lst.write_text("\n".join(lines) + "\n")
    argv = ["pack", str(lst), str(packed), "--root", str(images), "--overwrite", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Its own process group with the default dispositions, as an interactive shell runs a
    # foreground job: Ctrl-C reaches every process in it. The suite itself may run with SIGINT
    # ignored (a background job of a non-interactive shell, as `nohup cmd &` starts CI), and an
    # ignored SIGINT stays ignored across exec: Python then installs no KeyboardInterrupt.
    proc = subprocess.Popen(
        [sys.executable, "-m", "partialfc", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_foreground_signals,
    )
    fd = None
    try:
        fd = _wait_until_read(images / "id02" / "99.png", proc)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if fd is not None:
            os.close(fd)
    assert proc.returncode == status, err
    assert err.splitlines()[-1].startswith("partialfc pack: ")
    assert "Traceback" not in err, err
    assert _snapshot(packed) == before


def _foreground_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


def test_leftovers_of_a_killed_pack_are_reported(packed: Path, tmp_path, caplog) -> None:
    # what SIGKILL leaves: the unfinished folder, or the old content if it hit the final swap
    (packed.parent / ".out.partial-k1ll3d").mkdir()
    (packed.parent / ".out.replaced-0ld0").mkdir()
    images = write_image_folder(tmp_path / "more", identities=2, per_identity=2)
    argv = ["pack", str(images), str(packed), "--overwrite", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{packed.parent / '.out.partial-k1ll3d'}: an unfinished output of a killed or running "
        "command; delete it",
        f"{packed.parent / '.out.replaced-0ld0'}: the previous content of {packed}, left by a "
        "command killed while swapping it in; move back what you need and delete it",
    ]
