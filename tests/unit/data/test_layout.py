"""insightface layout: property, record 0, identity records and the errors users can cause."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc.data import DatasetError, FaceRecord, Property, RecordDataset, unpack
from partialfc.data.images import encode_image
from partialfc.data.layout import write_dataset, write_records


def _payloads(n, size=(8, 8)):
    rng = np.random.default_rng(0)
    return [
        encode_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8), ".png") for _ in range(n)
    ]


def test_record0_and_identity_records_when_grouped(tmp_path):
    labels = [0, 0, 1, 2, 2, 2]
    write_dataset(tmp_path, _payloads(6), labels, Property(3, 8, 8))
    rec = FaceRecord(tmp_path)
    header, payload = unpack(rec.reader.read_idx(0))
    assert header.flag == 2 and payload == b""
    np.testing.assert_array_equal(header.label, [7, 10])  # one past last image, last identity
    np.testing.assert_array_equal(rec.image_keys, np.arange(1, 7))
    np.testing.assert_array_equal(rec.identity_keys, [7, 8, 9])
    ranges = [unpack(rec.reader.read_idx(k))[0].label.tolist() for k in rec.identity_keys]
    assert ranges == [[1, 3], [3, 4], [4, 7]]  # [start, end) image keys of classes 0, 1, 2
    np.testing.assert_array_equal(rec.labels(), labels)
    assert (tmp_path / "property").read_text() == "3,8,8"


def test_no_identity_records_when_not_grouped(tmp_path):
    write_dataset(tmp_path, _payloads(4), [1, 0, 1, 0], Property(2, 8, 8))
    rec = FaceRecord(tmp_path)
    np.testing.assert_array_equal(unpack(rec.reader.read_idx(0))[0].label, [5, 5])
    assert rec.identity_keys.size == 0 and len(rec) == 4


def test_plain_im2rec_file_without_header_uses_every_key(tmp_path):
    from partialfc.data import IndexedRecordWriter, pack

    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:
        for key, payload in zip([0, 1, 2], _payloads(3), strict=True):
            w.write_idx(key, pack((0, float(key), key, 0), payload))
    Property(3, 8, 8).write(tmp_path / "property")
    np.testing.assert_array_equal(FaceRecord(tmp_path).image_keys, [0, 1, 2])


def test_missing_files(tmp_path):
    write_dataset(tmp_path, _payloads(2), [0, 1], Property(2, 8, 8))
    (tmp_path / "property").unlink()
    with pytest.raises(FileNotFoundError, match=r"property file not found.*property"):
        FaceRecord(tmp_path)
    Property(2, 8, 8).write(tmp_path / "property")
    (tmp_path / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"\.idx.*train\.idx"):
        FaceRecord(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\.rec.*nothere"):
        FaceRecord(tmp_path / "nothere")


@pytest.mark.parametrize("text", ["", "3,8", "a,b,c", "3,0,8"])
def test_bad_property(tmp_path, text):
    (tmp_path / "property").write_text(text)
    with pytest.raises(DatasetError, match=r"property.*num_classes,H,W"):
        Property.read(tmp_path / "property")


def test_label_out_of_range_names_file_and_key(tmp_path):
    write_records(tmp_path, _payloads(3), [0, 5, 1], 6)
    Property(4, 8, 8).write(tmp_path / "property")  # claims 4 classes; key 2 has label 5
    rec = FaceRecord(tmp_path)
    assert rec.read_image_record(1)[0] == 0
    with pytest.raises(
        DatasetError, match=r"train\.rec, key 2: label 5 is not a class in \[0, 4\)"
    ):
        rec.read_image_record(2)
    with pytest.raises(DatasetError, match="key 2"):
        rec.labels()
    with pytest.raises(DatasetError, match="key 2"):
        RecordDataset(tmp_path)[1]


def test_image_size_differs_from_property(tmp_path):
    write_dataset(tmp_path, _payloads(2, size=(8, 6)), [0, 1], Property(2, 8, 8))
    with pytest.raises(
        DatasetError, match=r"train\.rec, key 1: image is 8x6 but .*property says 8x8"
    ):
        RecordDataset(tmp_path)[0]


def test_record0_pointing_past_the_index(tmp_path):
    from partialfc.data import IndexedRecordWriter, IRHeader, pack

    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:
        w.write_idx(0, pack(IRHeader(2, [10, 10], 0, 0), b""))
        w.write_idx(1, pack((0, 0.0, 1, 0), _payloads(1)[0]))
    Property(1, 8, 8).write(tmp_path / "property")
    with pytest.raises(DatasetError, match="key 9 is not in the index"):
        FaceRecord(tmp_path)


def test_write_records_checks_labels(tmp_path):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        write_records(tmp_path, _payloads(2), [0, 2], 2)
    with pytest.raises(ValueError, match="got 1 images for 2 labels"):
        write_records(tmp_path, _payloads(1), [0, 1], 2)
