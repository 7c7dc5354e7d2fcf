"""IJB-B / IJB-C 1:1 verification in insightface's layout: metadata, template features, scores.

``ROOT/meta/<t>_face_tid_mid.txt``: ``image template media`` per face image;
``ROOT/meta/<t>_template_pair_label.txt``: ``template1 template2 label`` per pair (1 same);
``ROOT/meta/<t>_name_5pts_score.txt``: ``image x1 y1 ... x5 y5 score`` (five landmarks and the
detector's faceness score), in the same image order; the photos in ``ROOT/loose_crop/``.
``<t>`` is ``ijbc`` or ``ijbb``.

A template is the set of images of one subject in one comparison. Its feature is the sum over
its medias (a photo, or a video whose frames count once together) of the mean image feature of
the media, L2-normalised; a pair's score is the cosine of its two template features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.errors import UserError, UserFileError
from partialfc.eval.roc import DEFAULT_FARS, FAR_MODES, roc_curve, tar_at_far

TARGETS = ("IJBC", "IJBB")
IMAGE_DIR = "loose_crop"

__all__ = [
    "DEFAULT_FARS",
    "FAR_MODES",
    "TARGETS",
    "IJBError",
    "IJBMeta",
    "image_features",
    "meta_files",
    "pair_scores",
    "read_meta",
    "roc_curve",
    "tar_at_far",
    "template_features",
]


class IJBError(UserError, ValueError):
    """An IJB metadata file is malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class IJBMeta:
    """One protocol's metadata: N face images and P template pairs."""

    names: list[str]
    """(N,) image file names, relative to ``ROOT/loose_crop``."""
    templates: np.ndarray
    """(N,) int64 template id of each image."""
    medias: np.ndarray
    """(N,) int64 media id of each image."""
    landmarks: np.ndarray
    """(N, 5, 2) float32 landmark pixels (x, y)."""
    det_scores: np.ndarray
    """(N,) float32 detector faceness scores."""
    t1: np.ndarray
    """(P,) int64 first template of each pair."""
    t2: np.ndarray
    """(P,) int64 second template."""
    labels: np.ndarray
    """(P,) int64, 1 same subject, 0 different."""


def meta_files(root: str | os.PathLike[str], target: str) -> dict[str, Path]:
    """The three metadata files of ``target`` under ``root``."""
    if target not in TARGETS:
        raise IJBError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    meta, t = Path(root) / "meta", target.lower()
    return {
        "faces": meta / f"{t}_face_tid_mid.txt",
        "pairs": meta / f"{t}_template_pair_label.txt",
        "landmarks": meta / f"{t}_name_5pts_score.txt",
    }


def _read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # IJB-C has 15.6M pairs: numpy's C text parser, not a Python loop over lines.
    text = path.read_bytes()
    values = np.array(text.split(), dtype=np.int64) if text.strip() else np.zeros(0, np.int64)
    if values.size == 0 or values.size % 3:
        raise IJBError(
            f"{path}: expected lines 'template1 template2 label', got {values.size} numbers"
        )
    pairs = values.reshape(-1, 3)
    if not np.isin(pairs[:, 2], (0, 1)).all():
        raise IJBError(f"{path}: labels (third column) must be 0 or 1")
    return pairs[:, 0], pairs[:, 1], pairs[:, 2]


def _read_named_rows(
    path: Path, layout: str, fields: int, dtype: type
) -> tuple[list[str], np.ndarray]:
    """Lines of ``fields`` fields as ``layout`` shows them: the names and a table of the rest."""
    names, rows = [], []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise IJBError(f"{path}:{number}: expected '{layout}', got {len(parts)} fields")
            names.append(parts[0])
            rows.append(parts[1:])
    try:
        table = np.array(rows, dtype=dtype).reshape(-1, fields - 1)
    except ValueError as exc:
        raise IJBError(f"{path}: the fields after the image name must be numbers ({exc})") from None
    return names, table


def read_meta(root: str | os.PathLike[str], target: str, pairs: bool = True) -> IJBMeta:
    """Reads and cross-checks ``target``'s three metadata files under ``root``.

    Args:
        root: the IJB folder.
        target: ``IJBC`` or ``IJBB``.
        pairs: read the 1:1 pair file too (1:N alone needs only the images: no pairs then).

    Raises:
        UserFileError: a file is missing.
        IJBError: a file is malformed, the two image lists differ, or a pair names a template
            that has no image.
    """
    files = meta_files(root, target)
    if not pairs:
        del files["pairs"]
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserFileError(*(f"{p}: no such IJB metadata file" for p in missing))
    names, ids = _read_named_rows(files["faces"], "image template media", 3, np.int64)
    templates, medias = ids[:, 0], ids[:, 1]
    layout = "image x1 y1 ... x5 y5 score"
    lmk_names, table = _read_named_rows(files["landmarks"], layout, 12, np.float32)
    landmarks, det_scores = table[:, :10].reshape(-1, 5, 2), table[:, 10]
    # insightface pairs the two files by line; a mismatch would silently misalign every feature.
    if lmk_names != names:
        at = next(
            (i for i, (a, b) in enumerate(zip(names, lmk_names, strict=False)) if a != b), None
        )
        where = (
            f"line {at + 1} names {names[at]!r} in one and {lmk_names[at]!r} in the other"
            if at is not None
            else f"{len(names)} and {len(lmk_names)} images"
        )
        raise IJBError(f"{files['faces']} and {files['landmarks']} list different images: {where}")
    if not pairs:
        none = np.zeros(0, dtype=np.int64)
        return IJBMeta(names, templates, medias, landmarks, det_scores, none, none, none)
    t1, t2, labels = _read_pairs(files["pairs"])
    unknown = np.setdiff1d(np.r_[t1, t2], templates)
    if unknown.size:
        raise IJBError(
            f"{files['pairs']}: {unknown.size} templates have no image in {files['faces']}"
            f" (e.g. {unknown[:5].tolist()})"
        )
    return IJBMeta(names, templates, medias, landmarks, det_scores, t1, t2, labels)


