#!/usr/bin/env bash
# Stop the one-node SLURM started by cluster/slurm-up.sh: cancel its jobs first (stopping slurmd
# does not kill running jobs), then slurmd, slurmctld, and munged only if slurm-up.sh started it.
# Only processes named in STATE_DIR's pid files are signalled, and only if their name matches.
#
#   cluster/slurm-down.sh [STATE_DIR]      (default: $QDCAVITY_SLURM_DIR or /tmp/qdcavity-slurm)
set -uo pipefail

STATE=${1:-${QDCAVITY_SLURM_DIR:-/tmp/qdcavity-slurm}}
CONF="$STATE/slurm.conf"

stop() {  # stop PIDFILE NAME: TERM, wait up to 10 s, then KILL
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        rm -f "$file"; return 0      # gone, or the pid now belongs to something else
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$file"
}

if [ -f "$CONF" ] && [ -s "$STATE/slurmctld.pid" ]; then
    export SLURM_CONF="$CONF"
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
fi
stop "$STATE/slurmd.pid" slurmd
stop "$STATE/slurmctld.pid" slurmctld
if [ -s "$STATE/started-munged.pid" ]; then
    cp "$STATE/started-munged.pid" "$STATE/munged.stop.pid"
    stop "$STATE/munged.stop.pid" munged
    rm -f "$STATE/started-munged.pid"
fi
echo "slurm-down: stopped ($STATE)"
