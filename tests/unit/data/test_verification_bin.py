"""insightface verification .bin: a pickle of (encoded images, issame)."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from partialfc.data import DatasetError, read_bin, write_bin
from partialfc.eval import load_pair_set


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


# --------------------------------------------------------------------------- restricted loading


class _RunsCode:
    """What a crafted .bin holds: unpickling calls ``func(*args)``."""

    def __init__(self, func: object, *args: object) -> None:
        self.reduced = (func, args)

    def __reduce__(self) -> tuple:
        return self.reduced


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "protocol 2"])
def test_crafted_bin_is_refused_and_runs_nothing(tmp_path, how) -> None:
    marker = tmp_path / "marker"
    if how == "builtins.eval":
        payload, refused = _RunsCode(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"
    else:
        payload, refused = (
            _RunsCode(os.system, f"touch '{marker}'"),
            f"{os.system.__module__}.system",
        )
    path = tmp_path / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump(([payload, b"jpeg"], [True]), f, protocol=2 if how == "protocol 2" else 4)
    with pytest.raises(DatasetError) as caught:
        read_bin(path)
    assert str(caught.value) == (
        f"{path}: refused to load {refused}: a verification .bin holds only encoded images "
        "(bytes or numpy uint8 arrays) and bools, and a pickle naming anything else could run "
        "code; do not use this file"
    )
    with pytest.raises(DatasetError, match="refused to load"):
        load_pair_set(path)  # what training's evaluation, `partialfc eval` and preflight call
    assert not marker.exists()
    with open(path, "rb") as f:
        pickle.load(f, encoding="bytes")  # insightface's loader: the file does run code
    assert marker.exists()


def test_pickle_chosen_allocation_is_refused(tmp_path) -> None:
    # numpy itself writes _reconstruct(ndarray, (0,), ...); a huge shape would allocate it
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    reconstruct = core.multiarray._reconstruct
    path = tmp_path / "big.bin"
    path.write_bytes(pickle.dumps(([_RunsCode(reconstruct, np.ndarray, (1 << 40,), b"b")], [])))
    with pytest.raises(DatasetError, match=r"big\.bin: not a verification \.bin pickle"):
        read_bin(path)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes, as insightface's Python 2 tools did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _jpegs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), (40 * i, 90, 200 - 30 * i)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def _cv2_imencode(jpeg: bytes) -> np.ndarray:
    return np.frombuffer(jpeg, dtype=np.uint8).reshape(-1, 1)  # cv2.imencode's (n, 1) array


@pytest.mark.parametrize("writer", ["lfw2pack.py", "cfp2pack.py"])
def test_insightface_python2_files_load(tmp_path, writer) -> None:
    """lfw2pack stores the JPEG files' bytes; agedb2pack2/cfp2pack store cv2.imencode arrays."""
    jpegs = _jpegs(4)
    images = jpegs if writer == "lfw2pack.py" else [_cv2_imencode(j) for j in jpegs]
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump((images, [True, False]))  # their HIGHEST_PROTOCOL
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(buf.getvalue())
    assert read_bin(path) == (jpegs, [True, False])
    decoded, issame = load_pair_set(path)
    assert tuple(decoded.shape) == (4, 3, 112, 112) and issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_arrays_bytes_and_numpy_bools_load(tmp_path, protocol) -> None:
    jpegs = _jpegs(4)
    images = [jpegs[0], _cv2_imencode(jpegs[1]), jpegs[2], _cv2_imencode(jpegs[3])]
    issame = [np.bool_(True), False]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((images, issame), protocol=protocol))
    assert read_bin(path) == (jpegs, [True, False])


def test_other_content_is_named(tmp_path) -> None:
    path = tmp_path / "v.bin"
    path.write_bytes(pickle.dumps(([np.zeros(3, np.float32), b"b"], [True])))
    with pytest.raises(DatasetError, match=r"v\.bin: image 0 is a float32, expected encoded bytes"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], ["yes"])))
    with pytest.raises(DatasetError, match=r"v\.bin: issame\[0\] is 'yes', expected a bool"):
        read_bin(path)
