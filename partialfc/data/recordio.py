"""MXNet RecordIO (``.rec`` + ``.idx``) without MXNet.

Names follow ``mxnet.recordio`` so that migrating code reads the same: :class:`IRHeader`,
:func:`pack`, :func:`unpack`, :func:`pack_img`, :func:`unpack_img`, and the indexed reader and
writer. The writer's output is byte-identical to ``mx.recordio.MXIndexedRecordIO`` for the same
records (the interop tests check this against the real MXNet).

Framing of one record (dmlc-core ``RecordIOWriter``)::

    uint32 magic 0xced7230a | uint32 lrecord (cflag << 29 | length) | payload | zero pad to 4 bytes

A payload that contains the magic word at a 4-byte aligned offset is split there: the magic is
dropped and the parts are written as consecutive frames with cflag 1 (first), 2 (middle) and
3 (last); a reader joins them with the magic word re-inserted. An unsplit record has cflag 0.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from partialfc.data.images import decode_image, encode_image
from partialfc.errors import UserError, UserFileError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
MAX_RECORD_BYTES = 1 << _LENGTH_BITS

# MXNet packs the header with struct format "IfQQ" in native byte order; every platform MXNet
# and DALI run on is little-endian, and native alignment gives the same 24 bytes as "<IfQQ".
_IR_FORMAT = struct.Struct("<IfQQ")
IR_SIZE = _IR_FORMAT.size


class RecordIOError(UserError, ValueError):
    """A ``.rec`` or ``.idx`` file is malformed: bad magic, truncated or corrupt record.

    Attributes:
        path: the file at fault.
        key: the record key, when known.
        offset: the byte offset of the record in ``path``, when known.
    """

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str],
        key: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = [str(path)]
        if key is not None:
            where.append(f"key {key}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.path = str(path)
        self.key = key
        self.offset = offset


class IRHeader(NamedTuple):
    """Header of an image record, as ``mxnet.recordio.IRHeader``.

    Attributes:
        flag: 0 for a single float label; otherwise the number of float32 labels that follow the
            header (then ``label`` holds them as an array after :func:`unpack`).
        label: a number, or an array of float32 labels.
        id: usually the record's key.
        id2: high bits of the id, normally 0.
    """

    flag: int
    label: Any
    id: int
    id2: int


def pack(header: IRHeader | Sequence[Any], payload: bytes) -> bytes:
    """Packs a header and a payload into one record, exactly as ``mxnet.recordio.pack``.

    A numeric ``label`` gives ``flag = 0``; an array-like label gives ``flag = label.size`` and the
    labels are stored as float32 after the header (the header's own label field is then 0).

    Args:
        header: an :class:`IRHeader` or a 4-tuple ``(flag, label, id, id2)``.
        payload: the bytes after the header, typically an encoded image.

    Returns:
        The record bytes.
    """
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        head = _IR_FORMAT.pack(0, float(header.label), int(header.id), int(header.id2))
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype=np.float32).ravel()
    head = _IR_FORMAT.pack(labels.size, 0.0, int(header.id), int(header.id2))
    return head + labels.astype("<f4").tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Splits a record into its header and payload, exactly as ``mxnet.recordio.unpack``.

    Args:
        record: bytes of one record.

    Returns:
        ``(header, payload)``; when ``header.flag > 0`` ``header.label`` is a float32 array of
        ``flag`` labels.

    Raises:
        ValueError: the record is shorter than its header says.
    """
    if len(record) < IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte header")
    header = IRHeader(*_IR_FORMAT.unpack_from(record))
    payload = record[IR_SIZE:]
    if header.flag > 0:
        nbytes = 4 * header.flag
        if len(payload) < nbytes:
            raise ValueError(
                f"header says {header.flag} labels ({nbytes} bytes) but only {len(payload)} "
                "bytes follow it"
            )
        labels = np.frombuffer(payload, dtype="<f4", count=header.flag).astype(np.float32)
        header = header._replace(label=labels)
        payload = payload[nbytes:]
    return header, payload


def pack_img(
    header: IRHeader | Sequence[Any], img: np.ndarray, quality: int = 95, img_fmt: str = ".jpg"
) -> bytes:
    """Encodes an RGB (or grayscale) image with Pillow and packs it with ``header``.

    Unlike MXNet's OpenCV version the array is RGB, not BGR.

    Args:
        header: the record header.
        img: uint8 array, HxWx3 RGB or HxW grayscale.
        quality: JPEG quality 1..100 (ignored for PNG).
        img_fmt: ``".jpg"`` or ``".png"``.

    Returns:
        The record bytes.
    """
    return pack(header, encode_image(img, img_fmt, quality))


def unpack_img(record: bytes) -> tuple[IRHeader, np.ndarray]:
    """Unpacks a record and decodes its image with Pillow to an HxWx3 RGB uint8 array."""
    header, payload = unpack(record)
    return header, decode_image(payload)


def frame(record: bytes) -> bytes:
    """Returns the on-disk bytes of one record, split at aligned magic words as dmlc-core does."""
    n = len(record)
    if n >= MAX_RECORD_BYTES:
        raise ValueError(f"a RecordIO record must be shorter than 2**29 bytes, got {n}")
    out = bytearray()
    start = 0  # first byte of the current part
    pos = record.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:  # dmlc-core only looks at 4-byte aligned words
            out += _FRAME.pack(MAGIC, ((1 if start == 0 else 2) << _LENGTH_BITS) | (pos - start))
            out += record[start:pos]
            start = pos + 4
            pos = record.find(_MAGIC_BYTES, start)
        else:
            pos = record.find(_MAGIC_BYTES, pos + 1)
    out += _FRAME.pack(MAGIC, ((3 if start else 0) << _LENGTH_BITS) | (n - start))
    out += record[start:]
    out += bytes(-n % 4)
    return bytes(out)


def read_framed(read_at: Any, path: str, offset: int, key: int | None = None) -> tuple[bytes, int]:
    """Reads one (possibly multi-part) record starting at ``offset``.

    Args:
        read_at: callable ``(size, offset) -> bytes`` (e.g. ``os.pread`` bound to a descriptor).
        path: the ``.rec`` path, for error messages.
        offset: byte offset of the record's first frame.
        key: the record's key, for error messages.

    Returns:
        ``(record, next_offset)``: the joined payload and the offset just past its last frame.

    Raises:
        RecordIOError: bad magic, an invalid continuation flag or a truncated record.
    """
    parts: list[bytes] = []
    pos = offset
    while True:
        head = read_at(_FRAME.size, pos)
        if len(head) != _FRAME.size:
            raise RecordIOError(
                f"truncated record: frame header at byte {pos} has {len(head)} of "
                f"{_FRAME.size} bytes",
                path,
                key,
                offset,
            )
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(
                f"bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})", path, key, offset
            )
        cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        if cflag > 3 or (cflag in (0, 1)) != (not parts):
            raise RecordIOError(
                f"corrupt record: continuation flag {cflag} at byte {pos} "
                f"{'after' if parts else 'at the start of'} a record",
                path,
                key,
                offset,
            )
        body = read_at(length, pos + _FRAME.size)
        if len(body) != length:
            raise RecordIOError(
                f"truncated record: payload at byte {pos + _FRAME.size} has {len(body)} of "
                f"{length} bytes",
                path,
                key,
                offset,
            )
        parts.append(body)
        pos += _FRAME.size + length + (-length % 4)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts), pos


