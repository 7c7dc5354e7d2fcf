"""Decoded-and-augmented images per second: torch loader (baseline) vs DALI CPU (and GPU).

Generates a ``synth`` dataset (112x112 JPEG) into a temporary folder, then times full epochs of
each loader at the same number of threads (DataLoader workers / DALI threads): decode, random
flip, normalise to float32 NCHW in [-1, 1]. Epochs of the loaders are interleaved; reports the
median of several timed epochs after warm-up epochs, prints a table and writes JSON.

    python benchmarks/data.py --threads 2 --out benchmarks/results/data.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from partialfc.data import RecordLoader, SynthConfig, synth_dataset


def time_epoch(loader) -> float:
    """Images per second of one full epoch of ``loader``."""
    n = 0
    start = time.perf_counter()
    for images, _ in loader:
        n += images.shape[0]
    if images.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--images-per-identity", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="workers / DALI threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs")
    parser.add_argument("--passes", type=int, default=5, help="timed epochs")
    parser.add_argument("--data", help="existing dataset folder (default: generate synth)")
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pfc-bench-data-") as tmp:
        root = args.data
        if root is None:
            root = tmp
            cfg = SynthConfig(
                identities=args.identities,
                images_per_identity=args.images_per_identity,
                val_pairs=0,
            )
            synth_dataset(root, cfg, workers=os.cpu_count())
        loaders = {
            "torch DataLoader (baseline)": RecordLoader(
                root, args.batch_size, num_workers=args.threads, seed=0
            )
        }
        if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
            from partialfc.data.dali import DaliLoader

            loaders["DALI cpu"] = DaliLoader(
                root, args.batch_size, num_threads=args.threads, device="cpu"
            )
            if torch.cuda.is_available():
                loaders["DALI mixed (GPU decode)"] = DaliLoader(
                    root, args.batch_size, num_threads=args.threads, device="gpu"
                )
        images = len(loaders["torch DataLoader (baseline)"]) * args.batch_size
        load_before = os.getloadavg()
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        # Interleaved epochs (A B A B ...): load from other processes on the machine then
        # falls on every loader alike instead of on whichever happened to run during it.
        for i in range(args.warmup + args.passes):
            for name, loader in loaders.items():
                rate = time_epoch(loader)
                if i >= args.warmup:
                    rates[name].append(rate)
        load_after = os.getloadavg()
        rows = [
            {
                "loader": name,
                "threads": args.threads,
                "median_img_s": statistics.median(r),
                "min_img_s": min(r),
                "max_img_s": max(r),
                "passes": r,
            }
            for name, r in rates.items()
        ]

    base = rows[0]["median_img_s"]
    for row in rows:
        row["speedup_vs_baseline"] = row["median_img_s"] / base
    print(
        f"{images} images/epoch, 112x112 JPEG, batch {args.batch_size}, {args.threads} threads, "
        f"median of {args.passes} interleaved epochs after {args.warmup} warm-up; "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(f"| {'loader':<28} | threads | img/s (median) | min..max      | vs baseline |")
    print(f"|{'-' * 30}|---------|----------------|---------------|-------------|")
    for r in rows:
        print(
            f"| {r['loader']:<28} | {r['threads']:>7} | {r['median_img_s']:>14.0f} | "
            f"{r['min_img_s']:>5.0f}..{r['max_img_s']:<6.0f} | {r['speedup_vs_baseline']:>10.2f}x |"
        )
    result = {
        "benchmark": "data loaders: decoded + flipped + normalised images per second",
        "baseline": rows[0]["loader"],
        "images_per_epoch": images,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "warmup": args.warmup,
        "passes": args.passes,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
