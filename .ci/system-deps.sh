#!/usr/bin/env bash
# Debian packages the full test suite needs: the real Meep (python3-meep, for /usr/bin/python3,
# with the matplotlib and h5py it imports) and a one-node SLURM (slurmctld, slurmd, munge).
# Run as root (or with sudo). Idempotent; skips apt when everything is present.
set -euo pipefail
packages=(python3-meep python3-matplotlib python3-h5py slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
