#!/usr/bin/env bash
# Start a Ray cluster of several nodes on this one machine: a head plus N worker nodes.
#
#   cluster/local-up.sh [N]        N worker nodes (default 2); cluster/local-down.sh stops them
#
# Every node is a separate raylet with its own temp dir, its own ports (on a loopback address) and a custom
# resource naming it (node_head, node_w1, node_w2, ...) plus a label (emodis-node=head|w1|...), so a
# placement group or a task can be pinned to one node. Token authentication is on: the token is
# RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (made if missing).
# The dashboard (and the Job API on it) listens on 127.0.0.1 only.
#
# Settings (environment):
#   EMODIS_LOCAL_DIR        state and temp dirs            (default /tmp/emodis-local-$UID; keep it short:
#                                                           Unix socket paths are limited to 107 bytes)
#   EMODIS_LOCAL_PORT       GCS port; every other port is derived from it (default 6390)
#   EMODIS_DASHBOARD_PORT   dashboard and Job API port     (default 8265)
#   EMODIS_HEAD_CPUS        logical CPUs of the head       (default 1)
#   EMODIS_NODE_CPUS        logical CPUs of each worker    (default 1)
#   EMODIS_OBJECT_STORE_MB  object store per node, MiB     (default 512)
#   EMODIS_NODE_IP          the nodes' address             (default 127.0.0.2: Ray replaces 127.0.0.1 with the
#                                                           machine's outward address; any other loopback
#                                                           address keeps all cluster traffic on this machine)
#   RAY                     the ray CLI                    (default: ray on PATH, else the project's .venv/bin/ray,
#                                                           which `make demo` / `make venv` made)
set -euo pipefail

n_workers="${1:-2}"
if ! [[ "$n_workers" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [N worker nodes]" >&2
    exit 2
fi
dir="${EMODIS_LOCAL_DIR:-/tmp/emodis-local-${UID}}"
port="${EMODIS_LOCAL_PORT:-6390}"
dash_port="${EMODIS_DASHBOARD_PORT:-8265}"
head_cpus="${EMODIS_HEAD_CPUS:-1}"
node_cpus="${EMODIS_NODE_CPUS:-1}"
store_bytes=$(( ${EMODIS_OBJECT_STORE_MB:-512} * 1024 * 1024 ))
ray_cli="${RAY:-ray}"
if [[ -z "${RAY:-}" ]] && ! command -v ray >/dev/null; then
    venv_ray="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/ray"
    if [[ ! -x "$venv_ray" ]]; then
        echo "local-up.sh: no ray on PATH and no $venv_ray; run \`make venv\` (or activate your environment)" >&2
        exit 2
    fi
    ray_cli="$venv_ray"
fi
ip="${EMODIS_NODE_IP:-127.0.0.2}"

if [[ -e "$dir/cluster.env" ]]; then
    echo "a cluster is already up (state in $dir/cluster.env); run cluster/local-down.sh first" >&2
    exit 1
fi
mkdir -p "$dir"

# Token authentication: ray start turns it on when RAY_AUTH_MODE=token; every node and every client
# must see the same token.
export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    "$ray_cli" get-auth-token --generate >/dev/null
fi
unset RAY_ADDRESS  # ray start must not attach to whatever cluster the caller points at
# Job entrypoints (`python -m emodis_ray.cli ...`) run through a shell with the node's PATH: put the
# Python environment that runs Ray first.
ray_bin="$(dirname "$(command -v "$ray_cli")")"
export PATH="$ray_bin:$PATH"

# Ports of node i (0 = head): six from port + 10 + 10*i; worker processes from port + 1000 + 100*i.
node_args() {
    local i="$1" base=$(( port + 10 + 10 * $1 )) wbase=$(( port + 1000 + 100 * $1 ))
    printf '%s\n' \
        "--node-ip-address=$ip" \
        "--temp-dir=$dir/n$i" \
        "--node-manager-port=$base" \
        "--object-manager-port=$(( base + 1 ))" \
        "--dashboard-agent-listen-port=$(( base + 2 ))" \
        "--dashboard-agent-grpc-port=$(( base + 3 ))" \
        "--metrics-export-port=$(( base + 4 ))" \
        "--runtime-env-agent-port=$(( base + 5 ))" \
        "--min-worker-port=$wbase" \
        "--max-worker-port=$(( wbase + 99 ))" \
        "--object-store-memory=$store_bytes" \
        "--disable-usage-stats"
}

# The state file first: local-down.sh reads the ports from it, also after a start that failed half-way.
metrics_ports="$(for i in $(seq 0 "$n_workers"); do printf '%s ' $(( port + 14 + 10 * i )); done)"
cat >"$dir/cluster.env" <<EOF
# written by cluster/local-up.sh; source it to talk to the cluster
export RAY_ADDRESS=http://127.0.0.1:$dash_port
export EMODIS_GCS_ADDRESS=$ip:$port
export EMODIS_CLIENT_PORT=$(( port + 1 ))
export EMODIS_METRICS_PORTS="${metrics_ports% }"
export EMODIS_LOCAL_NODES=$(( n_workers + 1 ))
export PATH="$ray_bin:\$PATH"  # the environment that runs the cluster (ray, emodis) first
EOF

# A node that fails to start: show its log, stop what did start.
failed() {
    cat "$dir/n$1.log" >&2
    echo "node $1 failed to start; stopping the others" >&2
    EMODIS_LOCAL_DIR="$dir" KEEP=1 bash "$(dirname "$0")/local-down.sh" >&2 || true
    exit 1
}

mapfile -t head_args < <(node_args 0)
"$ray_cli" start --head "${head_args[@]}" \
    --port="$port" --ray-client-server-port=$(( port + 1 )) \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
    --num-cpus="$head_cpus" --resources='{"node_head": 1}' --labels="emodis-node=head" >"$dir/n0.log" 2>&1 \
    || failed 0

for i in $(seq 1 "$n_workers"); do
    mapfile -t args < <(node_args "$i")
    "$ray_cli" start --address="$ip:$port" "${args[@]}" \
        --num-cpus="$node_cpus" --resources="{\"node_w$i\": 1}" --labels="emodis-node=w$i" >"$dir/n$i.log" 2>&1 \
        || failed "$i"
done

cat <<EOF
Ray cluster up: a head and $n_workers worker node(s) on $ip (state and logs in $dir).
  GCS address     $ip:$port           (ray.init(address="$ip:$port") from this machine)
  dashboard       http://127.0.0.1:$dash_port  (Job API on the same port; token required)
  metrics         Prometheus text on http://$ip:<port>/metrics, ports: ${metrics_ports% }
Submit a job:
  source $dir/cluster.env
  emodis submit -- synth /tmp/emodis/data --people 4 --clips-per-person 4   # absolute paths
  emodis jobs list
The token: ray get-auth-token (clients send it as 'Authorization: Bearer <token>').
Stop:  cluster/local-down.sh
EOF
