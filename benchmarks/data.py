"""JPEG decode time per image and loader throughput: Pillow (baseline) vs simplejpeg vs DALI.

Generates a ``synth`` dataset (112x112 JPEG) into a temporary folder, then

1. times the decode of every record's JPEG in this process, one thread: Pillow
   (``decode_with_pillow``, the named baseline) against ``decode_image`` (simplejpeg where it is
   exact, what the torch loader uses), checking the pixels are identical; median over passes of
   the mean microseconds per image;
2. times full epochs of each loader at the same number of threads (DataLoader workers / DALI
   threads): decode, random flip, normalise to float32 NCHW in [-1, 1]; the torch loader with
   Pillow (baseline) and with simplejpeg, DALI CPU (and GPU) when installed.

Passes and epochs of the candidates are interleaved; reports medians, prints tables, writes JSON.

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

import numpy as np
import torch

from partialfc.data import RecordLoader, SynthConfig, synth_dataset
from partialfc.data.dataset import RecordDataset
from partialfc.data.images import decode_image, decode_with_pillow, simplejpeg_module
from partialfc.data.layout import FaceRecord

BASELINE = "torch DataLoader, Pillow (baseline)"


def time_epoch(loader) -> float:
    """Images per second of one full epoch of ``loader``."""
    n = 0
    start = time.perf_counter()
    for images, _ in loader:
        n += images.shape[0]
    if images.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def time_decode(root: str, passes: int) -> list[dict]:
    """Mean microseconds per image of each decoder over every record, median of ``passes``."""
    record = FaceRecord(root)
    payloads = [record.read_image_record(int(k))[1] for k in record.image_keys]
    decoders = {"Pillow (baseline)": decode_with_pillow, "decode_image (simplejpeg)": decode_image}
    if simplejpeg_module() is None:
        del decoders["decode_image (simplejpeg)"]
    identical = all(np.array_equal(decode_image(d), decode_with_pillow(d)) for d in payloads)
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for i in range(passes + 1):  # the first pass warms caches and is not counted
        for name, decode in decoders.items():
            start = time.perf_counter()
            for data in payloads:
                decode(data)
            if i:
                times[name].append((time.perf_counter() - start) / len(payloads) * 1e6)
    base = statistics.median(times["Pillow (baseline)"])
    return [
        {
            "decoder": name,
            "images": len(payloads),
            "median_us_per_image": statistics.median(t),
            "min_us_per_image": min(t),
            "max_us_per_image": max(t),
            "passes": t,
            "speedup_vs_baseline": base / statistics.median(t),
            "pixel_identical_to_pillow": identical,
        }
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--images-per-identity", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="workers / DALI threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs")
    parser.add_argument("--passes", type=int, default=5, help="timed epochs")
    parser.add_argument("--decode-passes", type=int, default=7, help="timed decode passes")
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
        torch.set_num_threads(1)
        load_before = os.getloadavg()
        decode_rows = time_decode(root, args.decode_passes)
        loaders = {
            BASELINE: RecordLoader(
                RecordDataset(root, decoder="pillow"),
                args.batch_size,
                num_workers=args.threads,
                seed=0,
            ),
        }
        if simplejpeg_module() is not None:
            loaders["torch DataLoader, simplejpeg"] = RecordLoader(
                root, args.batch_size, num_workers=args.threads, seed=0
            )
        if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
            from partialfc.data.dali import DaliLoader

            loaders["DALI cpu"] = DaliLoader(
                root, args.batch_size, num_threads=args.threads, device="cpu"
            )
            if torch.cuda.is_available():
                loaders["DALI mixed (GPU decode)"] = DaliLoader(
                    root, args.batch_size, num_threads=args.threads, device="gpu"
                )
        images = len(loaders[BASELINE]) * args.batch_size
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
    print(f"decode, one thread, {decode_rows[0]['images']} JPEGs, median of {args.decode_passes}")
    print(f"| {'decoder':<36} | us/image (median) | min..max      | vs baseline | identical |")
    print(f"|{'-' * 38}|-------------------|---------------|-------------|-----------|")
    for r in decode_rows:
        print(
            f"| {r['decoder']:<36} | {r['median_us_per_image']:>17.1f} | "
            f"{r['min_us_per_image']:>5.0f}..{r['max_us_per_image']:<6.0f} | "
            f"{r['speedup_vs_baseline']:>10.2f}x | {r['pixel_identical_to_pillow']!s:>9} |"
        )
    print(f"| {'loader':<36} | threads | img/s (median) | min..max      | vs baseline |")
    print(f"|{'-' * 38}|---------|----------------|---------------|-------------|")
    for r in rows:
        print(
            f"| {r['loader']:<36} | {r['threads']:>7} | {r['median_img_s']:>14.0f} | "
            f"{r['min_img_s']:>5.0f}..{r['max_img_s']:<6.0f} | {r['speedup_vs_baseline']:>10.2f}x |"
        )
    result = {
        "benchmark": "JPEG decode per image, and data loaders: decoded + flipped + normalised "
        "images per second",
        "baseline": rows[0]["loader"],
        "decode_baseline": decode_rows[0]["decoder"],
        "decode_passes": args.decode_passes,
        "decode": decode_rows,
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
