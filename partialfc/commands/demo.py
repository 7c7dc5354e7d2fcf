"""``partialfc demo``: the whole product on two CPU ranks, offline, in minutes.

1. ``partialfc synth``: a synthetic face set (200 identities x 20 images) and a verification set
   of 100 *other* identities, in insightface's RecordIO layout, under ``runs/demo/data``;
2. ``torchrun --nproc_per_node 2 -m partialfc.train configs/demo_cpu.toml``: a tinyface backbone
   under DDP, a CosFace PartialFC head sharded over the two gloo ranks with sample_rate 0.5,
   checkpoints, metrics.jsonl, verification every 50 steps;
3. the held-out verification accuracy, then ``partialfc export`` to ONNX, checked against
   onnxruntime.

``--head-only`` runs the earlier, faster demo of the head alone: PartialFC learning 10k
identities from synthetic embeddings on two ranks, checked by identification on fresh samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

import partialfc as pfc
from partialfc.distributed import all_gather_no_grad
from partialfc.distributed.local import run_local
from partialfc.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo_cpu.toml"
MARKER = ".partialfc-demo.json"
"""Written into the demo's --out folder: it claims the folder and lists what the demo created."""
DATA_DIR = "data"
# What a run (torchrun, the trainer, the export) may leave that the demo did not record, because
# the run was killed before it could: the next run would resume from it, so it is refused.
_RUN_OUTPUTS = ("step-*", ".step-*", "metrics.jsonl")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--head-only", action="store_true", help="only the head on synthetic embeddings"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="output folder (full demo): new, empty, or one an earlier demo created",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override train.epochs (full demo)"
    )
    parser.add_argument("--identities", type=int, default=10_000, help="classes (--head-only)")
    parser.add_argument("--dim", type=int, default=128, help="embedding width (--head-only)")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks")
    parser.add_argument("--steps", type=int, default=400, help="training steps (--head-only)")
    parser.add_argument("--batch", type=int, default=512, help="global batch (--head-only)")
    parser.add_argument(
        "--sample-rate", type=float, default=0.2, help="PartialFC sample rate (--head-only)"
    )
    parser.add_argument(
        "--noise", type=float, default=1.0, help="noise relative to the signal (--head-only)"
    )
    parser.add_argument("--seed", type=int, default=0)


