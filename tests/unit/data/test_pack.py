"""``partialfc pack``: folder and .lst input, determinism, options, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from partialfc.cli import main
from partialfc.data import FaceRecord, RecordDataset
from partialfc.data.packer import (
    EncodeOptions,
    PackError,
    encode_file,
    list_image_folder,
    pack_images,
    read_lst,
)
from tests.unit.data._datasets import write_image_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), identities=4, per_identity=3)


def _files(d):
    return {name: (d / name).read_bytes() for name in ("train.rec", "train.idx", "property")}


def test_folder_labels_and_order(images):
    paths, labels, num_classes = list_image_folder(images)
    assert num_classes == 4 and labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [p.parent.name for p in paths[:4]] == ["id00", "id00", "id00", "id01"]


def test_cli_pack_writes_the_layout(images, tmp_path, capsys):
    assert (
        main(["pack", str(images), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    )
    assert "packed 12 images of 4 identities, 48x48" in capsys.readouterr().out
    assert (tmp_path / "out" / "property").read_text() == "4,48,48"
    ds = RecordDataset(tmp_path / "out")
    assert len(ds) == 12 and ds.num_classes == 4
    got = sorted(int(ds[i][1]) for i in range(12))
    assert got == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_same_seed_same_bytes_any_worker_count(images, tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    assert (
        main(["pack", str(images), str(a), "--seed", "3", "--workers", "1", "--no-progress"]) == 0
    )
    assert (
        main(["pack", str(images), str(b), "--seed", "3", "--workers", "2", "--no-progress"]) == 0
    )
    assert (
        main(["pack", str(images), str(c), "--seed", "4", "--workers", "2", "--no-progress"]) == 0
    )
    assert _files(a) == _files(b)
    assert _files(a)["train.rec"] != _files(c)["train.rec"]  # another seed, another order


def test_no_shuffle_groups_by_identity(images, tmp_path):
    main(["pack", str(images), str(tmp_path), "--no-shuffle", "--workers", "1", "--no-progress"])
    rec = FaceRecord(tmp_path)
    np.testing.assert_array_equal(rec.labels(), np.repeat(np.arange(4), 3))
    assert rec.identity_keys.size == 4


def test_png_is_lossless_and_resize(images, tmp_path):
    main(
        [
            "pack",
            str(images),
            str(tmp_path / "p"),
            "--format",
            "png",
            "--no-shuffle",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    first = np.asarray(Image.open(images / "id00" / "00.png").convert("RGB"))
    np.testing.assert_array_equal(RecordDataset(tmp_path / "p").load(0)[0], first)
    main(
        [
            "pack",
            str(images),
            str(tmp_path / "r"),
            "--resize",
            "20x16",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert (tmp_path / "r" / "property").read_text() == "4,20,16"
    assert RecordDataset(tmp_path / "r").load(0)[0].shape == (20, 16, 3)


def test_pass_through_keeps_file_bytes(images, tmp_path):
    paths, labels, n = list_image_folder(images)
    pack_images(
        paths[:2],
        labels[:2],
        n,
        tmp_path,
        EncodeOptions(pass_through=True),
        shuffle=False,
        workers=1,
        progress=False,
    )
    rec = FaceRecord(tmp_path)
    assert rec.read_image_record(1)[1] == paths[0].read_bytes()


def test_lst_input(images, tmp_path):
    lst = tmp_path / "train.lst"
    lst.write_text("0\t2\tid02/00.png\n1\t0\tid00/01.png\n2\t2.0\tid02/01.png\n")
    _, labels, num_classes = read_lst(lst, images)
    assert labels == [2, 0, 2] and num_classes == 3
    assert (
        main(
            [
                "pack",
                str(lst),
                str(tmp_path / "out"),
                "--root",
                str(images),
                "--no-shuffle",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(FaceRecord(tmp_path / "out").labels(), [2, 0, 2])


@pytest.mark.parametrize("line", ["0\t1\n", "0\tx\ta.png\n", "0\t1.5\ta.png\n", "0\t1\t2\ta.png\n"])
def test_bad_lst_line_is_named(tmp_path, line):
    lst = tmp_path / "bad.lst"
    lst.write_text("0\t0\ta.png\n" + line)
    with pytest.raises(ValueError, match=r"bad\.lst, line 2"):
        read_lst(lst)


def test_mixed_sizes_need_resize(images, tmp_path, capsys):
    odd = tmp_path / "src"
    (odd / "a").mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(odd / "a" / "0.png")
    Image.new("RGB", (12, 10)).save(odd / "a" / "1.png")
    argv = ["pack", str(odd), str(tmp_path / "o"), "--no-shuffle", "--workers", "1"]
    assert main([*argv, "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: {odd / 'a' / '1.png'}: image is 10x12 but earlier images are 10x10; "
        "pass --resize HxW to pack images of different sizes\n"
    )
    assert not (tmp_path / "o").exists()


def test_unreadable_image_is_named(tmp_path, capsys):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    (src / "broken.jpg").write_bytes(b"not an image")
    argv = ["pack", str(tmp_path / "src"), str(tmp_path / "o"), "--workers", "2", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {src / 'broken.jpg'}: cannot read image (") and err.count("\n") == 1
    )
    with pytest.raises(PackError, match=r"broken\.jpg: cannot read image"):
        encode_file(src / "broken.jpg", EncodeOptions())


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_image_folder(tmp_path / "none")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        list_image_folder(tmp_path / "empty")


def test_options_are_validated():
    with pytest.raises(ValueError, match="quality"):
        EncodeOptions(quality=0)
    with pytest.raises(ValueError, match="pass_through cannot be combined with resize"):
        EncodeOptions(pass_through=True, resize=(4, 4))


def test_public_pack_is_the_recordio_function():
    import partialfc.data
    import partialfc.data.packer  # a submodule must not shadow the function

    assert partialfc.data.pack is partialfc.data.recordio.pack
