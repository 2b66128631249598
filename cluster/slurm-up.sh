#!/usr/bin/env bash
# Start a one-node SLURM cluster (munged, slurmctld, slurmd) for tests and demos.
#
#   cluster/slurm-up.sh [STATE_DIR]        (default: $QDCAVITY_SLURM_DIR or /tmp/qdcavity-slurm)
#   export SLURM_CONF=STATE_DIR/slurm.conf  (printed at the end; sbatch, squeue and
#                                            dask-jobqueue need it)
#   cluster/slurm-down.sh [STATE_DIR]      stops exactly what this script started
#
# Needs root (slurmd starts jobs) and the Debian packages
#   apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
# Works without systemd (containers, CI): the daemons are started here, by hand.
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818) from the environment, so a
# test can run next to another SLURM. A munged that already answers is reused (and never
# stopped by slurm-down.sh); one started here is recorded in STATE_DIR/started-munged.pid.
set -euo pipefail

STATE=${1:-${QDCAVITY_SLURM_DIR:-/tmp/qdcavity-slurm}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
NODE=$(hostname -s)
CONF="$STATE/slurm.conf"

die() { echo "slurm-up: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd launches jobs)"
for exe in munged slurmctld slurmd sbatch sinfo; do
    command -v "$exe" >/dev/null || die "$exe not found: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge"
done

if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid"; then
    echo "slurm-up: already running in $STATE"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

mkdir -p "$STATE/ctld" "$STATE/spool"
chmod 0755 "$STATE"

# ---- munge: socket folder owned by munge, key owned by munge with mode 0400, daemon as munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    KEY=/etc/munge/munge.key
    if [ ! -s "$KEY" ]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$KEY"
    chmod 0400 "$KEY"
    install -d -o munge -g munge -m 0700 "$STATE/munge"
    runuser -u munge -- munged --key-file="$KEY" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    for _ in $(seq 50); do
        alive "$STATE/munge/munged.pid" && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    alive "$STATE/munge/munged.pid" || die "munged did not start (see $STATE/munge/munged.log)"
    cp "$STATE/munge/munged.pid" "$STATE/started-munged.pid"
fi

# ---- slurm.conf: the node line from `slurmd -C`, memory about 1 GiB below what slurmd detects
NODELINE=$(slurmd -C | head -n1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODELINE")
[ -n "$MEM" ] || die "cannot read RealMemory from 'slurmd -C': $NODELINE"
MEM=$(( MEM > 2048 ? MEM - 1024 : MEM / 2 ))
NODELINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$MEM/; s/NodeName=[^ ]*/NodeName=$NODE/" <<<"$NODELINE")
sed -e "s|@NODE@|$NODE|g" -e "s|@STATE@|$STATE|g" -e "s|@NODELINE@|$NODELINE|" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|" -e "s|@SLURMD_PORT@|$SLURMD_PORT|" \
    "$HERE/slurm.conf.in" > "$CONF"
export SLURM_CONF="$CONF"

# ---- daemons (they fork and write their pid files into STATE)
slurmctld -f "$CONF" -i
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld did not come up (see $STATE/slurmctld.log)"
slurmd -f "$CONF"
for _ in $(seq 150); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.2
done
state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) die "node $NODE is '$state', not idle (see $STATE/slurmd.log, $STATE/slurmctld.log)" ;;
esac
echo "slurm-up: node $NODE idle ($NODELINE)"
echo "export SLURM_CONF=$CONF"
