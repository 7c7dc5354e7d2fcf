"""A cheap structural check of JPEG bytes, for damage that decoders accept without an error.

libjpeg (Pillow, DALI's CPU decoder) turns most corrupt entropy-coded data into a warning and
garbage pixels. :func:`jpeg_damage` walks the marker structure (ITU T.81, Annex B) instead of
decoding: SOI first, every segment's length inside the data and consistent with its content (frame
and scan headers, Huffman and quantisation tables), a frame before the first scan, no marker other
than a byte-stuffing ``0x00`` or the next restart marker inside entropy-coded data, and EOI at the
end. It costs a few microseconds per 112x112 image (one regular-expression pass over the scan).

It cannot see damage that keeps the structure legal: changed bits inside entropy-coded data that
form no marker, or changed table values that stay valid. Those decode, in every decoder, to wrong
pixels; ``docs/data.md`` gives the fraction of random damage the check finds.
"""

from __future__ import annotations

import re

JPEG_SIGNATURE = b"\xff\xd8"
SOI, EOI, SOS, DHT, DQT, DRI, DAC, COM, DNL = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xCC, 0xFE, 0xDC
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_SEQUENTIAL = frozenset((0xC0, 0xC1, 0xC5, 0xC9, 0xCD))  # every scan spans the whole spectrum
_PROGRESSIVE = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
_RST = range(0xD0, 0xD8)
_APP = range(0xE0, 0xF0)
# Markers a decoder skips or uses between the frame header and EOI (tables, comments, more scans).
_TABLES = frozenset((DHT, DQT, DRI, DAC, COM, DNL, *_APP))
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed data byte), 0xFF (fill) or a marker;
# the last 0xFF of a run is the marker's.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff]", re.DOTALL)


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with the JPEG SOI marker."""
    return bytes(data[:2]) == JPEG_SIGNATURE


def jpeg_damage(data: bytes) -> str | None:
    """What is structurally wrong with the JPEG ``data``, in a few words, or None.

    None does not prove the image intact: see the module docstring for what no structural check
    can see. Byte positions in the message count from the start of ``data``.
    """
    data = bytes(data)
    if not is_jpeg(data):
        return "no SOI marker at the start (not a JPEG, or its first bytes are damaged)"
    walker = _Walker(data)
    try:
        return walker.walk()
    except _Damage as damage:
        return str(damage)


class _Damage(Exception):
    pass


class _Walker:
    """One pass over the markers of one JPEG; :meth:`walk` raises :class:`_Damage`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 2  # after SOI
        self.frame: int | None = None  # the SOF marker
        self.components: dict[int, tuple[int, int]] = {}  # id -> (h, v) sampling
        self.scans = 0
        self.restart_interval = 0
        self.last_scan = False  # the scan read last is the whole image

    def walk(self) -> str | None:
        data, n = self.data, len(self.data)
        while True:
            at, marker = self._marker()
            if marker == EOI:
                if self.scans == 0:
                    raise _Damage(f"byte {at}: EOI before any scan")
                return None  # anything after EOI is ignored by every decoder
            if marker in _RST or marker in (SOI, 0x00):
                raise _Damage(f"byte {at}: marker 0xFF{marker:02X} outside entropy-coded data")
            if marker == 0x01:  # TEM: no length
                continue
            if self.pos + 2 > n:
                raise _Damage(f"byte {at}: truncated inside the 0xFF{marker:02X} segment header")
            length = int.from_bytes(data[self.pos : self.pos + 2], "big")
            if length < 2 or self.pos + length > n:
                raise _Damage(
                    f"byte {at}: segment 0xFF{marker:02X} of length {length} runs past the end "
                    f"({n} bytes)"
                )
            segment = data[self.pos + 2 : self.pos + length]
            self.pos += length
            if marker in _SOF:
                self._frame(at, marker, segment)
            elif marker == SOS:
                self._scan(at, segment)
                self._entropy_coded_data()
            elif marker == DHT:
                _huffman_tables(at, segment)
            elif marker == DQT:
                _quantization_tables(at, segment)
            elif marker == DRI:
                if len(segment) != 2:
                    raise _Damage(f"byte {at}: DRI segment of length {length}, expected 4")
                self.restart_interval = int.from_bytes(segment, "big")
            elif marker not in _TABLES:
                raise _Damage(f"byte {at}: unknown marker 0xFF{marker:02X}")

    def _marker(self) -> tuple[int, int]:
        data, at = self.data, self.pos
        if at >= len(data):
            raise _Damage(f"truncated: ends at byte {at} without an EOI marker")
        if data[at] != 0xFF:
            raise _Damage(f"byte {at}: expected a marker, found 0x{data[at]:02X}")
        while at < len(data) and data[at] == 0xFF:  # fill bytes may precede a marker
            at += 1
        if at >= len(data):
            raise _Damage(f"truncated: ends at byte {at} without an EOI marker")
        self.pos = at + 1
        return at - 1, data[at]

    def _frame(self, at: int, marker: int, seg: bytes) -> None:
        if self.frame is not None:
            raise _Damage(f"byte {at}: a second frame header (SOF)")
        if len(seg) < 6 or len(seg) != 6 + 3 * seg[5]:
            raise _Damage(f"byte {at}: frame header of {len(seg) + 2} bytes does not fit its count")
        precision, width, count = seg[0], int.from_bytes(seg[3:5], "big"), seg[5]
        if precision not in (8, 12, 16) or width == 0 or not 1 <= count <= 4:
            raise _Damage(
                f"byte {at}: frame header with precision {precision}, width {width}, "
                f"{count} components"
            )
        for i in range(count):
            ident, sampling, table = seg[6 + 3 * i : 9 + 3 * i]
            h, v = sampling >> 4, sampling & 15
            if ident in self.components or not (1 <= h <= 4 and 1 <= v <= 4) or table > 3:
                raise _Damage(f"byte {at}: frame component {i} is invalid")
            self.components[ident] = (h, v)
        self.frame = marker

    def _scan(self, at: int, seg: bytes) -> None:
        if self.frame is None:
            raise _Damage(f"byte {at}: a scan (SOS) before the frame header (SOF)")
        count = seg[0] if seg else 0
        if not 1 <= count <= 4 or len(seg) != 4 + 2 * count:
            raise _Damage(f"byte {at}: scan header of {len(seg) + 2} bytes does not fit its count")
        ids = [seg[1 + 2 * i] for i in range(count)]
        tables = [seg[2 + 2 * i] for i in range(count)]
        if len(set(ids)) != count or any(i not in self.components for i in ids):
            raise _Damage(f"byte {at}: scan names components the frame does not have")
        if any(t >> 4 > 3 or t & 15 > 3 for t in tables):
            raise _Damage(f"byte {at}: scan selects a table outside 0..3")
        start, end, approx = seg[-3], seg[-2], seg[-1]
        if self.frame in _SEQUENTIAL and (start, end, approx) != (0, 63, 0):
            raise _Damage(f"byte {at}: sequential scan with spectral selection {start}..{end}")
        if self.frame in _PROGRESSIVE and (
            start > end or end > 63 or (start == 0) != (end == 0) or approx >> 4 > 13
        ):
            raise _Damage(f"byte {at}: progressive scan with spectral selection {start}..{end}")
        self.scans += 1
        # One sequential scan with every component is the whole image: only EOI may follow.
        self.last_scan = self.frame in _SEQUENTIAL and count == len(self.components)

    def _entropy_coded_data(self) -> None:
        data = self.data
        expected_rst = 0
        while True:
            found = _NEXT_MARKER.search(data, self.pos)
            if found is None:
                raise _Damage(f"truncated: scan {self.scans} runs to the end without an EOI marker")
            at = found.start() + 1
            marker = data[at]
            if marker in _RST:
                if not self.restart_interval:
                    raise _Damage(f"byte {at - 1}: restart marker without a restart interval")
                if marker != 0xD0 + expected_rst:
                    raise _Damage(
                        f"byte {at - 1}: restart marker RST{marker - 0xD0} where RST{expected_rst}"
                        " comes next"
                    )
                expected_rst = (expected_rst + 1) % 8
                self.pos = at + 1
                continue
            if marker != EOI and (self.last_scan or marker not in _TABLES | {SOS}):
                raise _Damage(
                    f"byte {at - 1}: marker 0xFF{marker:02X} inside the entropy-coded data of "
                    f"scan {self.scans}"
                )
            self.pos = at - 1
            return


