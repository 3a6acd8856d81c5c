#!/usr/bin/env bash
# The demo's base DiT trained in several variants at once on one accelerator (which the small
# DiT leaves nearly idle), on a shared dataset and latent cache, each exported as the assets
# folder it would ship as: to choose a base DiT by its held-out figures in one machine lease.
#
#   bash relic_jax/bench/device_dit_sweep.sh OUT_DIR 'VARIANT_0 OVERRIDES' 'VARIANT_1 ...' ...
#   (from the repo root; SHARED_OVERRIDES apply to every stage of every variant)
#
# Stages: `relic pipeline --until=encode` once (data, the VAE, the latent cache), then one
# `relic train_teacher` per variant in parallel (variant i in $W.v<i>, whose data, latents,
# VAE and tiny decoder are links to the shared ones), then `relic export-assets` for each. A
# rerun on the same machine resumes every stage. OUT_DIR receives demo_assets_<i>.tgz (each variant's exported
# folder, when it finished), logs.tgz (every log and the teachers' metrics) and sweep.log.
# SWEEP_BUDGET_S (default 560) bounds the whole; the teachers stop SWEEP_EXPORT_S (default 70)
# before it so that finished ones can still be exported.
source "$(dirname "$0")/device_common.sh" "$@"
shift
read -r -a SHARED <<< "${SHARED_OVERRIDES:-}"
BUDGET=${SWEEP_BUDGET_S:-560}
EXPORT_S=${SWEEP_EXPORT_S:-70}
LOG="$OUT/sweep.log"
left() { echo $((BUDGET - (SECONDS - START))); }

{
  "$PY" -c "import jax, platform; print('jax', jax.__version__, jax.devices(), platform.node())"
  timeout $(($(left) - EXPORT_S)) "$PY" -m relic_jax.cli pipeline --config="$CONFIG" \
    --workdir="$W" --until=encode "${SHARED[@]}"
  echo "[sweep] shared stages exit status $? after $((SECONDS - START)) s"
  i=0
  for v in "$@"; do
    read -r -a V <<< "$v"
    mkdir -p "$W.v$i"
    for d in data latents vae vae_tiny; do ln -sfn "$W/$d" "$W.v$i/$d"; done
    timeout $(($(left) - EXPORT_S)) "$PY" -m relic_jax.cli train_teacher --config="$CONFIG" \
      --workdir="$W.v$i" "${SHARED[@]}" "${V[@]}" > "$W.v$i.teacher.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  echo "[sweep] teachers done after $((SECONDS - START)) s"
  i=0
  for v in "$@"; do
    read -r -a V <<< "$v"
    ( timeout $(($(left) - 5)) "$PY" -m relic_jax.cli export-assets --config="$CONFIG" \
        --workdir="$W.v$i" --out="$W.v$i/export/demo" "${SHARED[@]}" "${V[@]}" \
        > "$W.v$i.export.log" 2>&1 \
      && tar czf "$OUT/demo_assets_$i.tgz" -C "$W.v$i/export" demo
      echo "[sweep] variant $i ($v): export exit status $? after $((SECONDS - START)) s" ) &
    i=$((i + 1))
  done
  wait
} > "$LOG" 2>&1

(cd "$(dirname "$W")" && tar czf "$OUT/logs.tgz" --exclude='*/checkpoints' \
  --exclude='*/tensorboard' "$(basename "$W").v"*.log "$(basename "$W").v"*/teacher 2>/dev/null)
tail -8 "$LOG"
for f in "$W".v*.teacher.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '%|' | tail -4; done