def _samples(
    directions: torch.Tensor, count: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    identities, dim = directions.shape
    labels = torch.randint(0, identities, (count,), generator=gen)
    noisy = directions[labels] + noise * torch.randn(count, dim, generator=gen) / dim**0.5
    return noisy, labels


@torch.no_grad()
def _identify(head: pfc.PartialFC, x: torch.Tensor) -> torch.Tensor:
    """Global class id of the nearest centre over all shards, for each row of ``x``.

    ``x`` must be the same on every rank: each rank scores it against its own shard.
    """
    scores = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()  # (n, C_r)
    best, where = scores.max(1)
    stats = torch.stack([best, (where + head.class_start).to(best.dtype)])  # (2, n)
    gathered = all_gather_no_grad(stats.unsqueeze(0), head.process_group)  # (W, 2, n)
    winner = gathered[:, 0].argmax(0)
    return gathered[:, 1].gather(0, winner.unsqueeze(0)).squeeze(0).long()


def _train(rank: int, world: int, args: argparse.Namespace) -> None:
    truth = torch.Generator().manual_seed(1234)  # the hidden identities: the same on every rank
    directions = F.normalize(torch.randn(args.identities, args.dim, generator=truth), dim=1)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own samples
    head = pfc.PartialFC(
        pfc.ArcFace(s=32.0, m=0.3),
        args.dim,
        args.identities,
        sample_rate=args.sample_rate,
        seed=args.seed,
    )
    opt = pfc.SparseSGD([head.weight], lr=0.5, momentum=0.9, weight_decay=5e-4)
    local = args.batch // world
    if rank == 0:
        print(
            f"PartialFC: {args.identities:,} identities over {world} ranks "
            f"({head.num_local:,} on rank 0), sample_rate {args.sample_rate}, batch {local * world}"
        )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = _samples(directions, local, args.noise, gen)
        opt.zero_grad(set_to_none=True)
        loss = head(x, y)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 50 == 0 or step == 1):
            rate = step * local * world / (time.perf_counter() - start)
            print(f"step {step:>5}  loss {loss.item():8.4f}  {rate:8.0f} samples/s", flush=True)
    x, y = _samples(directions, 2048 // world, args.noise, gen)
    x, y = all_gather_no_grad(x, head.process_group), all_gather_no_grad(y, head.process_group)
    accuracy = (_identify(head, x) == y).float().mean().item()
    if rank == 0:
        print(
            f"held-out identification accuracy: {accuracy:.3f} "
            f"(chance {1 / args.identities:.5f}) after {time.perf_counter() - start:.1f} s"
        )


def run(args: argparse.Namespace) -> int:
    if args.head_only:
        run_local(_train, args.ranks, args)
        return 0
    return _full_demo(args)


def _full_demo(args: argparse.Namespace) -> int:
    if not DEMO_CONFIG.exists():
        raise SystemExit(f"partialfc demo: {DEMO_CONFIG} not found; run it from a source checkout")
    out = args.out
    claim_out_dir(out)  # before any work: refuses a folder the demo did not create
    with recording_outputs(out):
        return _synth_train_export(args, out)


def _synth_train_export(args: argparse.Namespace, out: Path) -> int:
    from partialfc.checkpoint import load_backbone
    from partialfc.data.synth import SynthConfig, synth_dataset
    from partialfc.export import export_onnx

    data = out / DATA_DIR
    if not (data / "property").exists():
        print(f"[1/3] generating the synthetic face set in {data}", flush=True)
        synth_dataset(data, SynthConfig(seed=args.seed), progress=True)
    else:
        print(f"[1/3] using the synthetic face set in {data}", flush=True)
    overrides = [
        f"--data.root={data}", f"--train.output_dir={out}", f"--eval.sets={data / 'val.bin'}",
        f"--train.seed={args.seed}",
    ]  # fmt: skip
    if args.epochs is not None:
        overrides.append(f"--train.epochs={args.epochs}")
    print(
        f"[2/3] training on {args.ranks} CPU ranks under torchrun ({DEMO_CONFIG.name})", flush=True
    )
    start = time.perf_counter()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "-m", "partialfc.train",
        str(DEMO_CONFIG), *overrides,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    minutes = (time.perf_counter() - start) / 60
    evals = [
        r
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "eval/val" in r
    ]
    print(f"[3/3] exporting {out / 'model.onnx'}", flush=True)
    model, _ = load_backbone(out)
    worst = export_onnx(model, out / "model.onnx")
    print(
        f"\nheld-out verification accuracy (100 unseen identities, 10-fold, flip): "
        f"{evals[-1]['eval/val']:.4f} at step {evals[-1]['step']} after {minutes:.1f} min of training"
    )
    print("accuracy by step: " + ", ".join(f"{r['step']}: {r['eval/val']:.3f}" for r in evals))
    print(f"ONNX model {out / 'model.onnx'} (onnxruntime matches PyTorch to {worst:.1e})")
    return 0


# --------------------------------------------------------------------------- the --out folder
#
# The demo starts afresh each time, so it deletes its previous run's checkpoints and metrics; it
# must never delete anything else. It therefore claims the folder with a marker file and records
# in it every entry its runs create; only those are deleted. The synthetic data set is kept and
# reused.


def claim_out_dir(out: Path) -> None:
    """Makes ``out`` the demo's folder, removing what earlier demo runs recorded creating there.

    Raises:
        UserError: ``out`` is a file, or a non-empty folder the demo did not create, or a demo
            folder holding checkpoints or metrics that no demo run recorded.
    """
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise UserError(
            f"demo --out {out}: the folder is not empty and was not created by partialfc demo "
            f"(no {MARKER}); the demo deletes its previous run's checkpoints and metrics in its "
            "folder, so give it a new or empty one"
        )
    out.mkdir(parents=True, exist_ok=True)
    created = _read_marker(marker)
    for name in created:
        old = out / name
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
    _write_marker(marker, [])
    unknown = sorted(p.name for pattern in _RUN_OUTPUTS for p in out.glob(pattern))
    if unknown:
        raise UserError(
            f"demo --out {out}: holds {', '.join(unknown)}, which no demo run recorded creating "
            "(a run killed outright, or files put there); delete them or give another folder"
        )


@contextmanager
def recording_outputs(out: Path) -> Iterator[None]:
    """Records in the marker every entry of ``out`` that appears within the block (even if it
    fails or is interrupted), except the reusable data set."""
    before = set(os.listdir(out))
    try:
        yield
    finally:
        new = set(os.listdir(out)) - before - {MARKER, DATA_DIR}
        _write_marker(out / MARKER, sorted(new | set(_read_marker(out / MARKER))))


def _read_marker(marker: Path) -> list[str]:
    if not marker.is_file():
        return []
    try:
        created = json.loads(marker.read_text())["created"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{marker}: not a partialfc demo marker; delete it") from None
    # only plain names: a marker edited to say "../x" must not delete outside the folder
    return [
        n for n in created if isinstance(n, str) and n and "/" not in n and n not in ("..", ".")
    ]


def _write_marker(marker: Path, created: list[str]) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"created_by": "partialfc demo", "created": created}, indent=1))
    os.replace(tmp, marker)
