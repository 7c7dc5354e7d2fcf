"""Scoring IJB-B/C 1:N identification from the raw embeddings that the 1:1 path caches.

The image features and the template features are exactly the 1:1 ones (insightface's switches,
then the media-averaged, L2-normalised template sum of :func:`partialfc.eval.ijb.template_features`);
each probe template is searched in each gallery (cosine scores), and each gallery is reported on
its own and as the mean of the two, as papers report IJB-C 1:N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partialfc.eval.ijb import IJBMeta, image_features, template_features
from partialfc.eval.ijb_1n import (
    DEFAULT_FPIRS,
    DEFAULT_RANKS,
    FPIR_MODES,
    FpirMode,
    rank_rates,
    search,
    tpir_at_fpir,
    tpir_curve,
)
from partialfc.eval.ijb_1n_meta import IJB1NMeta, TemplateSubjects

TPIR_RANK = 1
"""TPIR counts a mated search as found when its mate is the first candidate (NIST's R = 1)."""


@dataclass(frozen=True)
class IdentificationOptions:
    """What the 1:N report contains."""

    fpirs: tuple[float, ...] = DEFAULT_FPIRS
    """Target FPIRs of TPIR at FPIR."""
    ranks: tuple[int, ...] = DEFAULT_RANKS
    """The k of the closed-set rank-k rates."""
    fpir_mode: FpirMode = "at_most"
    """``at_most`` or ``kth`` (Keras_insightface's rule); see :func:`tpir_at_fpir`."""


def _rows(
    unique: np.ndarray, feats: np.ndarray, part: TemplateSubjects
) -> tuple[np.ndarray, np.ndarray]:
    # read_1n_meta checked that every protocol template has images, so each one is found.
    index = np.searchsorted(unique, part.templates)
    assert np.array_equal(unique[index], part.templates), "a 1:N template without a feature"
    return feats[index], part.subjects


def score_identification(
    meta: IJBMeta,
    protocol: IJB1NMeta,
    raw: np.ndarray,
    flip: bool = True,
    norm: bool = True,
    detector_score: bool = True,
    options: IdentificationOptions | None = None,
) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The 1:N report and each gallery's ``(fpir, tpir)`` curve (rank 1) for plotting.

    Args:
        meta: the 1:1 metadata (images, templates, medias, detector scores).
        protocol: the galleries and probes.
        raw: (N, 2, D) raw embeddings of ``meta``'s images and their mirrors.
        flip, norm, detector_score: insightface's feature switches, as for 1:1.
        options: FPIRs, ranks and the TPIR-at-FPIR rule.
    """
    options = options or IdentificationOptions()
    feats = image_features(raw, meta.det_scores if detector_score else None, flip, norm)
    unique, template_feats = template_features(feats, meta.templates, meta.medias)
    probe_feats, probe_subjects = _rows(unique, template_feats, protocol.probes)
    galleries, curves = {}, {}
    for name, gallery in protocol.galleries.items():
        gallery_feats, gallery_subjects = _rows(unique, template_feats, gallery)
        searches = search(probe_feats, probe_subjects, gallery_feats, gallery_subjects)
        mated = int(searches.mated.sum())
        by_mode = {
            mode: tpir_at_fpir(searches, options.fpirs, TPIR_RANK, mode) for mode in FPIR_MODES
        }
        galleries[name] = {
            "templates": int(gallery.templates.size),
            "mated_probes": mated,
            "non_mated_probes": int(searches.mated.size - mated),
            "rank": {str(k): v for k, v in rank_rates(searches, options.ranks).items()},
            "tpir_at_fpir": {f"{f:g}": t for f, t in by_mode[options.fpir_mode].items()},
            "tpir_at_fpir_by_mode": {
                m: {f"{f:g}": t for f, t in v.items()} for m, v in by_mode.items()
            },
        }
        fpir, tpir, _ = tpir_curve(searches, TPIR_RANK)
        curves[name] = (fpir, tpir)
    # Papers report the plain mean of the two galleries' rates.
    mean = {
        key: {
            k: float(np.mean([g[key][k] for g in galleries.values()]))
            for k in galleries[next(iter(galleries))][key]
        }
        for key in ("rank", "tpir_at_fpir")
    }
    result = {
        "probes": int(protocol.probes.templates.size),
        "fpir_mode": options.fpir_mode,
        "tpir_rank": TPIR_RANK,
        "galleries": galleries,
        "mean": mean,
    }
    return result, curves


def identification_table(target: str, result: dict) -> str:
    """The stdout table: rank-k (%) and TPIR (%) at each FPIR, per gallery and their mean."""
    first = next(iter(result["galleries"].values()))
    ranks, fpirs = list(first["rank"]), list(first["tpir_at_fpir"])
    head = (
        f"{'gallery':<9}{'mated':>7}{'non-mated':>10}"
        + "".join(f"{'rank-' + k:>9}" for k in ranks)
        + "".join(f"{'@' + f:>9}" for f in fpirs)
    )
    lines = [
        f"{target} 1:N identification: {result['probes']} mixed probes; rank-k (%), then TPIR (%)"
        f" at FPIR ({result['fpir_mode']}, rank {result['tpir_rank']})",
        head,
    ]

    def rates(r: dict) -> str:
        values = [r["rank"][k] for k in ranks] + [r["tpir_at_fpir"][f] for f in fpirs]
        return "".join(f"{100 * v:>9.2f}" for v in values)

    for name, g in result["galleries"].items():
        lines.append(f"{name:<9}{g['mated_probes']:>7}{g['non_mated_probes']:>10}" + rates(g))
    lines.append(f"{'mean':<9}{'':>7}{'':>10}" + rates(result["mean"]))
    return "\n".join(lines)
