"""Compile the fused head's Triton kernels for a GPU architecture, with no GPU present.

Each autotuning configuration of each kernel is compiled ahead of time (Triton's own compiler, the
same one a GPU run uses), then assembled with Triton's bundled ``ptxas -v``: registers per thread,
spilled bytes, shared memory, and whether the GEMMs became Hopper ``wgmma`` instructions. It proves
that the kernels compile outside the interpreter and shows where register pressure lies.

    python benchmarks/fused_compile.py                   # sm_90 (H100/H200), bf16 and fp32
    python benchmarks/fused_compile.py --arch 80 --dtypes bf16 --first
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # compile for real, whatever the caller's environment

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from partialfc.heads import _fused

# None: the GEMM dtype; the pointers not named here are float32
POINTERS = {"x_ptr": None, "out_ptr": None, "idx_ptr": "i64", "tcol_ptr": "i64"}
KERNELS = {
    "_stats_kernel": ("STATS_CONFIGS", ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
    "_grad_chunk_kernel": ("GRAD_CONFIGS", ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
}


def _signature(fn, dtype: str) -> dict[str, str]:
    sig = {}
    for name, param in fn.signature.parameters.items():
        if name.endswith("_ptr"):
            sig[name] = "*" + (POINTERS.get(name, "fp32") or dtype)
        elif name in ("scale", "threshold", "limit"):
            sig[name] = "fp32"
        elif "constexpr" in str(param.annotation):
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"
    return sig


def compile_one(kernel: str, config: tuple, dtype: str, arch: int) -> dict:
    fn = getattr(_fused, kernel).fn
    names = KERNELS[kernel][1]
    consts = dict(zip(names, config[:-2], strict=True))
    consts.update(USE_INDEX=True, NORMALIZE_W=True, HAS_BIAS=False, FILTER=False, CLAMP=False, UPCAST=False,
                  PRECISION="ieee" if dtype == "fp32" else "tf32")  # fmt: skip
    src = ASTSource(
        fn=fn,
        signature=_signature(fn, dtype),
        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
    )
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config[-2], "num_stages": config[-1]},
    )
    ptx = compiled.asm["ptx"]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        suffix = "a" if arch == 90 else ""
        out = subprocess.run(
            [ptxas, f"-arch=sm_{arch}{suffix}", "-v", f.name, "-o", os.devnull],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    info = out.stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, info)) else 0  # noqa: E731
    return {
        "kernel": kernel,
        "dtype": dtype,
        "config": list(config),
        "registers": number(r"Used (\d+) registers"),
        "spill_store_bytes": number(r"(\d+) bytes spill stores"),
        "spill_load_bytes": number(r"(\d+) bytes spill loads"),
        "shared_bytes": compiled.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"),
        "mma": ptx.count("mma.sync"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 80")
    parser.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    parser.add_argument("--first", action="store_true", help="only each kernel's first config")
    parser.add_argument("--json", action="store_true", help="print one JSON list, no table")
    args = parser.parse_args()
    rows = []
    for kernel, (configs_name, _) in KERNELS.items():
        configs = getattr(_fused, configs_name)
        for dtype in args.dtypes:
            for config in configs[:1] if args.first else configs:
                rows.append(compile_one(kernel, config, dtype, args.arch))
                if not args.json:
                    r = rows[-1]
                    print(
                        f"{kernel:<15} {dtype:<5} {config!s:<26} regs {r['registers']:>3}  "
                        f"spill {r['spill_store_bytes']:>5} B  smem {r['shared_bytes']:>6} B  "
                        f"wgmma {r['wgmma']:>2}  mma {r['mma']:>3}",
                        flush=True,
                    )
    if args.json:
        json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
