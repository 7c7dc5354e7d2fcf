"""IJB-B / IJB-C 1:N protocol files: the galleries and the mixed-media probes of NIST's CSVs.

IJB-C: ``ijbc_1N_gallery_G1.csv``, ``ijbc_1N_gallery_G2.csv``, ``ijbc_1N_probe_mixed.csv``;
IJB-B: ``ijbb_1N_gallery_S1.csv``, ``ijbb_1N_gallery_S2.csv``, ``ijbb_1N_probe_mixed.csv``.
insightface's updated ``IJB_release`` meta puts them in ``ROOT/meta/`` (where its ``ijb_1n.py``
and Keras_insightface's ``IJB_evals.py`` read them); NIST's own release in ``protocols/``. Each
is a CSV with a header row and one row per image or video frame:
``TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT,...``.

Only ``TEMPLATE_ID`` and ``SUBJECT_ID`` are read (by header name, so the column order and any
extra columns do not matter). The CSVs have face boxes but no five-point landmarks, and their
FILENAMEs (``img/123.jpg``, ``frames/456.png``) are not insightface's renumbered
``loose_crop`` names: a template's images, medias, landmarks and detector scores come from the
1:1 files (``<t>_face_tid_mid.txt``, ``<t>_name_5pts_score.txt``), which list every template of
both galleries and of the probes (the 1:1 protocol compares exactly those templates).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.errors import UserFileError
from partialfc.eval.ijb import TARGETS, IJBError

GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
"""The two disjoint galleries of each target, in NIST's names."""
PROTOCOL_DIRS = ("meta", "protocols")
"""Where under ROOT the CSVs are looked for, in this order."""
_COLUMNS = ("TEMPLATE_ID", "SUBJECT_ID")


@dataclass(frozen=True)
class TemplateSubjects:
    """The templates of one protocol file and their subjects."""

    templates: np.ndarray
    """(T,) sorted distinct int64 template ids."""
    subjects: np.ndarray
    """(T,) int64 subject of each template."""


@dataclass(frozen=True)
class IJB1NMeta:
    """One target's 1:N protocol: two galleries and the mixed probes."""

    galleries: dict[str, TemplateSubjects]
    """``{"G1": ..., "G2": ...}`` (``S1``/``S2`` for IJB-B), in NIST's order."""
    probes: TemplateSubjects
    """The mixed-media probe templates."""
    files: dict[str, Path]
    """The files read: each gallery's name and ``probes``."""


def protocol_files_1n(
    root: str | os.PathLike[str], target: str, directory: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """The three CSVs of ``target``: in ``directory`` if given, else the first of
    ``ROOT/meta``, ``ROOT/protocols`` that holds the probe file (``ROOT/meta`` if none does)."""
    if target not in TARGETS:
        raise IJBError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    t = target.lower()
    names = {g: f"{t}_1N_gallery_{g}.csv" for g in GALLERIES[target]}
    names["probes"] = f"{t}_1N_probe_mixed.csv"
    if directory is not None:
        folder = Path(directory)
    else:
        candidates = [Path(root) / d for d in PROTOCOL_DIRS]
        folder = next((d for d in candidates if (d / names["probes"]).is_file()), candidates[0])
    return {key: folder / name for key, name in names.items()}


def read_template_subjects(path: Path) -> TemplateSubjects:
    """The templates of one NIST protocol CSV and the subject of each.

    Raises:
        IJBError: no ``TEMPLATE_ID``/``SUBJECT_ID`` header, a non-integer id, no rows, or a
            template listed under two subjects.
    """
    # utf-8-sig: a byte-order mark, as spreadsheet tools write one, is not part of TEMPLATE_ID.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [name.strip().upper() for name in next(reader, [])]
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise IJBError(
                f"{path}: the header row must name {' and '.join(_COLUMNS)}, missing {missing}"
                f" (got {header[:4]})"
            )
        columns = [header.index(c) for c in _COLUMNS]
        rows = []
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                rows.append([int(row[i]) for i in columns])
            except (IndexError, ValueError):
                raise IJBError(
                    f"{path}:{number}: TEMPLATE_ID and SUBJECT_ID must be integers, got {row[:3]}"
                ) from None
    if not rows:
        raise IJBError(f"{path}: no template rows")
    table = np.array(rows, dtype=np.int64)
    pairs = np.unique(table, axis=0)  # one row per (template, subject), sorted by template
    templates, first = np.unique(pairs[:, 0], return_index=True)
    if templates.size != pairs.shape[0]:
        twice = pairs[np.r_[False, np.diff(pairs[:, 0]) == 0], 0]
        raise IJBError(
            f"{path}: templates listed under two subjects, e.g. {np.unique(twice)[:5].tolist()}"
        )
    return TemplateSubjects(templates, pairs[first, 1])


def read_1n_meta(
    root: str | os.PathLike[str],
    target: str,
    known_templates: np.ndarray,
    directory: str | os.PathLike[str] | None = None,
    faces_file: str | os.PathLike[str] = "the face list",
) -> IJB1NMeta:
    """Reads ``target``'s two galleries and mixed probes and checks them against the images.

    Args:
        root: the IJB folder.
        target: ``IJBC`` or ``IJBB``.
        known_templates: the template ids that have images (``IJBMeta.templates``).
        directory: the folder of the CSVs, instead of ``ROOT/meta`` or ``ROOT/protocols``.
        faces_file: the file ``known_templates`` came from, for messages.

    Raises:
        UserFileError: a CSV is missing.
        IJBError: a CSV is malformed, or names a template that has no image.
    """
    files = protocol_files_1n(root, target, directory)
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        where = "" if directory is not None else f" (looked in {', '.join(PROTOCOL_DIRS)})"
        raise UserFileError(*(f"{p}: no such IJB 1:N protocol file{where}" for p in missing))
    parts = {key: read_template_subjects(path) for key, path in files.items()}
    for key, part in parts.items():
        unknown = np.setdiff1d(part.templates, known_templates)
        if unknown.size:
            raise IJBError(
                f"{files[key]}: {unknown.size} templates have no image in {faces_file}"
                f" (e.g. {unknown[:5].tolist()})"
            )
    probes = parts.pop("probes")
    return IJB1NMeta(parts, probes, files)
