#!/usr/bin/env bash
# Stop the cluster that cluster/local-up.sh started, and only that one.
#
# `ray stop` would end every Ray process of this machine, other people's clusters included. Here the
# roots are the processes whose command line names this cluster's temp dirs (GCS, raylets, dashboard,
# monitors); they and all their descendants (agents, workers, job drivers) are ended by pid:
# SIGTERM, a grace period, then SIGKILL.
#
#   EMODIS_LOCAL_DIR   the same as for local-up.sh (default /tmp/emodis-local-$UID)
#   KEEP=1             keep the logs under EMODIS_LOCAL_DIR
set -euo pipefail

dir="${EMODIS_LOCAL_DIR:-/tmp/emodis-local-${UID}}"
grace="${GRACE_S:-10}"
if [[ ! -d "$dir" ]]; then
    echo "no local cluster state in $dir"
    exit 0
fi

# pid -> parent pid, for every process
declare -A parent
for stat in /proc/[0-9]*/stat; do
    read -r line <"$stat" 2>/dev/null || continue
    pid="${line%% *}"
    rest="${line##*) }"           # fields after the command name, which may contain spaces
    read -r _ ppid _ <<<"$rest"
    parent[$pid]="$ppid"
done

# The Ray Client server is the one daemon whose command line names no temp dir: match its port and GCS.
client="--port=-1"
gcs_port=-1
if [[ -f "$dir/cluster.env" ]]; then
    client="--port=$(sed -n 's/^export EMODIS_CLIENT_PORT=//p' "$dir/cluster.env")"
    gcs_port="$(sed -n 's/^export EMODIS_GCS_ADDRESS=.*://p' "$dir/cluster.env")"
fi
roots=()
for pid in "${!parent[@]}"; do
    [[ "$pid" == "$$" ]] && continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    if [[ "$cmd" == *"$dir/n"[0-9]* ]] \
        || [[ "$cmd" == *"ray.util.client.server"*" $client "* && "$cmd" == *"--address="*":$gcs_port "* ]]; then
        roots+=("$pid")
    fi
done

# every descendant of a root
declare -A victims
for r in "${roots[@]}"; do victims[$r]=1; done
changed=1
while (( changed )); do
    changed=0
    for pid in "${!parent[@]}"; do
        if [[ -z "${victims[$pid]:-}" && -n "${victims[${parent[$pid]}]:-}" ]]; then
            victims[$pid]=1
            changed=1
        fi
    done
done

# alive and not a zombie (an orphan may wait a moment for its reaper)
running() {
    local st
    st=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$st" != " Z"* ]]
}

# TERM, wait up to the grace period, then KILL what is left.
stop() {
    local alive=("$@") still
    kill -TERM "${alive[@]}" 2>/dev/null || true
    for _ in $(seq 1 $(( grace * 5 ))); do
        still=()
        for pid in "${alive[@]}"; do
            if running "$pid"; then still+=("$pid"); fi
        done
        alive=("${still[@]}")
        (( ${#alive[@]} )) || return 0
        sleep 0.2
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

# Raylets, agents and workers first; the GCS last (raylets shut down faster while it answers).
first=()
last=()
for pid in "${!victims[@]}"; do
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == gcs_server ]]; then last+=("$pid"); else first+=("$pid"); fi
done
if (( ${#first[@]} + ${#last[@]} )); then
    echo "stopping $(( ${#first[@]} + ${#last[@]} )) process(es) of the cluster in $dir"
    if (( ${#first[@]} )); then stop "${first[@]}"; fi
    if (( ${#last[@]} )); then stop "${last[@]}"; fi
else
    echo "no process of the cluster in $dir is running"
fi
rm -f "$dir/cluster.env"
if [[ -z "${KEEP:-}" ]]; then
    rm -rf "$dir"
fi
