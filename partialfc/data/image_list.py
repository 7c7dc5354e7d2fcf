"""What ``partialfc pack`` packs: images and labels from an image folder or an im2rec ``.lst``.

An image folder holds one sub-folder per identity; identities sorted by name get labels 0, 1, ...
Whatever is not packed (non-image files, empty identity folders, ...) is recorded, so that the
command can count and list it. ``labels.tsv``, written with the dataset, maps each label back to
its identity folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from partialfc.errors import UserError, UserFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABELS_FILE = "labels.tsv"
LABELS_HEADER = "label\tidentity\timages"


class PackError(UserError, ValueError):
    """An input that ``pack`` cannot pack (unreadable image, mixed sizes, bad ``.lst``)."""


# Why a file or folder under an image folder was not packed: reason -> (singular, plural).
_SKIP_NOUNS = {
    "non-image": ("non-image file", "non-image files"),
    "outside": ("file outside identity folders", "files outside identity folders"),
    "nested": ("folder inside an identity folder", "folders inside identity folders"),
    "empty": ("empty identity folder", "empty identity folders"),
}


@dataclass(frozen=True)
class Skipped:
    """A file or folder of an image folder that is not packed."""

    path: Path
    reason: str
    """A key of ``_SKIP_NOUNS``: ``non-image``, ``outside``, ``nested`` or ``empty``."""

    def __str__(self) -> str:
        return f"skipped {self.path}: {_SKIP_NOUNS[self.reason][0]}"


@dataclass
class ImageList:
    """The images to pack, their labels, and what was left out."""

    paths: list[Path]
    labels: list[int]
    num_classes: int
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_summary(self) -> str:
        """``"2 non-image files, 1 empty identity folder"``, or ``""`` when nothing was skipped."""
        counts = Counter(s.reason for s in self.skipped)
        return ", ".join(
            f"{counts[r]} {_SKIP_NOUNS[r][counts[r] != 1]}" for r in _SKIP_NOUNS if counts[r]
        )


def scan_image_folder(image_dir: str | os.PathLike[str]) -> ImageList:
    """Lists ``image_dir/<identity>/<image>``: identities sorted by name get labels 0, 1, ...

    A folder without images is not an identity (it gets no label). Files whose suffix is not one
    of ``IMAGE_SUFFIXES``, files directly in ``image_dir`` and folders inside identity folders
    are not packed; each is recorded in ``skipped``.

    Returns:
        The images sorted by identity then file name.

    Raises:
        UserFileError: ``image_dir`` is not a folder.
        PackError: it holds no image in an identity folder.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise UserFileError(f"image folder not found: {root}")
    found = ImageList([], [], 0)
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            found.skipped.append(Skipped(entry, "outside"))
            continue
        files = []
        for item in sorted(entry.iterdir()):
            if item.is_dir():
                found.skipped.append(Skipped(item, "nested"))
            elif item.suffix.lower() in IMAGE_SUFFIXES:
                files.append(item)
            else:
                found.skipped.append(Skipped(item, "non-image"))
        if not files:
            found.skipped.append(Skipped(entry, "empty"))
            continue
        found.paths += files
        found.labels += [found.num_classes] * len(files)
        found.num_classes += 1
    if not found.paths:
        raise PackError(
            f"{root}: no images found in <identity>/<image> sub-folders "
            f"(suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def list_image_folder(image_dir: str | os.PathLike[str]) -> tuple[list[Path], list[int], int]:
    """``(paths, labels, num_classes)`` of :func:`scan_image_folder`."""
    found = scan_image_folder(image_dir)
    return found.paths, found.labels, found.num_classes


def read_lst(
    lst_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> tuple[list[Path], list[int], int]:
    """Reads an im2rec ``.lst`` file: ``index<TAB>label<TAB>path`` per line.

    Args:
        lst_path: the list file.
        root: folder the paths are relative to (default: the list's folder).

    Returns:
        ``(paths, labels, num_classes)`` in file order, ``num_classes = max(label) + 1``.

    Raises:
        UserFileError: the list or one of its images is missing.
        PackError: a line is not ``index<TAB>label<TAB>path`` with a non-negative integer label.
    """
    lst_path = Path(lst_path)
    if not lst_path.is_file():
        raise UserFileError(f".lst file not found: {lst_path}")
    base = Path(root) if root is not None else lst_path.parent
    paths: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(lst_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError
            label = float(fields[1])
            if not label.is_integer() or label < 0:
                raise ValueError
        except ValueError:
            raise PackError(
                f"{lst_path}, line {lineno}: expected 'index<TAB>label<TAB>path' with one "
                f"non-negative integer label, got {line!r}"
            ) from None
        paths.append(base / fields[2])
        labels.append(int(label))
    if not paths:
        raise PackError(f"{lst_path}: no entries")
    missing = [p for p in paths if not p.exists()]
    if missing:  # found now rather than after packing everything before it
        shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserFileError(f"{lst_path}: {len(missing)} listed images not found: {shown}")
    return paths, labels, max(labels) + 1


def identity_names(paths: Sequence[Path], labels: Sequence[int], num_classes: int) -> list[str]:
    """The name of the folder holding each label's images ("" if they are in several or none).

    For an image folder that is the identity folder; for a ``.lst`` the usual
    ``<identity>/<image>`` paths give the same.
    """
    parents: list[set[str]] = [set() for _ in range(num_classes)]
    for path, label in zip(paths, labels, strict=True):
        parents[int(label)].add(Path(path).parent.name)
    return [next(iter(p)) if len(p) == 1 else "" for p in parents]


def write_labels(path: Path, names: Sequence[str], counts: Sequence[int]) -> None:
    """Writes ``labels.tsv``: a header, then ``label<TAB>identity<TAB>images`` per label.

    Backslash, tab, newline and carriage return in a name are written as ``\\\\``, ``\\t``,
    ``\\n``, ``\\r``, so that every label is one line; names that are not UTF-8 keep their bytes.
    """
    rows = [LABELS_HEADER]
    for label, (name, count) in enumerate(zip(names, counts, strict=True)):
        rows.append(f"{label}\t{_escape(name)}\t{count}")
    path.write_bytes(("\n".join(rows) + "\n").encode("utf-8", "surrogateescape"))


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """The identity names of a ``labels.tsv``, indexed by label."""
    # split on "\n" alone: str.splitlines would also split names at form feeds and the like
    lines = Path(path).read_bytes().decode("utf-8", "surrogateescape").rstrip("\n").split("\n")
    if lines[0] != LABELS_HEADER:
        raise UserFileError(f"{path}: expected the header {LABELS_HEADER!r}")
    return [_unescape(line.split("\t")[1]) for line in lines[1:]]


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(name: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in name)


def _unescape(text: str) -> str:
    out, chars = [], iter(text)
    back = {v[1]: k for k, v in _ESCAPES.items()}
    for c in chars:
        out.append(back.get(next(chars, ""), "") if c == "\\" else c)
    return "".join(out)
