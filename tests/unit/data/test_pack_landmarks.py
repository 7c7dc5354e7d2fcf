"""``partialfc pack --landmarks``: unaligned photos are stored as their ArcFace crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

from partialfc.cli import main
from partialfc.data import RecordDataset
from partialfc.data.align import ARCFACE_TEMPLATE, norm_crop, warp_affine

_ARGS = ["--format", "png", "--no-shuffle", "--workers", "1", "--no-progress"]


def _photos(root):
    """Two identities of two 200x200 photos, each a random 112 pattern placed by a similarity."""
    rng = np.random.default_rng(0)
    lines, crops = [], []
    for identity in range(2):
        (root / f"id{identity}").mkdir(parents=True)
        for k in range(2):
            crop = np.kron(rng.integers(0, 256, (14, 14, 3)), np.ones((8, 8, 1))).astype(np.uint8)
            angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(1.2, 1.6)
            c, s = scale * np.cos(angle), scale * np.sin(angle)
            placement = np.array([[c, -s, 30.0], [s, c, 10.0]])
            photo = warp_affine(crop, placement, (200, 200))
            name = f"id{identity}/{k}.png"
            Image.fromarray(photo).save(root / name)
            points = np.round(ARCFACE_TEMPLATE @ placement[:, :2].T + placement[:, 2], 4)
            lines.append(f"{name} {' '.join(f'{v:.4f}' for v in points.ravel())} 0.99")
            crops.append((crop, norm_crop(photo, points)))
    return lines, crops


def test_pack_aligns_by_landmarks(tmp_path, capsys):
    lines, crops = _photos(tmp_path / "photos")
    (tmp_path / "lmk.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["pack", str(tmp_path / "photos"), str(out), "--landmarks", str(tmp_path / "lmk.txt")]
    assert main(argv + _ARGS) == 0
    assert (out / "property").read_text() == "2,112,112"
    ds = RecordDataset(out)
    for i, (original, aligned) in enumerate(crops):
        stored = ds.load(i)[0]
        np.testing.assert_array_equal(stored, aligned)  # PNG: exactly norm_crop's output
        diff = np.abs(stored[8:104, 8:104].astype(int) - original[8:104, 8:104].astype(int))
        assert np.median(diff) <= 2, "the crop is the pattern the photo was made from"


def test_pack_names_images_without_landmarks(tmp_path, capsys):
    lines, _ = _photos(tmp_path / "photos")
    (tmp_path / "lmk.txt").write_text("\n".join(lines[:-1]) + "\n")
    argv = [
        "pack",
        str(tmp_path / "photos"),
        str(tmp_path / "o"),
        "--landmarks",
        str(tmp_path / "lmk.txt"),
    ]
    assert main(argv + _ARGS) == 2
    assert "1 images have no landmarks" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("id0/0.png 1 2 3\n")
    argv[-1] = str(tmp_path / "bad.txt")
    assert main(argv + _ARGS) == 2
    assert "bad.txt:1: expected 'PATH x1 y1 ... x5 y5 [score]'" in capsys.readouterr().err
