"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...): read and write.

The file is a pickle of ``(images, issame)``: ``images`` a list of encoded images, two per pair
and pairs consecutive, ``issame`` one bool per pair. insightface loads it with
``pickle.load(f, encoding="bytes")``; we write protocol 4 (readable by every Python 3).

A pickle can name any importable callable and have the loader call it, so a crafted ``.bin``
would run code the moment it is loaded (at preflight, at the first evaluation). :func:`read_bin`
therefore resolves only the globals that the files in circulation use, and refuses any other:

* insightface's ``lfw2pack.py`` (Python 2, ``HIGHEST_PROTOCOL`` = 2) stores the JPEG files as
  Python 2 ``str``, which are plain opcodes, not globals, and load as ``bytes``;
* its ``agedb2pack2.py`` and ``cfp2pack.py`` (``agedb_30.bin``, ``cfp_fp.bin``, ``cfp_ff.bin``)
  store ``cv2.imencode`` output, uint8 numpy arrays: ``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype`` (``numpy.core.numeric._frombuffer`` at protocol 5, and
  ``numpy._core.*`` when written with numpy 2);
* Python 3 writers at protocol 2 or 3 store ``bytes`` through ``_codecs.encode(text, "latin1")``
  (and ``bytes()`` for an empty one), and numpy bools through ``numpy.core.multiarray.scalar``.

``_codecs.encode``, ``bytes``, ``numpy.ndarray`` and ``_reconstruct`` are replaced by versions
that accept only those uses (no other codec, no allocation of a size the pickle chooses).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.data.layout import DatasetError
from partialfc.errors import UserFileError


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # How Python 3 pickles bytes below protocol 3; any other codec is not that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode{(type(text).__name__, encoding, errors)}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # How Python 3 pickles b"" below protocol 3; bytes(n) would allocate n bytes.
    if args:
        raise pickle.UnpicklingError(f"bytes() with arguments {args!r:.40}")
    return b""


def _numpy(path: str) -> Any:
    """A numpy internal by its numpy-1 path (``core.multiarray._reconstruct``), in any numpy."""
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(f"numpy._{module}"), attr)  # numpy >= 2
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(f"numpy.{module}"), attr)


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to: a name that only :func:`_reconstruct` accepts.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), dtype)`` and then fills it from the
    pickled bytes; ``ndarray`` itself is never called, and ``ndarray(shape)`` or
    ``_reconstruct(ndarray, shape)`` with a shape of the pickle's choosing would allocate it.
    """

    __slots__ = ()  # a pickle's BUILD cannot set attributes on it either


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"_reconstruct{(subtype, shape)!r:.60}")
    return _numpy("core.multiarray._reconstruct")(np.ndarray, (0,), dtype)


# The other numpy internals an array or a numpy scalar pickles through, by (module, name) as
# numpy 1 and numpy 2 write them.
_NUMPY_GLOBALS = {
    (f"numpy.{core}.{module}", name): f"core.{module}.{name}"
    for core in ("core", "_core")
    for module, name in (("multiarray", "scalar"), ("numeric", "_frombuffer"))
}


def _allowed(module: str, name: str) -> object | None:
    """What ``module.name`` resolves to in a verification ``.bin``, or None if it is refused."""
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if module in ("builtins", "__builtin__") and name == "bytes":
        return _empty_bytes
    if (module, name) == ("numpy", "ndarray"):
        return _NDARRAY
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        return _reconstruct
    if (module, name) in _NUMPY_GLOBALS:
        return _numpy(_NUMPY_GLOBALS[module, name])
    return None


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualified: str) -> None:
        super().__init__(qualified)
        self.qualified = qualified


class _BinUnpickler(pickle.Unpickler):
    """Resolves only the globals of :func:`_allowed`: nothing else is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


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

    Only the globals the format uses are resolved (see the module docstring); a file naming any
    other is refused before anything in it runs.

    Returns:
        ``(images, issame)``: encoded images as bytes, one bool per pair.

    Raises:
        UserFileError: the file is missing.
        DatasetError: it is not such a pickle, names a refused global, or does not hold a list of
            encoded images (bytes or uint8 arrays) and a list of bools, two images a pair.
    """
    if not Path(path).is_file():
        raise UserFileError(f"verification .bin not found: {path}")
    data = Path(path).read_bytes()
    try:
        content = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise DatasetError(
            f"refused to load {exc.qualified}: a verification .bin holds only encoded images "
            "(bytes or numpy uint8 arrays) and bools, and a pickle naming anything else could "
            "run code; do not use this file",
            path,
        ) from None
    except Exception as exc:  # any malformed pickle: truncated, not a pickle, bad arguments
        raise DatasetError(f"not a verification .bin pickle ({exc})", path) from None
    if not (isinstance(content, tuple | list) and len(content) == 2):
        raise DatasetError("expected a pickled (images, issame) pair", path)
    images = [_image_bytes(b, i, path) for i, b in enumerate(_sequence(content[0], "images", path))]
    issame = [_flag(s, i, path) for i, s in enumerate(_sequence(content[1], "issame", path))]
    if len(images) != 2 * len(issame):
        raise DatasetError(f"{len(images)} images for {len(issame)} pairs (need two a pair)", path)
    return images, issame


def _sequence(value: object, what: str, path: str | os.PathLike[str]) -> Sequence[Any]:
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return value
    raise DatasetError(f"{what} is a {type(value).__name__}, expected a list", path)


def _image_bytes(value: object, i: int, path: str | os.PathLike[str]) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype in (np.uint8, np.int8):
        return value.tobytes()  # cv2.imencode's (n, 1) uint8 array
    kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
    raise DatasetError(f"image {i} is a {kind}, expected encoded bytes", path)


def _flag(value: object, i: int, path: str | os.PathLike[str]) -> bool:
    if isinstance(value, bool | np.bool_) or (
        isinstance(value, int | np.integer) and value in (0, 1)
    ):
        return bool(value)
    raise DatasetError(f"issame[{i}] is {value!r:.40}, expected a bool", path)
