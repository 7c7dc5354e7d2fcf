"""`partialfc eval-ijb` end to end on a synthetic IJB tree, against a direct re-computation."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partialfc.data.align import norm_crop
from partialfc.data.synth_ijb import SynthIJBConfig, synth_ijb
from partialfc.eval.ijb import read_meta
from partialfc.eval.ijb_1n_meta import read_1n_meta
from partialfc.eval.ijb_run import ScoreOptions, embed_protocol, score_protocol
from partialfc.export import onnx_program

FARS = (0.01, 0.05, 0.1, 0.3)


class _Pixels(torch.nn.Module):
    """A face 'model' that knows nothing but colour layout: 7x7 mean colours, centred."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.adaptive_avg_pool2d(x, 7).flatten(1)
        return f - f.mean(dim=1, keepdim=True)


class _Noise(torch.nn.Module):
    """Features that ignore the image: chance level."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape[0], 64, generator=torch.Generator().manual_seed(int(x.sum())))


def _pixel_features(x: np.ndarray) -> np.ndarray:
    """_Pixels in numpy on one (3, 112, 112) normalised image: 16x16 block means, centred."""
    f = x.reshape(3, 7, 16, 7, 16).mean(axis=(2, 4)).ravel()
    return f - f.mean()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ijb")
    synth_ijb(root, SynthIJBConfig(subjects=10, templates_per_subject=3, max_frames=2), workers=1)
    return root


@pytest.fixture(scope="module")
def pixel_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "pixels.onnx"
    onnx_program(_Pixels().eval(), torch.randn(2, 3, 112, 112)).save(str(path))  # as export does
    return path


def _direct_template_features(root: Path, flip: bool) -> dict[int, np.ndarray]:
    """Every step written out plainly: decode, align, embed, insightface's template loop."""
    meta = read_meta(root, "IJBC")
    feats = []
    for name, landmarks, score in zip(meta.names, meta.landmarks, meta.det_scores, strict=True):
        pixels = np.asarray(Image.open(root / "loose_crop" / name).convert("RGB"))
        x = (norm_crop(pixels, landmarks).transpose(2, 0, 1).astype(np.float64) - 127.5) / 127.5
        f = _pixel_features(x) + (_pixel_features(x[:, :, ::-1]) if flip else 0)
        feats.append(f * score)  # the norm is kept; the detector score multiplies
    feats = np.array(feats)
    template_feats = {}
    for t in np.unique(meta.templates):
        rows = meta.templates == t
        medias = np.unique(meta.medias[rows])
        total = sum(feats[rows & (meta.medias == m)].mean(axis=0) for m in medias)
        template_feats[t] = total / np.linalg.norm(total)
    return template_feats


def _direct_tar(root: Path, flip: bool) -> dict[float, float]:
    """Template cosines of the pairs, then TAR at FAR over every threshold."""
    meta = read_meta(root, "IJBC")
    template_feats = _direct_template_features(root, flip)
    scores = np.array(
        [template_feats[a] @ template_feats[b] for a, b in zip(meta.t1, meta.t2, strict=True)]
    )
    same = meta.labels == 1
    out = {}
    for target in FARS:
        best = 0.0
        for threshold in np.r_[scores, np.inf]:
            if (scores[~same] >= threshold).mean() <= target:
                best = max(best, (scores[same] >= threshold).mean())
        out[target] = best
    return out


