"""The structural JPEG check: intact encodings pass, each kind of structural damage is named."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from partialfc.data.images import decode_image
from partialfc.data.jpeg import jpeg_damage
from partialfc.data.synth_faces import identity_params, render_face


def _face(seed: int = 0) -> np.ndarray:
    return render_face(identity_params(np.random.default_rng([seed])), np.random.default_rng(seed))


def _jpeg(image: np.ndarray | None = None, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_face() if image is None else image).save(buf, format="JPEG", **options)
    return buf.getvalue()


def _segments(data: bytes) -> dict[int, int]:
    """Marker -> byte position of its first occurrence, up to the first SOS."""
    found, pos = {}, 2
    while True:
        marker = data[pos + 1]
        found.setdefault(marker, pos)
        if marker == 0xDA:
            return found
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _scan_start(data: bytes) -> int:
    sos = _segments(data)[0xDA]
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _invert(data: bytes, offset: int, n: int = 64) -> bytes:
    out = bytearray(data)
    for i in range(offset, offset + n):
        out[i] ^= 0xFF
    return bytes(out)


def _pillow_refuses(data: bytes) -> bool:
    try:
        decode_image(data)
    except (OSError, ValueError, SyntaxError):
        return True
    return False


def _replace(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new) :]


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 90},
        {"quality": 95, "subsampling": 0},
        {"quality": 75, "optimize": True},
        {"quality": 90, "progressive": True},
        {"quality": 90, "restart_marker_blocks": 4},
    ],
    ids=["baseline", "444", "optimized", "progressive", "restart-markers"],
)
def test_intact_encodings_pass(options):
    data = _jpeg(**options)
    assert jpeg_damage(data) is None
    assert jpeg_damage(data + b"\0" * 7) is None, "bytes after EOI are ignored, as decoders do"


def test_grayscale_and_non_square_pass():
    gray = _face()[:80, :, 0].copy()
    assert jpeg_damage(_jpeg(gray)) is None


def test_restart_markers_are_present_and_checked():
    data = _jpeg(quality=90, restart_marker_blocks=4)
    rst1 = data.index(b"\xff\xd1", _scan_start(data))
    assert "RST1 comes next" in jpeg_damage(_replace(data, rst1, b"\xff\xd2"))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: b"\0\0" + d[2:], "no SOI marker"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-2], "truncated"),
        (lambda d: _replace(d, _scan_start(d) + 100, b"\xff\xc0"), "marker 0xFFC0 inside the entropy-coded"),
        (lambda d: _replace(d, _scan_start(d) + 100, b"\xff\xd3"), "restart marker without a restart interval"),
        (lambda d: _replace(d, _scan_start(d) + 100, b"\xff\xda"), "marker 0xFFDA inside the entropy-coded"),
        (lambda d: _replace(d, _segments(d)[0xDB] + 2, b"\xff\xff"), "runs past the end"),
        (lambda d: _replace(d, _segments(d)[0xC0], b"\xff\xc4"), "Huffman table"),
        (lambda d: _replace(d, _segments(d)[0xC4] + 5, b"\x00\x05\x01"), "more codes than 2 bits"),
        (lambda d: _replace(d, _segments(d)[0xDB] + 5, b"\x00"), "quantisation table with a zero step"),
        (lambda d: _replace(d, _segments(d)[0xC0] + 9, b"\x05"), "frame header"),
        (lambda d: _replace(d, _segments(d)[0xDA] + 5, b"\x07"), "scan names components"),
        (lambda d: _replace(d, _segments(d)[0xDA] + 11, b"\x3f\x3f"), "sequential scan with spectral"),
        (lambda d: _replace(d, _segments(d)[0xC0], b"\xff\xda"), "scan (SOS) before the frame"),
        (lambda d: _replace(d, _segments(d)[0xE0] + 1, b"\x02"), "unknown marker 0xFF02"),
        (lambda d: _replace(d, _segments(d)[0xE0], b"\x12"), "expected a marker"),
    ],
    ids=[
        "no-soi", "half", "no-eoi", "sof-in-scan", "stray-rst", "sos-in-baseline-scan",
        "segment-length", "huffman-header", "huffman-overfull", "zero-quant", "frame-components",
        "scan-component", "spectral", "sos-before-sof", "reserved-marker", "not-a-marker",
    ],
)  # fmt: skip
def test_structural_damage_is_named(corrupt, message):
    data = _jpeg(quality=90)
    damage = jpeg_damage(corrupt(data))
    assert damage is not None and message in damage, damage


def test_damage_inside_legal_entropy_coded_data_is_not_seen():
    data = _jpeg(quality=90)
    start = _scan_start(data)
    zeros = _replace(data, start + 200, bytes(64))  # decodes to wrong pixels, structure intact
    assert jpeg_damage(zeros) is None


def test_detection_rate_of_random_inverted_bursts():
    """200 bursts of 64 inverted bytes at random offsets into one face JPEG (what
    ``benchmarks/jpeg_damage.py`` measures over many): the check finds about half, and every
    one Pillow (the torch loader's decoder) refuses."""
    data = _jpeg(quality=90)
    rng = random.Random(0)
    found = refused = missed_refused = 0
    for _ in range(200):
        bad = _invert(data, rng.randrange(len(data) - 63))
        check, pil = jpeg_damage(bad) is not None, _pillow_refuses(bad)
        found += check
        refused += pil
        missed_refused += pil and not check
    assert missed_refused == 0
    assert 0.4 <= found / 200 <= 0.65, found
    assert found >= refused
