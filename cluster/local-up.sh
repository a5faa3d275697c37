#!/usr/bin/env bash
# Start a Ray cluster of several nodes on this one machine: a head plus N worker nodes.
#
#   cluster/local-up.sh [N]        N worker nodes (default 2); cluster/local-down.sh stops them
#
# Every node is a separate raylet with its own temp dir, its own ports (all on 127.0.0.1) and a custom
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
#   RAY                     the ray CLI                    (default: ray on PATH)
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

# Ports of node i (0 = head): eight from port + 10 + 10*i; worker processes from port + 1000 + 100*i.
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

mapfile -t head_args < <(node_args 0)
"$ray_cli" start --head "${head_args[@]}" \
    --port="$port" --ray-client-server-port=$(( port + 1 )) \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
    --num-cpus="$head_cpus" --resources='{"node_head": 1}' --labels="emodis-node=head" >"$dir/n0.log" 2>&1 \
    || { cat "$dir/n0.log" >&2; exit 1; }

for i in $(seq 1 "$n_workers"); do
    mapfile -t args < <(node_args "$i")
    "$ray_cli" start --address="$ip:$port" "${args[@]}" \
        --num-cpus="$node_cpus" --resources="{\"node_w$i\": 1}" --labels="emodis-node=w$i" >"$dir/n$i.log" 2>&1 \
        || { cat "$dir/n$i.log" >&2; exit 1; }
done

cat >"$dir/cluster.env" <<EOF
# written by cluster/local-up.sh; source it to talk to the cluster
export RAY_ADDRESS=http://$ip:$dash_port
export EMODIS_GCS_ADDRESS=$ip:$port
export EMODIS_CLIENT_PORT=$(( port + 1 ))
export EMODIS_METRICS_PORTS="$(for i in $(seq 0 "$n_workers"); do printf '%s ' $(( port + 14 + 10 * i )); done)"
export EMODIS_LOCAL_NODES=$(( n_workers + 1 ))
EOF

cat <<EOF
Ray cluster up: a head and $n_workers worker node(s) on $ip (state and logs in $dir).
  GCS address     $ip:$port           (ray.init(address="$ip:$port") from this machine)
  dashboard       http://$ip:$dash_port  (Job API on the same port; token required)
  metrics         Prometheus text on http://$ip:<port>/metrics, ports: $(grep METRICS "$dir/cluster.env" | cut -d'"' -f2)
Submit a job:
  source $dir/cluster.env
  emodis submit -- synth data/ --people 4 --clips-per-person 4
  emodis jobs list
The token: ray get-auth-token (clients send it as 'Authorization: Bearer <token>').
Stop:  cluster/local-down.sh
EOF
