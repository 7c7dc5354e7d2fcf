#!/usr/bin/env bash
# Several nodes: one torchrun per node joining a c10d rendezvous, then
# `python -m partialfc.train CONFIG.toml [--section.key value ...]` in each local process.
#
#   # fixed size: the same line on every node, each with its own --node-rank
#   launch/multinode.sh --nnodes 4 --node-rank 0 --rdzv-endpoint node0:29400 CONFIG.toml [overrides]
#   # elastic: 2 to 4 nodes, any order, up to 3 restarts of the whole group
#   launch/multinode.sh --nnodes 2:4 --rdzv-endpoint node0:29400 --max-restarts 3 CONFIG.toml
#
# --node-rank 0 marks the node that hosts the rendezvous store (it must be the endpoint's host);
# the c10d rendezvous then assigns global ranks itself (which node gets rank 0 does not matter
# to the trainer). Without --node-rank, torch decides by matching the endpoint to this host's
# names and addresses. Options default to torchrun's own PET_* variables, which the Kubeflow
# training operator sets. See launch/README.md for the NCCL settings.
set -euo pipefail

usage="usage: launch/multinode.sh --nnodes N|MIN:MAX --rdzv-endpoint HOST[:PORT] [--node-rank R]
       [--nproc N] [--max-restarts K] [--rdzv-id ID] CONFIG.toml [--section.key value ...]"
die() {
    echo "launch/multinode.sh: $*" >&2
    exit 2
}

nnodes="${PET_NNODES:-}"
rdzv_endpoint="${PET_RDZV_ENDPOINT:-}"
nproc_per_node="${PET_NPROC_PER_NODE:-}"
max_restarts="${PET_MAX_RESTARTS:-3}"
rdzv_id="${PET_RDZV_ID:-${RDZV_ID:-partialfc}}"
node_rank=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nnodes | --node-rank | --rdzv-endpoint | --nproc | --max-restarts | --rdzv-id)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            set -- "$1=$2" "${@:3}"
            ;;
        --nnodes=*) nnodes="${1#*=}"; shift ;;
        --node-rank=*) node_rank="${1#*=}"; shift ;;
        --rdzv-endpoint=*) rdzv_endpoint="${1#*=}"; shift ;;
        --nproc=*) nproc_per_node="${1#*=}"; shift ;;
        --max-restarts=*) max_restarts="${1#*=}"; shift ;;
        --rdzv-id=*) rdzv_id="${1#*=}"; shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) break ;;
    esac
done

# Checked before any rendezvous: a typo must not leave the other nodes waiting for this one.
[[ $# -ge 1 && "$1" != --* ]] || die "no config file given
$usage"
config="$1"
shift
[[ -f "$config" ]] || die "config file '$config' not found
$usage"
[[ -n "$nnodes" ]] || die "--nnodes is required (N, or MIN:MAX for an elastic run)"
[[ "$nnodes" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || die "--nnodes must be N or MIN:MAX, got '$nnodes'"
[[ -n "$rdzv_endpoint" ]] || die "--rdzv-endpoint HOST[:PORT] is required (the same on every node)"
[[ -z "$node_rank" || "$node_rank" =~ ^[0-9]+$ ]] || die "--node-rank must be an integer >= 0, got '$node_rank'"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be an integer >= 0, got '$max_restarts'"

python="${PYTHON:-python}"
if [[ -z "$nproc_per_node" ]]; then
    nproc_per_node="$("$python" -c 'import torch; print(torch.cuda.device_count())')"
    [[ "$nproc_per_node" -gt 0 ]] || nproc_per_node=1
fi
[[ "$nproc_per_node" =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer, got '$nproc_per_node'"

# Seconds to wait for all nodes (pods may take minutes to pull an image), and for one store
# operation; also how long a non-host node waits for the endpoint's name to resolve.
join_timeout="${RDZV_JOIN_TIMEOUT:-900}"
rdzv_conf="join_timeout=$join_timeout,read_timeout=${RDZV_READ_TIMEOUT:-300}"
if [[ -n "$node_rank" ]]; then
    if [[ "$node_rank" == 0 ]]; then rdzv_conf+=",is_host=true"; else rdzv_conf+=",is_host=false"; fi
fi

# A node that starts before the host may find no DNS record yet (a Kubernetes headless Service
# publishes a pod's name only once the pod exists); wait for it instead of failing at once.
rdzv_host="${rdzv_endpoint%:*}"
if [[ "$node_rank" != 0 ]] && command -v getent >/dev/null; then
    waited=0
    until getent hosts "$rdzv_host" >/dev/null; do
        ((waited < join_timeout)) || die "rendezvous host '$rdzv_host' did not resolve in ${join_timeout}s"
        sleep 2
        waited=$((waited + 2))
    done
fi

# torchrun sets OMP_NUM_THREADS=1 per worker unless told otherwise; see launch/README.md.
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    OMP_NUM_THREADS=$(($(nproc) / nproc_per_node))
    export OMP_NUM_THREADS=$((OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1))
fi
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"

metrics=()
[[ -z "${PARTIALFC_METRICS_PORT:-}" ]] || metrics=("--metrics.port=$PARTIALFC_METRICS_PORT")

# Preflight on this node before torchrun spawns anything (see launch/train.sh). The lock on
# output_dir is left to the run: another node's rank 0 may hold it already. An elastic run is
# checked at its smallest size.
if [[ -z "${PARTIALFC_SKIP_PREFLIGHT:-}" ]]; then
    "$python" -m partialfc.train "$config" "${metrics[@]}" "$@" --check --no-lock-check \
        --world-size "$((${nnodes%%:*} * nproc_per_node))" --local-ranks "$nproc_per_node" ||
        exit $?
fi

echo "launch/multinode.sh: nnodes=$nnodes nproc=$nproc_per_node rendezvous=$rdzv_endpoint" \
    "id=$rdzv_id node_rank=${node_rank:-auto} max_restarts=$max_restarts" >&2
exec "$python" -m torch.distributed.run --nnodes="$nnodes" --nproc-per-node="$nproc_per_node" \
    --rdzv-backend=c10d --rdzv-endpoint="$rdzv_endpoint" --rdzv-id="$rdzv_id" \
    --rdzv-conf="$rdzv_conf" --max-restarts="$max_restarts" \
    -m partialfc.train "$config" "${metrics[@]}" "$@"