def _huffman_tables(at: int, seg: bytes) -> None:
    pos = 0
    while pos < len(seg):
        if pos + 17 > len(seg):
            raise _Damage(f"byte {at}: Huffman table cut short")
        kind, ident = seg[pos] >> 4, seg[pos] & 15
        counts = seg[pos + 1 : pos + 17]
        total = sum(counts)
        if kind > 1 or ident > 3 or total > 256 or pos + 17 + total > len(seg):
            raise _Damage(f"byte {at}: invalid Huffman table header")
        code = 0  # canonical codes of each length must fit in that many bits (T.81, Annex C)
        for bits, count in enumerate(counts, 1):
            code += count
            if code > 1 << bits:
                raise _Damage(f"byte {at}: Huffman table with more codes than {bits} bits hold")
            code <<= 1
        if kind == 0 and max(seg[pos + 17 : pos + 17 + total], default=0) > 15:
            raise _Damage(f"byte {at}: DC Huffman table with a symbol above 15")
        pos += 17 + total


def _quantization_tables(at: int, seg: bytes) -> None:
    pos = 0
    while pos < len(seg):
        precision, ident = seg[pos] >> 4, seg[pos] & 15
        size = 128 if precision else 64
        if precision > 1 or ident > 3 or pos + 1 + size > len(seg):
            raise _Damage(f"byte {at}: invalid quantisation table header")
        values = seg[pos + 1 : pos + 1 + size]
        if precision:
            values = [values[i] << 8 | values[i + 1] for i in range(0, size, 2)]
        if 0 in values:
            raise _Damage(f"byte {at}: quantisation table with a zero step")
        pos += 1 + size
