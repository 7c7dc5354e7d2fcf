"""Image encoding and decoding: Pillow, and simplejpeg for JPEG when installed.

Both are imported lazily (the ``data`` and ``jpeg`` extras). simplejpeg calls libjpeg-turbo's
TurboJPEG API directly, with the same integer DCT and fancy upsampling as Pillow's decoder, so its
RGB output is pixel-identical to Pillow's for YCbCr and grayscale JPEGs (tests/unit/data pins
this) and skips Pillow's image object and mode conversion: about 1.9x faster per 112x112 face
(docs/benchmarks.md). Everything else goes to Pillow: other formats, CMYK/YCCK JPEGs (Pillow's
own CMYK->RGB conversion differs from libjpeg-turbo's by one level), and bytes simplejpeg rejects
(it is strict about corrupt data, so Pillow's error or Pillow's pixels stay the result).
"""

from __future__ import annotations

import functools
import io
from types import ModuleType

import numpy as np

from partialfc.data.jpeg import is_jpeg

DECODERS = ("auto", "pillow")
# JPEG colour spaces simplejpeg decodes exactly as Pillow does.
_EXACT_COLORSPACES = frozenset({"YCbCr", "Gray"})


def encode_image(img: np.ndarray, img_fmt: str = ".jpg", quality: int = 95) -> bytes:
    """Encodes a uint8 RGB/grayscale array as JPEG or PNG with Pillow (deterministic output)."""
    from PIL import Image

    fmt = img_fmt.lower().lstrip(".")
    buf = io.BytesIO()
    image = Image.fromarray(np.asarray(img, dtype=np.uint8))
    if fmt in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=int(quality))
    elif fmt == "png":
        image.save(buf, format="PNG")
    else:
        raise ValueError(f"img_fmt must be '.jpg' or '.png', got {img_fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes, decoder: str = "auto") -> np.ndarray:
    """Decodes JPEG/PNG bytes to an HxWx3 RGB uint8 array.

    Args:
        data: the encoded image.
        decoder: ``"auto"``: simplejpeg for JPEG when it is installed and exact for the image,
            Pillow otherwise; ``"pillow"``: Pillow only (the reference, and benchmarks' baseline).

    Raises:
        ValueError: an unknown ``decoder``, or bytes Pillow cannot decode (also OSError).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto" and is_jpeg(data):
        image = _decode_turbo(data)
        if image is not None:
            return image
    return decode_with_pillow(data)


def decode_with_pillow(data: bytes) -> np.ndarray:
    """Decodes JPEG/PNG bytes with Pillow to an HxWx3 RGB uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@functools.cache
def simplejpeg_module() -> ModuleType | None:
    """simplejpeg if it is installed (looked up once per process), else None."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _decode_turbo(data: bytes) -> np.ndarray | None:
    """simplejpeg's RGB decode of ``data``; None where it would not equal Pillow's."""
    simplejpeg = simplejpeg_module()
    if simplejpeg is None:
        return None
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in _EXACT_COLORSPACES:
            return None
        # fastdct/fastupsample off: libjpeg's defaults, which Pillow uses.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except ValueError:  # corrupt or unsupported: Pillow decides (error or pixels, as before)
        return None
