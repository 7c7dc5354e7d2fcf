"""insightface verification .bin: a pickle of (encoded images, issame)."""

from __future__ import annotations

import pickle

import pytest

from partialfc.data import read_bin, write_bin


def test_roundtrip_and_format(tmp_path):
    path = tmp_path / "v.bin"
    write_bin(path, [b"a", b"b", b"c", b"d"], [True, False])
    assert read_bin(path) == ([b"a", b"b", b"c", b"d"], [True, False])
    # what insightface's loader does with it
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    assert bins == [b"a", b"b", b"c", b"d"] and issame == [True, False]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="two images per pair"):
        write_bin(tmp_path / "v.bin", [b"a"], [True])
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        read_bin(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.bin: not a verification \.bin"):
        read_bin(tmp_path / "junk.bin")
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump(([b"a", b"b", b"c"], [True, False]), f)
    with pytest.raises(ValueError, match=r"odd\.bin: 3 images for 2 pairs"):
        read_bin(tmp_path / "odd.bin")
