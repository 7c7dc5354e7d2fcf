"""The shipped run configs (``demo_cpu``, ``ms1mv3_r50``, ...), package data read through
:mod:`importlib.resources`, so a wheel installed anywhere carries them.

In a source checkout they are the files ``partialfc/configs/NAME.toml``; ``partialfc configs``
lists them with their paths, and ``partialfc configs NAME`` prints one to start a run's TOML from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from partialfc.errors import UserFileError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; annotations only


def names() -> list[str]:
    """The shipped configs' names (file stems), sorted."""
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".toml")
    )


def _entry(name: str) -> Traversable:
    stem = name.removesuffix(".toml")
    if stem not in names():
        raise UserFileError(f"no shipped config {name!r}; shipped: {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{stem}.toml")


def read_text(name: str) -> str:
    """The TOML text of the shipped config ``name`` (``demo_cpu`` or ``demo_cpu.toml``).

    Raises:
        UserFileError: no such shipped config (the message lists them).
    """
    return _entry(name).read_text(encoding="utf-8")


@contextlib.contextmanager
def as_file(name: str) -> Iterator[Path]:
    """A real file holding the shipped config ``name`` for the block (for a subprocess).

    Installed packages are plain folders, so this is the shipped file itself; a package imported
    from a zip gets a temporary copy.

    Raises:
        UserFileError: no such shipped config.
    """
    with resources.as_file(_entry(name)) as path:
        yield Path(path)
