"""``partialfc eval-ijb MODEL ROOT --target IJBC|IJBB --out DIR``: IJB-B/C 1:1 TAR@FAR, 1:N.

MODEL is a partialfc run or checkpoint folder or an ``.onnx`` file; ROOT is insightface's IJB
layout (see :mod:`partialfc.eval.ijb`). Writes ``DIR/result.json``, ``DIR/roc.png``,
``DIR/scores.npy`` and the raw embeddings ``DIR/features.npy`` (reused by a later run on the
same model, root and target, so other options re-score without embedding again). With
``--protocol 1:N`` (or ``1:1 1:N``) also the open-set identification of NIST's mixed probes in
the two galleries (:mod:`partialfc.eval.ijb_1n_meta`), ``DIR/tpir_<gallery>.png``. Under
torchrun every rank embeds a slice; rank 0 scores and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from partialfc.eval.ijb_1n import DEFAULT_FPIRS, DEFAULT_RANKS, FPIR_MODES
from partialfc.eval.roc import DEFAULT_FARS, FAR_MODES

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from partialfc.eval.ijb import IJBMeta
    from partialfc.eval.ijb_1n_meta import IJB1NMeta
    from partialfc.train.runtime import Runtime


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a partialfc run or checkpoint folder, or an .onnx model")
    parser.add_argument("root", type=Path, help="IJB folder: meta/ and loose_crop/")
    parser.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--far-mode",
        choices=FAR_MODES,
        default="at_most",
        help="at_most: best TAR with FAR <= target (default); nearest: insightface's rule",
    )
    parser.add_argument(
        "--fars",
        type=float,
        nargs="+",
        default=list(DEFAULT_FARS),
        help="target FARs (default 1e-6 ... 1e-1)",
    )
    for flag, what in (
        ("flip", "add the mirror image's feature"),
        ("norm-score", "keep feature norms as quality weights"),
        ("detector-score", "weight features by the detector's faceness score"),
    ):  # insightface's three switches, on by default as there
        parser.add_argument(
            f"--{flag}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"{what} (default: on)",
        )
    _identification_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="image decode/align workers")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--recompute", action="store_true", help="embed again even if DIR/features.npy matches"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _identification_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        nargs="+",
        default=["1:1"],
        metavar="{1:1,1:N}",
        help="1:1 verification (default), 1:N identification, or both (1:1 1:N, or 1:1,1:N)",
    )
    parser.add_argument(
        "--protocol-dir",
        type=Path,
        default=None,
        help="folder of the 1:N CSVs (default: ROOT/meta, else ROOT/protocols)",
    )
    parser.add_argument(
        "--fpirs",
        type=float,
        nargs="+",
        default=list(DEFAULT_FPIRS),
        help="1:N target FPIRs (default 1e-2 1e-1)",
    )
    parser.add_argument(
        "--fpir-mode",
        choices=FPIR_MODES,
        default="at_most",
        help="at_most: best TPIR with FPIR <= target (default); kth: Keras_insightface's rule",
    )
    parser.add_argument(
        "--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS), help="1:N rank-k (1 5 10)"
    )


def _protocols(values: list[str]) -> tuple[str, ...]:
    """``1:1``/``1:N`` from ``--protocol`` values, commas or spaces between, any case."""
    from partialfc.errors import ConfigError

    names = {"1:1": "1:1", "11": "1:1", "1:n": "1:N", "1n": "1:N"}
    chosen = []
    for value in ",".join(values).split(","):
        name = names.get(value.strip().lower())
        if name is None:
            raise ConfigError(f"--protocol must be 1:1 or 1:N, got {value.strip()!r}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _model_key(path: Path) -> str:
    # The file (or the newest checkpoint) and its modification time: retraining invalidates.
    if path.suffix.lower() != ".onnx":
        from partialfc.checkpoint import resolve

        path = resolve(path)
    return f"{path.resolve()}@{path.stat().st_mtime_ns}"


def run(args: argparse.Namespace) -> int:
    from partialfc.errors import ConfigError, UserFileError
    from partialfc.eval import ijb_run
    from partialfc.eval.ijb import read_meta
    from partialfc.eval.models import load_model
    from partialfc.eval.plot import roc_png
    from partialfc.train.runtime import init_runtime, shutdown

    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    if any(not 0 < f <= 1 for f in args.fars):
        raise ConfigError(f"--fars must lie in (0, 1], got {args.fars}")
    if any(not 0 < f <= 1 for f in args.fpirs) or any(k < 1 for k in args.ranks):
        raise ConfigError(
            f"--fpirs must lie in (0, 1] and --ranks be >= 1: {args.fpirs}, {args.ranks}"
        )
    protocols = _protocols(args.protocol)
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserFileError(f"{model_path}: no such model (an .onnx file or a checkpoint folder)")
    # A bad root fails before any model is loaded.
    meta = read_meta(args.root, args.target, pairs="1:1" in protocols)
    one_to_n = _read_1n(args, meta) if "1:N" in protocols else None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        key = ijb_run.features_key(_model_key(model_path), args.root, args.target, meta.names)
    except FileNotFoundError as exc:
        raise UserFileError(str(exc)) from None
    raw = None if args.recompute else ijb_run.cached_features(out, key)
    if raw is not None and int(os.environ.get("RANK", "0")) != 0:
        return 0  # nothing to embed: rank 0 alone scores the cached features
    rt = None
    started = time.perf_counter()
    if raw is None:
        rt = init_runtime() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        device = _device(args.device, rt)
        model, described = load_model(model_path, device)
        rank, world = (rt.rank, rt.world_size) if rt else (0, 1)
        if rank == 0:
            print(f"embedding {len(meta.names)} images with {described} on {device}", flush=True)
        raw = ijb_run.embed_protocol(
            model, args.root, meta, args.batch_size, args.workers, not args.no_progress,
            rank, world, _gather(device) if world > 1 else None,
        )  # fmt: skip
        if rank != 0:
            shutdown()
            return 0
        ijb_run.save_features(out, key, raw)
    else:
        print(f"using the cached features in {out / ijb_run.FEATURES_FILE}", flush=True)
    embed_s = time.perf_counter() - started
    result = {"target": args.target, "model": str(model_path), "protocols": list(protocols)}
    written = [out / "result.json"]
    if "1:1" in protocols:
        options = ijb_run.ScoreOptions(
            args.flip, args.norm_score, args.detector_score, args.far_mode, tuple(args.fars)
        )
        verification, scores, (far, tar) = ijb_run.score_protocol(meta, np.asarray(raw), options)
        result.update(verification)
        np.save(out / "scores.npy", scores)
        marks = dict(zip(options.fars, verification["tar_at_far"].values(), strict=True))
        roc_png(out / "roc.png", far, tar, marks, f"ROC on {args.target}: {model_path.name}")
        print(ijb_run.table(args.target, verification))
        written.append(out / "roc.png")
    if one_to_n is not None:
        result["identification"] = _identify(args, meta, one_to_n, np.asarray(raw), model_path)
        written += [out / f"tpir_{g}.png" for g in one_to_n.galleries]
    result["embed_seconds"] = embed_s
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {', '.join(str(p) for p in written)}")
    if rt is not None:
        shutdown()
    return 0


def _read_1n(args: argparse.Namespace, meta: IJBMeta) -> IJB1NMeta:
    from partialfc.eval.ijb import meta_files
    from partialfc.eval.ijb_1n_meta import read_1n_meta

    faces = meta_files(args.root, args.target)["faces"]
    return read_1n_meta(args.root, args.target, meta.templates, args.protocol_dir, faces)


def _identify(
    args: argparse.Namespace, meta: IJBMeta, protocol: IJB1NMeta, raw: np.ndarray, model: Path
) -> dict:
    """Scores, prints and plots 1:N; returns its ``result.json`` part."""
    from partialfc.eval.ijb_1n_run import (
        IdentificationOptions,
        identification_table,
        score_identification,
    )
    from partialfc.eval.plot import roc_png

    options = IdentificationOptions(tuple(args.fpirs), tuple(args.ranks), args.fpir_mode)
    result, curves = score_identification(
        meta, protocol, raw, args.flip, args.norm_score, args.detector_score, options
    )
    for name, (fpir, tpir) in curves.items():
        marks = dict(
            zip(options.fpirs, result["galleries"][name]["tpir_at_fpir"].values(), strict=True)
        )
        roc_png(
            args.out / f"tpir_{name}.png",
            fpir,
            tpir,
            marks,
            f"{args.target} 1:N, gallery {name}: {model.name}",
            far_range=(1e-4, 1.0),
            x_label="FPIR (false positive identification rate)",
            y_label="TPIR (rank 1)",
        )
    print(identification_table(args.target, result))
    return result


def _device(choice: str, rt: Runtime | None) -> torch.device:
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    if rt is not None:
        return rt.device
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from partialfc.errors import ConfigError

            raise ConfigError("--device cuda: no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _gather(device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    import torch
    import torch.nn.functional as F

    from partialfc.distributed import all_gather_no_grad, world_size

    def gather(mine: np.ndarray) -> np.ndarray:
        # Slices differ by at most one row: pad to equal size, gather, drop the padding.
        sizes = all_gather_no_grad(torch.tensor([mine.shape[0]], device=device), None).tolist()
        per = max(sizes)
        local = torch.from_numpy(mine).to(device)
        padded = F.pad(local, (0, 0, 0, 0, 0, per - local.shape[0]))
        every = all_gather_no_grad(padded, None).view(world_size(), per, *mine.shape[1:])
        return np.concatenate([every[r, : sizes[r]].cpu().numpy() for r in range(len(sizes))])

    return gather
