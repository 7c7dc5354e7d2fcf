"""Step time and peak memory of the PartialFC head against a dense PartialFC_V2-style baseline.

One step = forward + backward + optimizer step of the head alone, on synthetic embeddings.

* ``partialfc``: ``pfc.PartialFC(ArcFace)`` + ``pfc.SparseSGD`` (sparse rows, lazy momentum).
* ``dense-v2`` (the named baseline): the design of insightface's PartialFC_V2, written here: a dense
  (C, D) class-centre Parameter, ``index_select`` of the sampled rows (the whole matrix at rate 1),
  normalised GEMM, ArcFace on the target, fused cross-entropy, ``torch.optim.SGD`` with momentum.

Every (implementation, size) runs in a fresh subprocess so that its peak memory is its own: peak
RSS growth over the process's state before the head is built (CPU), or
``torch.cuda.max_memory_allocated`` growth (CUDA). Both include the centres, the momentum and all
transients of a step. Times are medians over the timed steps (CUDA events on a GPU).

    python benchmarks/head.py                      # the issue's grid, CPU here
    python benchmarks/head.py --device cuda        # the same on a GPU
    python benchmarks/head.py --preset quick       # a small grid, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {
    "issue": dict(classes=[200_000, 1_000_000], rates=[0.1, 1.0], batch=256, dim=512),
    "quick": dict(classes=[20_000], rates=[0.1, 1.0], batch=128, dim=128),
}
IMPLS = ("dense-v2", "partialfc")
BASELINE = "dense-v2"


class DenseV2Baseline(nn.Module):
    """The PartialFC_V2 design: a dense centre matrix, sampled rows picked by index_select."""

    def __init__(self, classes: int, dim: int, rate: float, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.normal(0, 0.01, (classes, dim)))
        self.rate, self.s, self.m = rate, s, m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        classes = self.weight.shape[0]
        if self.rate < 1.0:
            with torch.no_grad():
                positive = torch.unique(labels, sorted=True)  # a host sync, as in V2
                num = max(int(self.rate * classes), positive.numel())
                scores = torch.rand(classes, device=x.device)
                scores[positive] = 2.0
                index = torch.topk(scores, num).indices.sort().values
                labels = torch.searchsorted(index, labels)
            w = self.weight.index_select(0, index)  # its backward builds a dense (C, D) grad
        else:
            w = self.weight
        cos = F.linear(F.normalize(x), F.normalize(w)).clamp(-1 + 1e-7, 1 - 1e-7)
        with torch.no_grad():  # ArcFace on the target, applied in place as V2 does
            target = cos.gather(1, labels[:, None])
            cos.scatter_(1, labels[:, None], torch.cos(torch.acos(target) + self.m))
        return F.cross_entropy(cos * self.s, labels)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(
    impl: str, classes: int, rate: float, batch: int, dim: int, steps: int, warmup: int, device: str
) -> dict:
    import partialfc as pfc

    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch, dim, device=dev, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # the steps' high-water mark dwarfs anything before, so ru_maxrss - base is theirs
        base = _rss_bytes()
    if impl == "partialfc":
        head = pfc.PartialFC(
            pfc.ArcFace(), dim, classes, sample_rate=rate, validate=False, device=dev
        )
        opt = pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        head = DenseV2Baseline(classes, dim, rate).to(dev)
        opt = torch.optim.SGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)

    times = []
    for i in range(warmup + steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss = head(x, labels)
        loss.backward()
        opt.step()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    peak = (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) - base
    return {
        "impl": impl,
        "classes": classes,
        "sample_rate": rate,
        "batch": batch,
        "dim": dim,
        "device": device,
        "median_ms": statistics.median(times) * 1e3,
        "times_ms": [t * 1e3 for t in times],
        "peak_mib": peak / 2**20,
        "loss": float(loss),
    }


def _run_isolated(
    args: argparse.Namespace, impl: str, classes: int, rate: float, batch: int, dim: int
) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", impl, "--classes", str(classes), "--rates", str(rate),
        "--batch", str(batch), "--dim", str(dim), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--device", args.device,
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="issue")
    parser.add_argument("--classes", type=int, nargs="*", help="override the preset's class counts")
    parser.add_argument("--rates", type=float, nargs="*", help="override the preset's sample rates")
    parser.add_argument("--batch", type=int, help="global batch B")
    parser.add_argument("--dim", type=int, help="embedding width D")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="fresh processes per implementation, interleaved (baseline, ours, baseline, ...); "
        "medians over all timed steps of all rounds: robust to a machine whose load drifts",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "head.json")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    classes = args.classes or preset["classes"]
    rates = args.rates or preset["rates"]
    batch, dim = args.batch or preset["batch"], args.dim or preset["dim"]

    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    classes[0],
                    rates[0],
                    batch,
                    dim,
                    args.steps,
                    args.warmup,
                    args.device,
                )
            )
        )
        return

    rows = []
    for c in classes:
        for rate in rates:
            runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
            for _ in range(args.rounds):
                for impl in IMPLS:
                    runs[impl].append(_run_isolated(args, impl, c, rate, batch, dim))
            results = {impl: _merge(rs) for impl, rs in runs.items()}
            base = results[BASELINE]
            for impl in IMPLS:
                r = results[impl]
                r["time_vs_baseline"] = r["median_ms"] / base["median_ms"]
                r["memory_vs_baseline"] = r["peak_mib"] / base["peak_mib"]
                rows.append(r)
                _print_row(r, header=len(rows) == 1)
    report = {
        "benchmark": "head",
        "baseline": BASELINE,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "load_average_1m_at_end": os.getloadavg()[0],
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _merge(rounds: list[dict]) -> dict:
    """One row from several rounds: median over every timed step, the largest peak memory."""
    merged = dict(rounds[0])
    merged["times_ms"] = [t for r in rounds for t in r["times_ms"]]
    merged["median_ms"] = statistics.median(merged["times_ms"])
    merged["peak_mib"] = max(r["peak_mib"] for r in rounds)
    merged["rounds"] = len(rounds)
    return merged


def _print_row(r: dict, header: bool) -> None:
    if header:
        print(
            f"| {'impl':<10} | {'classes':>9} | {'rate':>4} | {'median ms':>10} | {'peak MiB':>9} | {'time x':>6} | {'mem x':>6} |"
        )
        print(f"|{'-' * 12}|{'-' * 11}|{'-' * 6}|{'-' * 12}|{'-' * 11}|{'-' * 8}|{'-' * 8}|")
    print(
        f"| {r['impl']:<10} | {r['classes']:>9,} | {r['sample_rate']:>4} | {r['median_ms']:>10.1f} | "
        f"{r['peak_mib']:>9.0f} | {r['time_vs_baseline']:>6.2f} | {r['memory_vs_baseline']:>6.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
