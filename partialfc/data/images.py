"""Image encoding and decoding with Pillow (imported lazily: the ``data`` extra)."""

from __future__ import annotations

import io

import numpy as np


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


def decode_image(data: bytes) -> np.ndarray:
    """Decodes JPEG/PNG bytes with Pillow to an HxWx3 RGB uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
