"""The largest number of identities that trains on this machine.

Two gloo ranks on CPU, D=512, sample_rate 0.1, float32 centres plus float32 momentum
(``PartialFC`` + ``SparseSGD``), ArcFace, a global batch of 128: each attempt builds the sharded
head, runs a few full training steps of the head (forward, backward, optimizer) and reports every
rank's peak RSS. Attempts go up the list of class counts until one fails.

Each attempt runs inside a memory cgroup (cgroup v1, as root) capped at the memory available when
the benchmark starts, minus a reserve, so an attempt that does not fit is killed by the kernel
inside its cgroup instead of taking the rest of the machine down with it. Without a writable
cgroup the attempt runs unconfined (a warning says so).

    python benchmarks/scale.py                               # 4M .. 6M identities
    python benchmarks/scale.py --classes 1000000 2000000     # other sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
RESERVE_BYTES = 1 << 30  # left to the rest of the machine


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _make_cgroup(limit: int) -> Path | None:
    path = CGROUP_ROOT / f"partialfc-scale-{os.getpid()}"
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit))
        return path
    except OSError as err:
        print(f"warning: no memory cgroup ({err}); attempts run unconfined", file=sys.stderr)
        return None


def worker(rank: int, world: int, store: str, classes: int, args: argparse.Namespace) -> None:
    import resource

    import torch
    import torch.distributed as dist

    import partialfc as pfc

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    t0 = time.perf_counter()
    head = pfc.PartialFC(
        pfc.ArcFace(), args.dim, classes, sample_rate=args.sample_rate, validate=False
    )
    opt = pfc.SparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    build_s = time.perf_counter() - t0
    local = args.batch // world
    gen = torch.Generator().manual_seed(rank)
    times, losses = [], []
    for _ in range(args.steps):
        x = torch.randn(local, args.dim, generator=gen, requires_grad=True)
        y = torch.randint(0, classes, (local,), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = head(x, y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    dist.barrier()
    result = {
        "rank": rank,
        "rows": head.num_local,
        "momentum_rows": int(opt.state[head.weight]["momentum_buffer"].shape[0]),
        "build_s": build_s,
        "step_s": sorted(times)[len(times) // 2],
        "loss": losses[-1],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    dist.destroy_process_group()
    print(json.dumps(result), flush=True)


def attempt(classes: int, args: argparse.Namespace, cgroup: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = []
        for rank in range(args.world):
            cmd = [sys.executable, __file__, "--worker", str(rank), "--store", store,
                   "--classes", str(classes), "--dim", str(args.dim), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--sample-rate", str(args.sample_rate)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(procs[-1].pid))
        t0 = time.perf_counter()
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - t0
    codes = [p.returncode for p in procs]
    ok = all(c == 0 for c in codes)
    ranks = [json.loads(o.strip().splitlines()[-1]) for o in outs] if ok else []
    return {
        "classes": classes,
        "ok": ok,
        "exit_codes": codes,
        "wall_s": wall,
        "ranks": ranks,
        "total_peak_rss_gib": sum(r["peak_rss_gib"] for r in ranks),
        "centres_plus_momentum_gib": 2 * classes * args.dim * 4 / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--classes", type=int, nargs="*", default=[4_000_000, 5_000_000, 5_500_000, 6_000_000]
    )
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "scale.json"
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.world, args.store, args.classes[0], args)
        return

    limit = _mem_available() - RESERVE_BYTES
    cgroup = _make_cgroup(limit)
    print(f"memory limit for the attempts: {limit / 2**30:.1f} GiB (cgroup: {cgroup})")
    print(
        "| identities | ok | centres+momentum GiB | peak RSS GiB (all ranks) | build s | step s (median) |"
    )
    print(
        "|-----------:|:--:|---------------------:|-------------------------:|--------:|----------------:|"
    )
    results = []
    try:
        for classes in args.classes:
            r = attempt(classes, args, cgroup)
            results.append(r)
            build = max((x["build_s"] for x in r["ranks"]), default=float("nan"))
            step = max((x["step_s"] for x in r["ranks"]), default=float("nan"))
            print(f"| {classes:>10,} | {'yes' if r['ok'] else 'NO':^2} | {r['centres_plus_momentum_gib']:>20.2f} | "
                  f"{r['total_peak_rss_gib']:>24.2f} | {build:>7.1f} | {step:>15.2f} |", flush=True)  # fmt: skip
            if not r["ok"]:
                break
    finally:
        if cgroup is not None:
            cgroup.rmdir()
    largest = max((r["classes"] for r in results if r["ok"]), default=0)
    print(f"\nlargest number of identities that trained: {largest:,}")
    report = {
        "benchmark": "scale",
        "world": args.world,
        "dim": args.dim,
        "batch": args.batch,
        "sample_rate": args.sample_rate,
        "steps": args.steps,
        "memory_limit_gib": limit / 2**30,
        "mem_total_gib": int(Path("/proc/meminfo").read_text().split()[1]) / 2**20,
        "largest_identities": largest,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "attempts": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
