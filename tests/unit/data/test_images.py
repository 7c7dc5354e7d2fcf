"""partialfc.data.images: simplejpeg's decode equals Pillow's, pixel for pixel, where it is used;
Pillow takes the rest (other formats, CMYK, bytes simplejpeg rejects) and everything when
simplejpeg is absent."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partialfc.data import images
from partialfc.data.dataset import RecordDataset
from partialfc.data.images import decode_image, decode_with_pillow, simplejpeg_module
from tests.unit.data._datasets import make_synth

simplejpeg = pytest.importorskip("simplejpeg")


def _face(seed: int = 0) -> np.ndarray:
    # A smooth gradient plus noise: chroma subsampling and the DCT both have work to do.
    yy, xx = np.mgrid[0:112, 0:112]
    noise = np.random.default_rng(seed).integers(0, 64, (112, 112, 3))
    return (np.stack([xx * 2, yy * 2, xx + yy], -1) + noise).clip(0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _fresh_lookup():
    simplejpeg_module.cache_clear()
    yield
    simplejpeg_module.cache_clear()


VARIANTS = {
    f"q{q}-{sub}{'-progressive' if prog else ''}": {
        "quality": q, "subsampling": sub, "progressive": prog
    }
    for q in (75, 95)
    for sub in ("4:4:4", "4:2:2", "4:2:0")
    for prog in (False, True)
}  # fmt: skip


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_simplejpeg_equals_pillow_on_colour_jpegs(options: dict, monkeypatch) -> None:
    data = _jpeg(Image.fromarray(_face()), **options)
    used = []
    real = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: used.append(1) or real(*a, **k))
    got = decode_image(data)
    assert used, "simplejpeg decoded it"
    assert got.dtype == np.uint8 and got.shape == (112, 112, 3)
    np.testing.assert_array_equal(got, decode_with_pillow(data))


def test_grayscale_jpeg_is_rgb_and_equal_to_pillow() -> None:
    data = _jpeg(Image.fromarray(_face()).convert("L"))
    got = decode_image(data)
    assert got.shape == (112, 112, 3)
    np.testing.assert_array_equal(got, decode_with_pillow(data))


def test_cmyk_jpeg_goes_to_pillow() -> None:
    # simplejpeg's CMYK->RGB is one level off Pillow's for some pixels: not used for CMYK.
    data = _jpeg(Image.fromarray(_face()).convert("CMYK"))
    turbo = simplejpeg.decode_jpeg(data, colorspace="RGB")
    pillow = decode_with_pillow(data)
    assert not np.array_equal(turbo, pillow), "the reason for the fallback still holds"
    np.testing.assert_array_equal(decode_image(data), pillow)


def test_png_and_damaged_jpeg_decode_as_pillow_does() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_face()).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), _face())
    data = _jpeg(Image.fromarray(_face()))
    truncated = data[: len(data) // 2]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(truncated, colorspace="RGB")  # strict: simplejpeg refuses
    with pytest.raises(OSError, match="truncated"):
        decode_image(truncated)  # Pillow's error, as before simplejpeg


def test_without_simplejpeg_pillow_decodes(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` raises ImportError
    assert simplejpeg_module() is None
    data = _jpeg(Image.fromarray(_face()))
    calls = []
    real = images.decode_with_pillow
    monkeypatch.setattr(images, "decode_with_pillow", lambda d: calls.append(1) or real(d))
    np.testing.assert_array_equal(decode_image(data), real(data))
    assert calls == [1]


def test_every_image_of_the_synthetic_set_decodes_identically(tmp_path: Path) -> None:
    auto = RecordDataset(make_synth(tmp_path / "synth"))
    pillow = RecordDataset(tmp_path / "synth", decoder="pillow")
    _, payload = auto.record.read_image_record(int(auto.record.image_keys[0]))
    assert simplejpeg.decode_jpeg_header(payload)[2] == "YCbCr", "a set simplejpeg decodes"
    for i in range(len(auto)):
        a, label_a = auto[i]
        p, label_p = pillow[i]
        assert label_a == label_p
        np.testing.assert_array_equal(a, p, err_msg=f"sample {i}")


def test_an_unknown_decoder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decoder must be one of"):
        decode_image(b"", decoder="turbo")
    with pytest.raises(ValueError, match="decoder must be one of"):
        RecordDataset(tmp_path, decoder="cv2")
