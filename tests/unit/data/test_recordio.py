"""RecordIO framing, headers and the indexed reader/writer (no MXNet needed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from partialfc.data.recordio import (
    IR_SIZE,
    MAGIC,
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    RecordIOError,
    frame,
    pack,
    pack_img,
    unpack,
    unpack_img,
)

M = struct.pack("<I", MAGIC)

RECORDS = [
    b"",
    b"a",
    b"abcd",
    M,
    b"xx" + M + b"yy",
    b"abcd" + M + b"efgh" + M,
    M + M + b"12345",
    b"z" * 4 + M + M + M + b"q",
    b"ab" + M + M,
    bytes(range(256)) * 3,
]


def write(tmp_path, records):
    with IndexedRecordWriter(tmp_path / "t.idx", tmp_path / "t.rec") as w:
        for i, r in enumerate(records):
            w.write_idx(i, r)
    return tmp_path / "t.idx", tmp_path / "t.rec"


def test_roundtrip_including_magic_words(tmp_path):
    idx, rec = write(tmp_path, RECORDS)
    with IndexedRecordReader(idx, rec) as r:
        assert r.keys == list(range(len(RECORDS)))
        assert [r.read_idx(k) for k in r.keys] == RECORDS
        assert [k for k, _ in r] == r.keys


def test_frame_layout():
    # unsplit: magic, length with cflag 0, payload, zero padding to 4 bytes
    assert frame(b"abcde") == M + struct.pack("<I", 5) + b"abcde" + b"\0\0\0"
    # an aligned magic word splits the record: cflag 1 then 3, the magic itself is dropped
    assert frame(b"abcd" + M + b"ef") == (
        M
        + struct.pack("<I", (1 << 29) | 4)
        + b"abcd"
        + M
        + struct.pack("<I", (3 << 29) | 2)
        + b"ef\0\0"
    )
    # an unaligned one does not
    assert frame(b"a" + M) == M + struct.pack("<I", 5) + b"a" + M + b"\0\0\0"


def test_frame_rejects_records_of_2_pow_29_bytes():
    class Huge(bytes):
        def __len__(self):
            return 1 << 29

    with pytest.raises(ValueError, match="2\\*\\*29"):
        frame(Huge(b""))


def test_idx_text_format(tmp_path):
    idx, _ = write(tmp_path, [b"abc", b"defgh"])
    assert idx.read_text() == "0\t0\n1\t12\n"


@pytest.mark.parametrize("label", [3.0, 7, np.float32(2.5)])
def test_pack_scalar_label(label):
    record = pack(IRHeader(5, label, 11, 2), b"payload")
    assert len(record) == IR_SIZE + 7
    header, payload = unpack(record)
    assert header == IRHeader(0, float(label), 11, 2)  # flag forced to 0 as in MXNet
    assert payload == b"payload"


def test_pack_multi_label():
    header, payload = unpack(pack((0, [1.5, 2, 3], 4, 0), b"xy"))
    assert header.flag == 3
    np.testing.assert_array_equal(header.label, np.array([1.5, 2, 3], np.float32))
    assert header.label.dtype == np.float32
    assert (header.id, header.id2, payload) == (4, 0, b"xy")


def test_unpack_short_records():
    with pytest.raises(ValueError, match="shorter than the 24-byte header"):
        unpack(b"abc")
    with pytest.raises(ValueError, match="3 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)


def test_pack_img_roundtrip_png():
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    header, out = unpack_img(pack_img((0, 4, 1, 0), img, img_fmt=".png"))
    assert header.label == 4
    np.testing.assert_array_equal(out, img)
    with pytest.raises(ValueError, match="img_fmt"):
        pack_img((0, 4, 1, 0), img, img_fmt=".gif")


def test_missing_files_are_named(tmp_path):
    idx, rec = write(tmp_path, [b"a"])
    with pytest.raises(FileNotFoundError, match=r"index \(\.idx\).*nope\.idx"):
        IndexedRecordReader(tmp_path / "nope.idx", rec)
    with pytest.raises(FileNotFoundError, match=r"record \(\.rec\).*nope\.rec"):
        IndexedRecordReader(idx, tmp_path / "nope.rec")


def test_malformed_idx_line(tmp_path):
    idx, rec = write(tmp_path, [b"a", b"b"])
    idx.write_text("0\t0\nbroken line\n")
    with pytest.raises(RecordIOError, match=r"t\.idx.*line 2"):
        IndexedRecordReader(idx, rec)


def test_unknown_key(tmp_path):
    with IndexedRecordReader(*write(tmp_path, [b"a"])) as r, pytest.raises(KeyError, match="7"):
        r.read_idx(7)


def _corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_bad_magic_names_file_key_offset(tmp_path):
    idx, rec = write(tmp_path, [b"abcd", b"efgh", b"ijkl"])
    _corrupt(rec, 12, b"\xde\xad\xbe\xef")
    with IndexedRecordReader(idx, rec) as r:
        assert r.read_idx(0) == b"abcd"
        with pytest.raises(
            RecordIOError, match=r"t\.rec, key 1, offset 12: bad magic 0xefbeadde"
        ) as e:
            r.read_idx(1)
        assert (e.value.key, e.value.offset) == (1, 12)


def test_truncated_record(tmp_path):
    idx, rec = write(tmp_path, [b"abcd", b"efghijkl"])
    rec.write_bytes(rec.read_bytes()[:-3])
    with (
        IndexedRecordReader(idx, rec) as r,
        pytest.raises(RecordIOError, match=r"key 1.*truncated"),
    ):
        r.read_idx(1)


def test_truncated_frame_header(tmp_path):
    idx, rec = write(tmp_path, [b"abcd", b"efgh"])
    rec.write_bytes(rec.read_bytes()[:15])
    with IndexedRecordReader(idx, rec) as r, pytest.raises(RecordIOError, match="truncated"):
        r.read_idx(1)


def test_bad_continuation_flag(tmp_path):
    idx, rec = write(tmp_path, [b"abcd"])
    _corrupt(rec, 4, struct.pack("<I", (2 << 29) | 4))  # a "middle" part with nothing before it
    with (
        IndexedRecordReader(idx, rec) as r,
        pytest.raises(RecordIOError, match="continuation flag 2"),
    ):
        r.read_idx(0)


def test_offset_past_end(tmp_path):
    idx, rec = write(tmp_path, [b"abcd"])
    idx.write_text("0\t4096\n")
    with IndexedRecordReader(idx, rec) as r, pytest.raises(RecordIOError, match="outside"):
        r.read_idx(0)


def test_read_header_without_payload(tmp_path):
    idx, rec = write(tmp_path, [pack((0, 5.0, 1, 0), b"x" * 100), pack((0, [3, 4], 2, 0), b"")])
    with IndexedRecordReader(idx, rec) as r:
        assert r.read_header(0) == IRHeader(0, 5.0, 1, 0)
        np.testing.assert_array_equal(r.read_header(1).label, [3, 4])


def test_read_header_of_a_record_split_inside_its_header(tmp_path):
    header = IRHeader(0, 1.0, MAGIC, 0)  # the id's low word is the magic, 8 bytes in: split there
    record = pack(header, b"img")
    assert frame(record)[4:8] != struct.pack("<I", len(record))  # really split
    idx, rec = write(tmp_path, [record])
    with IndexedRecordReader(idx, rec) as r:
        assert r.read_header(0) == header and unpack(r.read_idx(0)) == (header, b"img")


def test_reader_pickles_and_reopens(tmp_path):
    import pickle

    idx, rec = write(tmp_path, RECORDS)
    r = IndexedRecordReader(idx, rec)
    assert r.read_idx(3) == RECORDS[3]
    clone = pickle.loads(pickle.dumps(r))
    assert clone._fd is None
    assert clone.read_idx(4) == RECORDS[4]
