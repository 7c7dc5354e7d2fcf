"""Interop with the real MXNet: it writes, we read; we write, it reads; byte-identical files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from partialfc.data.recordio import MAGIC, IndexedRecordReader, IndexedRecordWriter, pack, unpack
from tests.unit.data._datasets import make_synth

mx = pytest.importorskip("mxnet")

# mxnet 1.9 calls numpy's deprecated tostring() inside its own pack
pytestmark = pytest.mark.filterwarnings("ignore:tostring:DeprecationWarning")

M = struct.pack("<I", MAGIC)


def _records():
    """Plain, multi-label and magic-containing records, as MXNet's own pack builds them."""
    rng = np.random.default_rng(0)
    out = [b"", b"abc", M, b"ab" + M + b"cd" + M, b"wxyz" + M + M + b"tail" + M, M * 5 + b"q"]
    out += [
        mx.recordio.pack(mx.recordio.IRHeader(0, float(i), i, 0), rng.bytes(37 * i))
        for i in range(1, 6)
    ]
    out += [mx.recordio.pack(mx.recordio.IRHeader(0, [1.0, 2.0, 3.0], 9, 1), M + b"image" + M)]
    # a multi-label header whose float32 labels themselves spell the magic word
    out += [mx.recordio.pack(mx.recordio.IRHeader(0, np.frombuffer(M * 2, np.float32), 3, 0), M)]
    return out


def _mx_write(idx, rec, records):
    writer = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    for i, r in enumerate(records):
        writer.write_idx(i, r)
    writer.close()


def test_mxnet_writes_we_read(tmp_path):
    records = _records()
    _mx_write(tmp_path / "m.idx", tmp_path / "m.rec", records)
    with IndexedRecordReader(tmp_path / "m.idx", tmp_path / "m.rec") as reader:
        assert [reader.read_idx(k) for k in reader.keys] == records


def test_we_write_mxnet_reads(tmp_path):
    records = _records()
    with IndexedRecordWriter(tmp_path / "p.idx", tmp_path / "p.rec") as writer:
        for i, r in enumerate(records):
            writer.write_idx(i, r)
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "p.idx"), str(tmp_path / "p.rec"), "r")
    assert [reader.read_idx(i) for i in range(len(records))] == records
    reader.close()


def test_writer_output_is_byte_identical(tmp_path):
    records = _records()
    _mx_write(tmp_path / "m.idx", tmp_path / "m.rec", records)
    with IndexedRecordWriter(tmp_path / "p.idx", tmp_path / "p.rec") as writer:
        for i, r in enumerate(records):
            writer.write_idx(i, r)
    assert M in (tmp_path / "m.rec").read_bytes()[8:]  # the fixture really exercises the split
    assert (tmp_path / "p.rec").read_bytes() == (tmp_path / "m.rec").read_bytes()
    assert (tmp_path / "p.idx").read_text() == (tmp_path / "m.idx").read_text()


@pytest.mark.parametrize("label", [3.0, 0, [1.0, 2.0], np.array([4.0, 5.0, 6.0], np.float32)])
def test_pack_and_unpack_match_mxnet(label):
    payload = b"xx" + M
    header = (7, label, 12, 1)
    ours = pack(header, payload)
    assert ours == mx.recordio.pack(mx.recordio.IRHeader(*header), payload)
    theirs_h, theirs_p = mx.recordio.unpack(ours)
    ours_h, ours_p = unpack(ours)
    assert (ours_h.flag, ours_h.id, ours_h.id2, ours_p) == (
        theirs_h.flag,
        theirs_h.id,
        theirs_h.id2,
        theirs_p,
    )
    np.testing.assert_array_equal(ours_h.label, theirs_h.label)


def test_mxnet_reads_synth_like_arcface_torch(tmp_path):
    """arcface_torch's MXFaceDataset: record 0's label[0] bounds the image keys."""
    root = make_synth(tmp_path / "synth")
    rec = mx.recordio.MXIndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag > 0
    image_keys = range(1, int(header.label[0]))
    assert len(image_keys) == 72
    labels = []
    for key in image_keys:
        h, img = mx.recordio.unpack(rec.read_idx(key))
        labels.append(int(h.label))
        assert mx.image.imdecode(img).shape == (112, 112, 3)
    rec.close()
    assert sorted(np.bincount(labels).tolist()) == [6] * 12
