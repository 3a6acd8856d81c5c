#!/usr/bin/env bash
# `make assets` on one accelerator machine: the demo's base assets (experiments/demo_assets.py:
# data -> train_vae -> encode -> train_teacher -> export-assets, docs/assets.md) within one
# machine lease, then what is left of the lease on the device suite (device_suite.sh).
#
#   bash relic_jax/bench/device_assets.sh OUT_DIR [--config.X=...]   (from the repo root)
#
# OUT_DIR receives at most 8 files:
#   demo_assets.tgz   the exported folder (assets/demo), when every stage finished
#   workdir.tgz.*     the asset run without its dataset and latent cache (checkpoints, stage
#                     records, logs), split into 15 MB parts: unpack it into ASSETS_WORKDIR
#                     and rerun `make assets` to continue where the lease stopped
#   assets.log        the pipeline's and export's output
#   suite.tgz         the device suite's JSON and logs (when time was left)
# ASSETS_BUDGET_S (default 470) bounds the pipeline, TOTAL_BUDGET_S (default 575) the whole.
source "$(dirname "$0")/device_common.sh" "$@"
shift
LOG="$OUT/assets.log"

{
  "$PY" -c "import jax, platform; print('jax', jax.__version__, jax.devices(), platform.node())"
  timeout "${ASSETS_BUDGET_S:-470}" "$PY" -m relic_jax.cli pipeline --config="$CONFIG" \
    --workdir="$W" --until=train_teacher "$@"
  rc=$?
  echo "[device_assets] pipeline exit status $rc after $((SECONDS - START)) s"
  if ((rc == 0)); then
    "$PY" -m relic_jax.cli export-assets --config="$CONFIG" --workdir="$W" --out="$W/export/demo" \
      "$@" && tar czf "$OUT/demo_assets.tgz" -C "$W/export" demo
    echo "[device_assets] export exit status $? after $((SECONDS - START)) s"
  fi
} > "$LOG" 2>&1

# The run's records (every file under 1 MB outside the dataset and the latent cache) and, when
# the export did not happen, the latest checkpoint of each phase in the order the stages run: a
# part cut off by the 64 MB the lease returns still unpacks up to where it was cut.
"$PY" - "$W" "$OUT/demo_assets.tgz" > "$W.list" <<'EOF'
import os, sys
root, exported = sys.argv[1], os.path.exists(sys.argv[2])
records, ckpts = [], []
for d, dirs, files in os.walk(root):
  rel = os.path.relpath(d, root)
  if rel.split(os.sep)[0] in ("data", "latents", "export"):
    dirs[:] = []
    continue
  if os.path.basename(d) == "checkpoints":
    steps = sorted((x for x in dirs if x.isdigit()), key=int)
    dirs[:] = []
    if steps and not exported:
      ckpts.append(os.path.join(rel, steps[-1]))
    continue
  records += [os.path.join(rel, f) for f in files
              if os.path.getsize(os.path.join(d, f)) < 1 << 20]
order = ("vae/clips_", "vae/checkpoints", "vae_tiny", "teacher/horizon_", "teacher/checkpoints")
ckpts.sort(key=lambda c: ([i for i, o in enumerate(order) if c.startswith(o)] or [9], c))
print("\n".join(sorted(records) + ckpts))
EOF
tar czf "$W.tgz" -C "$W" -T "$W.list"
split -b 15000000 -d -a 1 "$W.tgz" "$OUT/workdir.tgz."
rm -f "$W.tgz" "$W.list" "$OUT"/workdir.tgz.[4-9]   # 4 parts: 60 of the 64 MB returned
echo "[device_assets] workdir packed after $((SECONDS - START)) s" >> "$LOG"

left=$((${TOTAL_BUDGET_S:-575} - (SECONDS - START)))
if ((left > 90)); then
  SUITE_BUDGET_S=$((left - 15)) PY=$PY bash relic_jax/bench/device_suite.sh "$W.suite" \
    >> "$LOG" 2>&1
  tar czf "$OUT/suite.tgz" -C "$W.suite" .
fi
tail -5 "$LOG"