def _eval_ijb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "partialfc", "eval-ijb", *args, "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_eval_ijb_matches_a_direct_computation(
    tree: Path, pixel_onnx: Path, tmp_path: Path
) -> None:
    fars = [str(f) for f in FARS]
    done = _eval_ijb(str(pixel_onnx), str(tree), "--out", str(tmp_path), "--fars", *fars)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    direct = _direct_tar(tree, flip=True)
    got = [result["tar_at_far"][f"{f:g}"] for f in FARS]
    # uint8 warps may round a pixel differently from the float pipeline: a pair at most
    assert got == pytest.approx(list(direct.values()), abs=1.5 / result["same_pairs"])
    assert got[-1] > 0.5, "colour layout alone tells these subjects apart well above chance"
    assert "TAR (%)" in done.stdout and f"{100 * got[-1]:.2f}" in done.stdout
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = np.load(tmp_path / "features.npy")
    assert features.shape == (result["images"], 2, 147)
    # Other options re-score the cached features without embedding again.
    again = _eval_ijb(
        str(pixel_onnx), str(tree), "--out", str(tmp_path), "--fars", *fars, "--no-flip",
        "--far-mode", "nearest",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "using the cached features" in again.stdout and "embedding" not in again.stdout
    rescored = json.loads((tmp_path / "result.json").read_text())
    assert rescored["far_mode"] == "nearest" and rescored["options"]["flip"] is False
    no_flip = [rescored["tar_at_far_by_mode"]["at_most"][f"{f:g}"] for f in FARS]
    assert no_flip == pytest.approx(
        list(_direct_tar(tree, flip=False).values()), abs=1.5 / result["same_pairs"]
    )


FPIRS = (0.1, 0.3)


def _csv_subjects(path: Path) -> dict[int, int]:
    with path.open(newline="") as f:
        return {int(r["TEMPLATE_ID"]): int(r["SUBJECT_ID"]) for r in csv.DictReader(f)}


def _direct_identification(root: Path) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """Per gallery ``(rank-k rates, TPIR at FPIR)``: NIST's definitions, one search at a time."""
    feats = _direct_template_features(root, flip=True)
    probes = _csv_subjects(root / "meta" / "ijbc_1N_probe_mixed.csv")
    out = {}
    for name in ("G1", "G2"):
        gallery = _csv_subjects(root / "meta" / f"ijbc_1N_gallery_{name}.csv")
        ranks, mates, false_alarm_tops = [], [], []
        for p, subject in probes.items():
            scores = {g: feats[p] @ feats[g] for g in gallery}
            if subject in gallery.values():
                mate = max(v for g, v in scores.items() if gallery[g] == subject)
                ranks.append(1 + sum(v >= mate for g, v in scores.items() if gallery[g] != subject))
                mates.append(mate)
            else:
                false_alarm_tops.append(max(scores.values()))
        ranks, mates, tops = np.array(ranks), np.array(mates), np.array(false_alarm_tops)
        tpir = {}
        for target in FPIRS:
            ok = [t for t in np.r_[mates, tops, np.inf] if (tops >= t).mean() <= target]
            tpir[f"{target:g}"] = max(((ranks == 1) & (mates >= t)).mean() for t in ok)
        out[name] = ({str(k): (ranks <= k).mean() for k in (1, 5)}, tpir)
    return out


def test_eval_ijb_1n_matches_a_direct_computation(
    tree: Path, pixel_onnx: Path, tmp_path: Path
) -> None:
    fpirs = [str(f) for f in FPIRS]
    both = ["--protocol", "1:1", "1:N", "--fpirs", *fpirs, "--ranks", "1", "5"]
    done = _eval_ijb(str(pixel_onnx), str(tree), "--out", str(tmp_path), *both)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert "tar_at_far" in result, "1:1 keys stay where they were"
    ident = result["identification"]
    g1, g2 = ident["galleries"]["G1"], ident["galleries"]["G2"]
    # Disjoint galleries: each probe is mated in exactly one.
    assert g1["mated_probes"] + g2["mated_probes"] == ident["probes"] == 20
    assert g1["non_mated_probes"] == g2["mated_probes"] and g1["templates"] == 5
    direct = _direct_identification(tree)
    for name, g in ident["galleries"].items():
        ranks, tpir = direct[name]
        # uint8 warps may round a pixel differently from the float pipeline: a probe at most
        tolerance = 1.5 / g["mated_probes"]
        assert g["rank"] == pytest.approx(ranks, abs=tolerance)
        assert g["tpir_at_fpir"] == pytest.approx(tpir, abs=tolerance)
    mean_rank1 = (g1["rank"]["1"] + g2["rank"]["1"]) / 2
    assert ident["mean"]["rank"]["1"] == pytest.approx(mean_rank1)
    assert mean_rank1 >= 0.4, "colour layout finds the mate among 5 subjects: twice chance"
    assert "TAR (%)" in done.stdout and "1:N identification" in done.stdout
    assert f"{100 * mean_rank1:.2f}" in done.stdout.splitlines()[-2]  # the mean row
    for name in ("G1", "G2"):
        assert (tmp_path / f"tpir_{name}.png").read_bytes()[:4] == b"\x89PNG"
    # 1:N alone re-scores the cached features, with the public script's rule.
    again = _eval_ijb(
        str(pixel_onnx), str(tree), "--out", str(tmp_path), "--protocol", "1:N", "--fpirs",
        *fpirs, "--fpir-mode", "kth",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "using the cached features" in again.stdout and "TAR (%)" not in again.stdout
    rescored = json.loads((tmp_path / "result.json").read_text())
    assert "tar_at_far" not in rescored and rescored["identification"]["fpir_mode"] == "kth"
    kth = rescored["identification"]["galleries"]["G1"]["tpir_at_fpir"]
    assert kth == g1["tpir_at_fpir_by_mode"]["kth"]


def test_a_model_that_ignores_the_face_is_at_chance(tree: Path) -> None:
    meta = read_meta(tree, "IJBC")
    options = ScoreOptions(fars=FARS)
    informed, _, _ = score_protocol(
        meta, embed_protocol(_Pixels(), tree, meta, 32, 0, False), options
    )
    blind, _, _ = score_protocol(meta, embed_protocol(_Noise(), tree, meta, 32, 0, False), options)
    assert informed["auc"] > 0.75
    assert abs(blind["auc"] - 0.5) < 0.2
    assert blind["tar_at_far"]["0.1"] < informed["tar_at_far"]["0.1"] - 0.2


def test_eval_ijb_user_errors(tree: Path, pixel_onnx: Path, tmp_path: Path) -> None:
    done = _eval_ijb(str(pixel_onnx), str(tree), "--target", "IJBB", "--out", str(tmp_path))
    assert (
        done.returncode == 2 and "ijbb_face_tid_mid.txt: no such IJB metadata file" in done.stderr
    )
    done = _eval_ijb(str(tmp_path / "missing.onnx"), str(tree), "--out", str(tmp_path))
    assert done.returncode == 2 and "no such model" in done.stderr
    # 1:N alone needs no pair file, but its CSVs.
    bare = tmp_path / "bare"
    (bare / "meta").mkdir(parents=True)
    for name in ("ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt"):
        shutil.copy(tree / "meta" / name, bare / "meta" / name)
    done = _eval_ijb(str(pixel_onnx), str(bare), "--protocol", "1:N", "--out", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "ijbc_1N_gallery_G1.csv: no such IJB 1:N protocol file" in done.stderr


def test_torchrun_ranks_embed_slices_of_the_same_features(
    tree: Path, pixel_onnx: Path, tmp_path: Path
) -> None:
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    assert _eval_ijb(str(pixel_onnx), str(tree), "--out", str(single)).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend",
         "c10d", "--rdzv-endpoint", "localhost:0", "-m", "partialfc", "eval-ijb", str(pixel_onnx),
         str(tree), "--out", str(ranks), "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("TAR (%)") == 1, "rank 0 alone scores and prints"
    a, b = np.load(single / "features.npy"), np.load(ranks / "features.npy")
    assert a.shape == b.shape and a.shape[0] % 2 == 1, "an odd count: the slices are uneven"
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_synth_ijb_command_writes_a_readable_tree(tmp_path: Path) -> None:
    from partialfc.cli import main

    argv = [
        "synth",
        str(tmp_path),
        "--ijb",
        "IJBB",
        "--identities",
        "3",
        "--templates-per-subject",
        "2",
    ]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    meta = read_meta(tmp_path, "IJBB")
    assert np.unique(meta.templates).size == 6 and meta.labels.sum() == 3  # 3 subjects x 1 pair
    assert len(list((tmp_path / "loose_crop").iterdir())) == len(meta.names)
    assert ((meta.det_scores >= 0.5) & (meta.det_scores <= 1)).all()
    # 1:N: two disjoint galleries of one template per subject; every other template a probe.
    one_to_n = read_1n_meta(tmp_path, "IJBB", meta.templates)
    s1, s2 = one_to_n.galleries["S1"], one_to_n.galleries["S2"]
    assert sorted([*s1.subjects, *s2.subjects]) == [1, 2, 3] and s1.subjects.size in (1, 2)
    gallery_templates = np.r_[s1.templates, s2.templates]
    assert np.array_equal(
        np.sort(np.r_[gallery_templates, one_to_n.probes.templates]), np.arange(1, 7)
    )
    assert sorted(one_to_n.probes.subjects) == [1, 2, 3]
