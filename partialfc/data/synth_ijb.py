"""A synthetic IJB-B/C tree in insightface's layout, for tests and demos of ``eval-ijb``.

Subjects are identities of the synthetic face generator (a stream of their own: none of them is
in a ``synth`` training set). Each subject has templates, each template medias (a photo, or a
"video" of several frames), each media frames. A frame is a rendered aligned face placed into a
larger "loose crop" photo by a random similarity (scale, rotation, shift), so alignment has work
to do; its five landmarks are where that placement puts the ArcFace template's points, plus a
pixel of detector noise, and its faceness score is drawn in [0.5, 1]. Pairs: every two templates
of one subject (label 1) and as many pairs of different subjects (label 0).

The 1:N protocol, in NIST's CSVs beside the 1:1 files: the subjects are split at random into two
disjoint galleries (``G1``/``G2``, ``S1``/``S2`` for IJB-B) of one template each, the subject's
first; all their other templates are the mixed probes, so every probe is mated in exactly one
gallery, as in IJB-C.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data._pool import ordered_map
from partialfc.data.align import ARCFACE_TEMPLATE, warp_affine
from partialfc.data.images import encode_image
from partialfc.data.synth_faces import identity_params, render_face

_SUBJECTS = 5  # random stream of the subjects' identities, apart from synth's 0..4
_LAYOUT = 6  # stream of the template / media / frame structure and of the pairs
_GALLERY = 7  # stream of the 1:N gallery split (its own, so the 1:1 files stay as they were)
_CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"


@dataclass(frozen=True)
class SynthIJBConfig:
    """What ``synth --ijb`` generates."""

    subjects: int = 20
    """Distinct identities."""
    templates_per_subject: int = 3
    """Templates of each subject (>= 2, so that there are same-subject pairs)."""
    max_medias: int = 3
    """Medias per template: 1 .. this many."""
    max_frames: int = 3
    """Frames per media: 1 .. this many."""
    photo_size: int = 160
    """Side of the loose-crop photos, pixels."""
    target: str = "IJBC"
    """File prefix: ``IJBC`` writes ``ijbc_*``, ``IJBB`` ``ijbb_*``."""
    seed: int = 0
    """Same seed, same files."""

    def __post_init__(self) -> None:
        if self.subjects < 2:
            raise ValueError(f"SynthIJBConfig.subjects must be >= 2, got {self.subjects}")
        if self.templates_per_subject < 2:
            raise ValueError(
                f"SynthIJBConfig.templates_per_subject must be >= 2, got {self.templates_per_subject}"
            )
        for name in ("max_medias", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthIJBConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.photo_size < 112:
            raise ValueError(f"SynthIJBConfig.photo_size must be >= 112, got {self.photo_size}")
        if self.target not in ("IJBC", "IJBB"):
            raise ValueError(f"SynthIJBConfig.target must be IJBC or IJBB, got {self.target!r}")


def _placement(rng: np.random.Generator, photo: int) -> np.ndarray:
    """A random similarity from the 112 crop into the photo, keeping the face inside."""
    scale = rng.uniform(0.9, 1.25) * photo / 160
    angle = math.radians(rng.uniform(-25, 25))
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    centre = photo / 2 + rng.uniform(-0.08, 0.08, 2) * photo
    return np.hstack([rotation, (centre - rotation @ np.array([56.0, 56.0]))[:, None]])


def _frame(args: tuple[SynthIJBConfig, int, int]) -> tuple[bytes, np.ndarray, float]:
    """One loose-crop photo of ``subject``: JPEG bytes, its five landmarks and a faceness score."""
    cfg, subject, frame = args
    params = identity_params(np.random.default_rng([cfg.seed, _SUBJECTS, subject]))
    rng = np.random.default_rng([cfg.seed, _SUBJECTS, subject, frame + 1])
    face = render_face(params, rng)
    matrix = _placement(rng, cfg.photo_size)
    size = (cfg.photo_size, cfg.photo_size)
    background = rng.uniform(0, 255, 3)
    mask = warp_affine(np.ones((112, 112), dtype=np.float64), matrix, size)[..., None]
    photo = warp_affine(face, matrix, size) * mask + background * (1 - mask)
    photo = np.clip(photo + rng.normal(0, 4, photo.shape), 0, 255).astype(np.uint8)
    landmarks = ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2] + rng.normal(0, 0.7, (5, 2))
    return encode_image(photo, ".jpg", 92), landmarks, float(rng.uniform(0.5, 1.0))


def synth_ijb(
    root: str | os.PathLike[str],
    cfg: SynthIJBConfig | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Writes ``root/loose_crop/*.jpg``, ``root/meta/<t>_*.txt`` and the 1:N ``<t>_1N_*.csv``.

    Returns:
        Counts: ``images``, ``templates``, ``pairs``, ``same`` (same-subject pairs),
        ``probes`` (1:N probe templates) and the number of subjects of each gallery.
    """
    cfg = cfg or SynthIJBConfig()
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, _LAYOUT])
    faces: list[tuple[int, int, int]] = []  # (subject, template, media) of each image
    template_subject = []
    media = 0
    for subject in range(cfg.subjects):
        for _ in range(cfg.templates_per_subject):
            template = len(template_subject) + 1
            template_subject.append(subject)
            for _ in range(int(rng.integers(1, cfg.max_medias + 1))):
                media += 1
                frames = int(rng.integers(1, cfg.max_frames + 1))
                faces += [(subject, template, media)] * frames
    subjects = np.array(template_subject)
    t1, t2 = np.triu_indices(subjects.size, k=1)
    same = subjects[t1] == subjects[t2]
    different = np.flatnonzero(~same)
    chosen = np.sort(
        rng.choice(different, size=min(different.size, int(same.sum())), replace=False)
    )
    keep = np.sort(np.r_[np.flatnonzero(same), chosen])

    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tasks = [(cfg, subject, i) for i, (subject, _, _) in enumerate(faces)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    prefix = root / "meta" / cfg.target.lower()
    with (
        open(f"{prefix}_face_tid_mid.txt", "w") as tid_mid,
        open(f"{prefix}_name_5pts_score.txt", "w") as five_points,
    ):
        results = ordered_map(_frame, tasks, workers, "synth ijb", progress)
        for i, ((_, template, media_id), (jpeg, landmarks, score)) in enumerate(
            zip(faces, results, strict=True)
        ):
            name = f"{i + 1}.jpg"
            (root / "loose_crop" / name).write_bytes(jpeg)
            tid_mid.write(f"{name} {template} {media_id}\n")
            points = " ".join(f"{v:.3f}" for v in landmarks.ravel())
            five_points.write(f"{name} {points} {score:.4f}\n")
    pairs = np.stack([t1[keep] + 1, t2[keep] + 1, same[keep].astype(int)], axis=1)
    np.savetxt(f"{prefix}_template_pair_label.txt", pairs, fmt="%d")
    galleries = _write_1n(prefix, cfg, faces, subjects)
    return {
        "images": len(faces),
        "templates": int(subjects.size),
        "pairs": int(keep.size),
        "same": int(same.sum()),
        "probes": int(subjects.size - cfg.subjects),
        **galleries,
    }


def _write_1n(
    prefix: str,
    cfg: SynthIJBConfig,
    faces: list[tuple[int, int, int]],
    template_subject: np.ndarray,
) -> dict[str, int]:
    """The two galleries and the mixed probes as NIST's CSVs, one row per image; their sizes."""
    galleries = ("S1", "S2") if cfg.target == "IJBB" else ("G1", "G2")
    order = np.random.default_rng([cfg.seed, _GALLERY]).permutation(cfg.subjects)
    in_first = np.zeros(cfg.subjects, dtype=bool)
    in_first[order[: cfg.subjects // 2]] = True
    # Template ids are 1-based and a subject's templates consecutive: its first is its gallery's.
    first_template = 1 + np.arange(cfg.subjects) * cfg.templates_per_subject
    assert (template_subject[first_template - 1] == np.arange(cfg.subjects)).all()
    keys = [f"gallery_{g}" for g in galleries] + ["probe_mixed"]
    rows: dict[str, list[str]] = {key: [_CSV_HEADER] for key in keys}
    for i, (subject, template, media) in enumerate(faces):
        if template == first_template[subject]:
            key = keys[0] if in_first[subject] else keys[1]
        else:
            key = keys[2]
        # NIST's FILENAMEs are not insightface's loose_crop names; eval-ijb never reads them.
        rows[key].append(f"{template},{subject + 1},img/{i + 1}.jpg,{media}\n")
    for key in keys:
        Path(f"{prefix}_1N_{key}.csv").write_text("".join(rows[key]))
    return {keys[0]: int(in_first.sum()), keys[1]: int((~in_first).sum())}