def image_features(
    raw: np.ndarray,
    det_scores: np.ndarray | None = None,
    flip: bool = True,
    norm: bool = True,
) -> np.ndarray:
    """Per-image features from the embeddings of each image and of its mirror image.

    insightface's switches, with its defaults: ``flip`` adds the mirror's embedding (else only the
    image's is used); ``norm`` keeps the feature's length, a quality weight when images are
    averaged into a template (else each feature is unit length); ``det_scores``, when given,
    multiply each feature.

    Args:
        raw: (N, 2, D) unnormalised embeddings, ``[:, 0]`` the image, ``[:, 1]`` its mirror.
        det_scores: (N,) detector scores, or None for none.
        flip: add the mirror's embedding.
        norm: keep the feature norm.

    Returns:
        (N, D) float32.
    """
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[1] != 2:
        raise ValueError(f"raw embeddings must be (N, 2, D), got {raw.shape}")
    feats = raw[:, 0] + raw[:, 1] if flip else raw[:, 0].copy()
    feats = feats.astype(np.float32, copy=False)
    if not norm:
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if det_scores is not None:
        feats *= np.asarray(det_scores, dtype=np.float32)[:, None]
    return feats


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    return np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Template features: per template, the sum over its medias of their mean image feature.

    Args:
        features: (N, D) image features.
        templates: (N,) template id of each image.
        medias: (N,) media id of each image.

    Returns:
        ``(unique_templates, template_feats)``: (T,) sorted template ids and (T, D) float64 unit
        rows (a template whose sum is zero stays zero).
    """
    features = np.asarray(features)
    templates, medias = np.asarray(templates).ravel(), np.asarray(medias).ravel()
    if not (features.ndim == 2 and features.shape[0] == templates.size == medias.size):
        raise ValueError(
            f"features {features.shape}, templates {templates.shape}, medias {medias.shape} differ"
        )
    # Sort by (template, media) once; a media is then a run of rows, a template a run of medias.
    order = np.lexsort((medias, templates))
    t_sorted, m_sorted = templates[order], medias[order]
    media_start = np.r_[0, np.flatnonzero((np.diff(t_sorted) != 0) | (np.diff(m_sorted) != 0)) + 1]
    counts = np.diff(np.r_[media_start, order.size])
    media_sum = np.add.reduceat(features[order], media_start, axis=0, dtype=np.float64)
    media_mean = media_sum / counts[:, None]
    media_template = t_sorted[media_start]
    template_start = _group_starts(media_template)
    feats = np.add.reduceat(media_mean, template_start, axis=0)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)
    return media_template[template_start], feats


def pair_scores(
    template_feats: np.ndarray,
    unique_templates: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    chunk: int = 1 << 17,
) -> np.ndarray:
    """Cosine score of each template pair ``(t1[i], t2[i])``.

    Args:
        template_feats: (T, D) unit template features.
        unique_templates: (T,) their sorted ids, as :func:`template_features` returns them.
        t1: (P,) first template of each pair.
        t2: (P,) second template.
        chunk: pairs scored at once (bounds the memory to ``2 * chunk * D`` floats).

    Returns:
        (P,) float64 scores.

    Raises:
        ValueError: a pair names a template that is not in ``unique_templates``.
    """
    unique_templates = np.asarray(unique_templates)
    t1, t2 = np.asarray(t1).ravel(), np.asarray(t2).ravel()
    if t1.shape != t2.shape:
        raise ValueError(f"{t1.size} first templates but {t2.size} second ones")
    rows = []
    for ids in (t1, t2):
        index = np.clip(np.searchsorted(unique_templates, ids), 0, unique_templates.size - 1)
        found = unique_templates[index] == ids
        if not found.all():
            raise ValueError(
                f"pairs name templates with no feature: {np.unique(ids[~found])[:5].tolist()}"
            )
        rows.append(index)
    scores = np.empty(t1.size, dtype=np.float64)
    for start in range(0, t1.size, chunk):
        a = template_feats[rows[0][start : start + chunk]]
        b = template_feats[rows[1][start : start + chunk]]
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores
