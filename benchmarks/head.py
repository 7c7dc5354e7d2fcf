"""Step time and peak memory of the PartialFC head against a dense PartialFC_V2-style baseline.

One step = forward + backward + optimizer step of the head alone, on synthetic embeddings.

* ``partialfc``: ``pfc.PartialFC(ArcFace)`` + ``pfc.SparseSGD`` (sparse rows, lazy momentum).
* ``fused``: the same head with ``fused=True``: the Triton kernels, no (B, N) logits (CUDA).
* ``fused-update``: ``fused`` with ``head.fuse_update(opt)``: the SGD update applied chunk by
  chunk inside backward, so no (N, D) dW values either (CUDA).
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
    python benchmarks/head.py --device cuda --preset fused --precision bf16
                                                   # the fused kernels: B=1024, D=512, local rows
                                                   # 12.5k, 125k, 1.25M, against both others

Each row also gives the achieved TFLOP/s (the head's three GEMMs, ``6*B*D*N`` per step) and, on a
GPU of known peak (``--peak-tflops``/``--peak-tbps`` otherwise), the roofline bound: the larger of
the GEMM time at peak and the time to stream the N rows' weight and momentum (about 20 bytes per
element: read and write both, read the weight again for the GEMMs) at peak bandwidth;
``roofline %`` is that bound over the measured median. ``step MiB`` is the peak memory of a step
beyond what the head holds between steps (centres and momentum), ``peak MiB`` everything. On a GPU
both come from the caching allocator's counters; on the CPU ``step MiB`` is one extra step counted
with the profiler's allocation events (what PyTorch allocates: the same tensors a GPU step
allocates, without the caching allocator's rounding).
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
    "fused": dict(classes=[12_500, 125_000, 1_250_000], rates=[1.0], batch=1024, dim=512),
}
IMPLS = ("dense-v2", "partialfc", "fused", "fused-update")
FUSED_IMPLS = ("fused", "fused-update")
# Dense peaks from the vendors' sheets (bf16/fp16 tensor cores without sparsity, HBM bandwidth).
PEAKS = {  # name fragment: (FLOP/s, bytes/s); the first fragment found in the device name wins
    "H100 PCIe": (756e12, 2.0e12),
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.0e12),
}
BYTES_PER_ELEMENT = 20  # per sampled row element and step: see the module docstring
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


def _step(head, opt, x, labels, dev, amp) -> torch.Tensor:
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        loss = head(x, labels)
    loss.backward()
    opt.step()
    return loss


def _cpu_step_bytes(step) -> int:
    """Peak bytes PyTorch's CPU allocator holds during ``step()`` beyond what it held before:
    the profiler's allocation events, summed in time order (frees of older blocks are not
    reported, so they do not lower the count)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def worker(
    impl: str,
    classes: int,
    rate: float,
    batch: int,
    dim: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str = "fp32",
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
    if impl in ("partialfc", *FUSED_IMPLS):
        head = pfc.PartialFC(
            pfc.ArcFace(), dim, classes, sample_rate=rate, validate=False, device=dev,
            fused=impl in FUSED_IMPLS,
        )  # fmt: skip
        opt = pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
        if impl == "fused-update":
            head.fuse_update(opt)
    else:
        head = DenseV2Baseline(classes, dim, rate).to(dev)
        opt = torch.optim.SGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)

    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    held = 0
    times = []
    for i in range(warmup + steps):
        if i == warmup:  # the head's state between steps: centres and (now) momentum
            opt.zero_grad(set_to_none=True)
            x.grad = None
            held = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss = _step(head, opt, x, labels, dev, amp)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    peak = (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) - base
    if cuda:
        step_bytes = torch.cuda.max_memory_allocated() - held
    else:
        opt.zero_grad(set_to_none=True)
        x.grad = None
        step_bytes = _cpu_step_bytes(lambda: _step(head, opt, x, labels, dev, amp))
    rows = classes if rate >= 1.0 else max(int(rate * classes), 1)
    return {
        "impl": impl,
        "classes": classes,
        "sample_rate": rate,
        "batch": batch,
        "dim": dim,
        "device": device,
        "precision": precision,
        "rows": rows,
        "median_ms": statistics.median(times) * 1e3,
        "times_ms": [t * 1e3 for t in times],
        "peak_mib": peak / 2**20,
        "step_mib": step_bytes / 2**20,
        "loss": float(loss),
    }


def _run_isolated(
    args: argparse.Namespace, impl: str, classes: int, rate: float, batch: int, dim: int
) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", impl, "--classes", str(classes), "--rates", str(rate),
        "--batch", str(batch), "--dim", str(dim), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision,
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
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="autocast dtype of the GEMMs (statistics stay float32)")  # fmt: skip
    parser.add_argument("--impls", nargs="*", choices=IMPLS,
                        help=f"implementations to run (default: all that run on the device; "
                        f"{BASELINE} always runs, as the baseline)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak, for the roofline")
    parser.add_argument("--peak-tbps", type=float, help="the GPU's bandwidth, for the roofline")
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
                    args.precision,
                )
            )
        )
        return

    impls = _implementations(args)
    peaks = _peaks(args)

    rows = []
    for c in classes:
        for rate in rates:
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for _ in range(args.rounds):
                for impl in impls:
                    runs[impl].append(_run_isolated(args, impl, c, rate, batch, dim))
            results = {impl: _merge(rs) for impl, rs in runs.items()}
            base = results[BASELINE]
            for impl in impls:
                r = results[impl]
                r["time_vs_baseline"] = r["median_ms"] / base["median_ms"]
                r["memory_vs_baseline"] = r["peak_mib"] / base["peak_mib"]
                if "partialfc" in results and impl in FUSED_IMPLS:
                    unfused = results["partialfc"]
                    r["time_vs_unfused"] = r["median_ms"] / unfused["median_ms"]
                    if r["step_mib"] is not None:
                        r["step_memory_vs_unfused"] = r["step_mib"] / unfused["step_mib"]
                _add_roofline(r, peaks)
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
        "precision": args.precision,
        "peak_flops": peaks[0] if peaks else None,
        "peak_bytes_per_second": peaks[1] if peaks else None,
        "load_average_1m_at_end": os.getloadavg()[0],
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _implementations(args: argparse.Namespace) -> list[str]:
    chosen = args.impls or [i for i in IMPLS if i not in FUSED_IMPLS or args.device == "cuda"]
    return [BASELINE, *[i for i in chosen if i != BASELINE]]


def _peaks(args: argparse.Namespace) -> tuple[float, float] | None:
    """(FLOP/s, bytes/s) of the device: the command line, else the table, else unknown."""
    if args.peak_tflops and args.peak_tbps:
        return args.peak_tflops * 1e12, args.peak_tbps * 1e12
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for frag, peak in PEAKS.items() if frag in name), None)


def _add_roofline(r: dict, peaks: tuple[float, float] | None) -> None:
    flops = 6 * r["batch"] * r["dim"] * r["rows"]
    r["tflops"] = flops / (r["median_ms"] * 1e-3) / 1e12
    if peaks is None:
        r["roofline_ms"] = r["roofline_pct"] = None
        return
    bound = max(flops / peaks[0], BYTES_PER_ELEMENT * r["rows"] * r["dim"] / peaks[1])
    r["roofline_ms"] = bound * 1e3
    r["roofline_pct"] = 100.0 * bound / (r["median_ms"] * 1e-3)


def _merge(rounds: list[dict]) -> dict:
    """One row from several rounds: median over every timed step, the largest peak memory."""
    merged = dict(rounds[0])
    merged["times_ms"] = [t for r in rounds for t in r["times_ms"]]
    merged["median_ms"] = statistics.median(merged["times_ms"])
    merged["peak_mib"] = max(r["peak_mib"] for r in rounds)
    steps = [r["step_mib"] for r in rounds if r["step_mib"] is not None]
    merged["step_mib"] = max(steps) if steps else None
    merged["rounds"] = len(rounds)
    return merged


def _print_row(r: dict, header: bool) -> None:
    cols = [
        ("impl", 9, lambda r: r["impl"]),
        ("rows", 9, lambda r: f"{r['rows']:,}"),
        ("rate", 4, lambda r: f"{r['sample_rate']}"),
        ("median ms", 9, lambda r: f"{r['median_ms']:.2f}"),
        ("TFLOP/s", 7, lambda r: f"{r['tflops']:.1f}"),
        ("roofline %", 10, lambda r: "-" if r["roofline_pct"] is None else f"{r['roofline_pct']:.0f}"),
        ("peak MiB", 8, lambda r: f"{r['peak_mib']:.0f}"),
        ("step MiB", 8, lambda r: "-" if r["step_mib"] is None else f"{r['step_mib']:.0f}"),
        ("time x", 6, lambda r: f"{r['time_vs_baseline']:.2f}"),
        ("mem x", 5, lambda r: f"{r['memory_vs_baseline']:.2f}"),
        ("x unfused", 9, lambda r: f"{r['time_vs_unfused']:.2f}" if "time_vs_unfused" in r else "-"),
        ("step mem x unfused", 18, lambda r: f"{r['step_memory_vs_unfused']:.2f}"
         if "step_memory_vs_unfused" in r else "-"),
    ]  # fmt: skip
    if header:
        print("| " + " | ".join(f"{name:>{w}}" for name, w, _ in cols) + " |")
        print("|" + "|".join("-" * (w + 2) for _, w, _ in cols) + "|")
    print("| " + " | ".join(f"{get(r):>{w}}" for _, w, get in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