class IndexedRecordReader:
    """Random access to an indexed RecordIO file, as ``MXIndexedRecordIO(idx, rec, 'r')``.

    Safe to use from forked DataLoader workers: reads are positional (``os.pread``) and the file
    is re-opened in each process, so processes never share a file offset.

    Args:
        idx_path: the ``.idx`` text file (``key\\toffset`` per line).
        rec_path: the ``.rec`` file.

    Raises:
        FileNotFoundError: either file is missing (the message names it).
        RecordIOError: a malformed ``.idx`` line (file and line number in the message).
    """

    def __init__(self, idx_path: str | os.PathLike[str], rec_path: str | os.PathLike[str]) -> None:
        self.idx_path = os.fspath(idx_path)
        self.rec_path = os.fspath(rec_path)
        for path, what in ((self.idx_path, "index (.idx)"), (self.rec_path, "record (.rec)")):
            if not os.path.isfile(path):
                raise UserFileError(f"RecordIO {what} file not found: {path}")
        self.idx: dict[int, int] = {}
        self.keys: list[int] = []
        with open(self.idx_path, encoding="ascii", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                try:
                    key, offset = int(fields[0]), int(fields[1])
                except (ValueError, IndexError):
                    raise RecordIOError(
                        f"line {lineno} is not 'key<TAB>offset': {line.rstrip()!r}", self.idx_path
                    ) from None
                if key not in self.idx:
                    self.keys.append(key)
                self.idx[key] = offset
        self.file_size = os.path.getsize(self.rec_path)
        self._fd: int | None = None
        self._pid: int | None = None

    def _read_at(self, size: int, offset: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            # A descriptor inherited through fork is replaced: each process opens its own.
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        if hasattr(os, "pread"):
            return os.pread(self._fd, size, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without pread
        return os.read(self._fd, size)  # pragma: no cover

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` in the ``.rec`` file."""
        try:
            return self.idx[key]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None

    def read_idx(self, key: int) -> bytes:
        """Returns the bytes of record ``key`` (the payload passed to ``write_idx``).

        Raises:
            KeyError: ``key`` is not in the index.
            RecordIOError: the record is truncated or corrupt, or its offset is past the file end.
        """
        offset = self.offset(key)
        if offset < 0 or offset >= self.file_size:
            raise RecordIOError(
                f"index offset is outside the {self.file_size}-byte file",
                self.rec_path,
                key,
                offset,
            )
        return read_framed(self._read_at, self.rec_path, offset, key)[0]

    def read_header(self, key: int) -> IRHeader:
        """Reads only the header of record ``key`` (cheap: no payload is read)."""
        offset = self.offset(key)
        head = self._read_at(_FRAME.size + IR_SIZE + 8, offset)
        if len(head) < _FRAME.size + IR_SIZE:
            raise RecordIOError("truncated record header", self.rec_path, key, offset)
        magic, lrec = _FRAME.unpack_from(head)
        if magic != MAGIC:
            raise RecordIOError(
                f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})", self.rec_path, key, offset
            )
        header = IRHeader(*_IR_FORMAT.unpack_from(head, _FRAME.size))
        if header.flag > 0 or lrec >> _LENGTH_BITS or (lrec & _LENGTH_MASK) < IR_SIZE:
            # Labels follow the header, or the record was split at a magic word inside its
            # first bytes (or is too short): read and join the whole record instead.
            return unpack(self.read_idx(key))[0]
        return header

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Yields ``(key, record)`` in index order."""
        for key in self.keys:
            yield key, self.read_idx(key)

    def __len__(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        """Closes the ``.rec`` descriptor (reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None  # descriptors do not travel to spawned processes
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown os may already be gone
            self.close()


class IndexedRecordWriter:
    """Writes an indexed RecordIO file, as ``MXIndexedRecordIO(idx, rec, 'w')``.

    Args:
        idx_path: the ``.idx`` file to create (truncated if it exists).
        rec_path: the ``.rec`` file to create (truncated if it exists).
    """

    def __init__(self, idx_path: str | os.PathLike[str], rec_path: str | os.PathLike[str]) -> None:
        self.idx_path = os.fspath(idx_path)
        self.rec_path = os.fspath(rec_path)
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")  # noqa: SIM115
        self._pos = 0
        self.keys: list[int] = []

    def tell(self) -> int:
        """Byte offset the next record will be written at."""
        return self._pos

    def write(self, record: bytes) -> None:
        """Appends one record without indexing it (as ``MXRecordIO.write``)."""
        data = frame(record)
        self._rec.write(data)
        self._pos += len(data)

    def write_idx(self, key: int, record: bytes) -> None:
        """Appends one record and indexes it under ``key``."""
        key = int(key)
        pos = self._pos
        self.write(record)
        self._idx.write(f"{key}\t{pos}\n")
        self.keys.append(key)

    def close(self) -> None:
        """Flushes and closes both files."""
        if not self._rec.closed:
            self._rec.close()
        if not self._idx.closed:
            self._idx.close()

    def __enter__(self) -> IndexedRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
