"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...): read and write.

The file is a pickle of ``(images, issame)``: ``images`` a list of encoded images (bytes), two per
pair and pairs consecutive, ``issame`` one bool per pair. insightface loads it with
``pickle.load(f, encoding="bytes")``; we write protocol 4 (readable by every Python 3).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path


def write_bin(
    path: str | os.PathLike[str], images: Sequence[bytes], issame: Sequence[bool]
) -> None:
    """Writes a verification ``.bin``.

    Args:
        path: output file.
        images: encoded images, ``2 * len(issame)`` of them, pair ``i`` at ``2i`` and ``2i+1``.
        issame: whether each pair shows one identity.
    """
    if len(images) != 2 * len(issame):
        raise ValueError(
            f"{path}: need two images per pair, got {len(images)} images for {len(issame)} pairs"
        )
    payload = ([bytes(b) for b in images], [bool(s) for s in issame])
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], list[bool]]:
    """Reads a verification ``.bin`` written by insightface or :func:`write_bin`.

    Only open files you trust: the format is a pickle.

    Returns:
        ``(images, issame)``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the content is not ``(list of bytes, list of bools)`` with two images a pair.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"verification .bin not found: {path}")
    with open(path, "rb") as f:
        try:
            content = pickle.load(f, encoding="bytes")
        except Exception as exc:
            raise ValueError(f"{path}: not a verification .bin pickle ({exc})") from exc
    if not (isinstance(content, tuple | list) and len(content) == 2):
        raise ValueError(f"{path}: expected a pickled (images, issame) pair")
    images, issame = content
    images = [bytes(b) for b in images]
    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (need two a pair)")
    return images, issame
