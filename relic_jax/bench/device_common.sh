# Sourced by the device scripts (device_assets.sh, device_dit_sweep.sh) with their arguments,
# for what they share: the first argument, OUT_DIR (the caller shifts it off), the Python
# (PY), the asset run's workdir (ASSETS_WORKDIR) and config (ASSETS_CONFIG), and the start of
# the clock (START).
set -uo pipefail
OUT=${1:?OUT_DIR}
PY=${PY:-python3}
W=${ASSETS_WORKDIR:-/tmp/relic_assets}
CONFIG=${ASSETS_CONFIG:-experiments/demo_assets.py}
mkdir -p "$OUT" "$W"
START=$SECONDS
