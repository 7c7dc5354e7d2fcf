#!/usr/bin/env bash
# One node: torchrun with one process per local GPU (or --nproc N CPU processes), then
# `python -m partialfc.train CONFIG.toml [--section.key value ...]` in each.
#
#   launch/train.sh partialfc/configs/ms1mv3_r50.toml --data.root /data/ms1mv3 --train.output_dir /ckpt/run1
#   launch/train.sh --nproc 2 partialfc/configs/demo_cpu.toml          # two CPU processes (gloo)
#
# Environment: PYTHON (default python), PARTIALFC_METRICS_PORT (sets --metrics.port before your
# overrides), OMP_NUM_THREADS, TORCH_ELASTIC_SHUTDOWN_TIMEOUT; see launch/README.md.
set -euo pipefail

usage="usage: launch/train.sh [--nproc N] [--max-restarts K] CONFIG.toml [--section.key value ...]"
die() {
    echo "launch/train.sh: $*" >&2
    exit 2
}

nproc_per_node="${NPROC_PER_NODE:-}"
max_restarts=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nproc) [[ $# -ge 2 ]] || die "--nproc needs a value; $usage"; nproc_per_node="$2"; shift 2 ;;
        --nproc=*) nproc_per_node="${1#*=}"; shift ;;
        --max-restarts) [[ $# -ge 2 ]] || die "--max-restarts needs a value; $usage"; max_restarts="$2"; shift 2 ;;
        --max-restarts=*) max_restarts="${1#*=}"; shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) break ;;
    esac
done

# Checked here, before torchrun starts N processes that would each print the same traceback.
[[ $# -ge 1 && "$1" != --* ]] || die "no config file given; $usage"
config="$1"
shift
[[ -f "$config" ]] || die "config file '$config' not found; $usage"

python="${PYTHON:-python}"
if [[ -z "$nproc_per_node" ]]; then
    # All local GPUs; without CUDA one CPU process (ask for more with --nproc).
    nproc_per_node="$("$python" -c 'import torch; print(torch.cuda.device_count())')"
    [[ "$nproc_per_node" -gt 0 ]] || nproc_per_node=1
fi
[[ "$nproc_per_node" =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer, got '$nproc_per_node'"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be an integer >= 0, got '$max_restarts'"

# torchrun would set OMP_NUM_THREADS=1 for every worker; on CPU that leaves cores idle, so
# share this machine's cores between the local processes unless the user chose.
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    OMP_NUM_THREADS=$(($(nproc) / nproc_per_node))
    export OMP_NUM_THREADS=$((OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1))
fi
# torchrun SIGKILLs workers this long after forwarding SIGTERM: leave time for the checkpoint.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"

metrics=()
[[ -z "${PARTIALFC_METRICS_PORT:-}" ]] || metrics=("--metrics.port=$PARTIALFC_METRICS_PORT")

# Preflight before torchrun spawns anything: every config, dataset, eval-set, output_dir, port and
# checkpoint problem as one line (exit 2), instead of a traceback from each process and restarts.
# PARTIALFC_SKIP_PREFLIGHT=1 skips it (the workers still check before their first step).
if [[ -z "${PARTIALFC_SKIP_PREFLIGHT:-}" ]]; then
    "$python" -m partialfc.train "$config" "${metrics[@]}" "$@" --check \
        --world-size "$nproc_per_node" || exit $?
fi

# --standalone: a c10d rendezvous on localhost with a free port, so two runs never clash.
exec "$python" -m torch.distributed.run --standalone --nnodes=1 \
    --nproc-per-node="$nproc_per_node" --max-restarts="$max_restarts" \
    -m partialfc.train "$config" "${metrics[@]}" "$@"
