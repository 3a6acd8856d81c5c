#!/usr/bin/env bash
# The accelerator's figures in one run, at most ~9 minutes on one H100/H200: prints one JSON line
# (and writes it to $OUT/suite.json) with
#   train_step     the teacher's train step, bf16, cuDNN attention: `small` and a 1.3B-class
#                  config (wan_1_3b on a 9-latent-frame clip, batch 1) under remat full and
#                  dots_saveable: step time, tokens/s, TFLOP/s, MFU, compiled peak memory
#   streaming      wan_1_3b's streaming block at 480x832 (60x104 latents): FPS and per-block
#                  latency of relic, full and window memory at 21 and 80 latent frames
#   distill_memory `small`'s distillation step at rollouts of 2 and 16 blocks (replayed):
#                  compiled peak memory and step time
# Each part runs under its own time limit; a part that fails or runs out of time is reported
# with its exit status and the tail of its log, and the others still run.
#
#   bash relic_jax/bench/device_suite.sh [OUT_DIR]      (on the device, from the repo root)
#   SUITE_DRY=1 bash relic_jax/bench/device_suite.sh    (CPU: the same parts at tiny sizes)
set -uo pipefail
OUT=${1:-${OUT:-device_suite}}
PY=${PY:-python}
mkdir -p "$OUT"
START=$SECONDS
BUDGET=${SUITE_BUDGET_S:-530}

if [[ "${SUITE_DRY:-0}" == "1" ]]; then
  SMALL=experiments/tiny.py
  BIG=experiments/tiny.py
  BIG_ARGS=()
  STREAM_ARGS=(--horizons=7,13 --blocks=1)
  ATTN=xla
else
  SMALL=experiments/small.py
  BIG=experiments/wan_1_3b.py
  BIG_ARGS=(--config.data.latent_frames=9 --config.train.batch_size=1)
  STREAM_ARGS=(--horizons=21,80 --blocks=3)
  ATTN=cudnn
fi
BF16=(--config.model.dtype=bfloat16 --config.model.attention_impl=$ATTN
      --config.model.cache_attention_impl=chunked)

# run NAME LIMIT_S MODULE ARGS...: one benchmark, its JSON in $OUT/NAME.json
run() {
  local name=$1 limit=$2 module=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    echo "{\"skipped\": \"no time left in the suite's ${BUDGET}s\"}" > "$OUT/$name.json"
    return
  fi
  ((limit > left)) && limit=$left
  timeout "$limit" "$PY" -m "relic_jax.bench.$module" "$@" --out="$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  if ((rc != 0)); then
    "$PY" - "$OUT/$name" "$rc" "$limit" <<'EOF'
import json, sys
base, rc, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tail = open(base + ".log", errors="replace").read()[-1500:]
why = f"timed out after {limit}s" if rc in (124, 137) else f"exit status {rc}"
json.dump({"failed": why, "log_tail": tail}, open(base + ".json", "w"))
EOF
  fi
}

run small_train_full 80 train_step --config=$SMALL "${BF16[@]}" \
  --config.model.remat_policy=full --steps=5 --warmup=2
run big_train_full 110 train_step --config=$BIG "${BF16[@]}" "${BIG_ARGS[@]}" \
  --config.model.remat_policy=full --steps=5 --warmup=2
run big_train_dots 110 train_step --config=$BIG "${BF16[@]}" "${BIG_ARGS[@]}" \
  --config.model.remat_policy=dots_saveable --steps=5 --warmup=2
run big_streaming 150 streaming --config=$BIG "${BF16[@]}" "${STREAM_ARGS[@]}" \
  --modes=relic,full,window
run small_distill_memory 120 distill_memory --config=$SMALL "${BF16[@]}" --blocks=2,16 \
  --modes=replayed --attention=chunked --repeats=1

"$PY" - "$OUT" "$((SECONDS - START))" <<'EOF'
import json, os, sys
out, wall = sys.argv[1], int(sys.argv[2])
parts = {}
for name in ("small_train_full", "big_train_full", "big_train_dots", "big_streaming",
             "small_distill_memory"):
  path = os.path.join(out, name + ".json")
  try:
    parts[name] = json.load(open(path))
  except (OSError, ValueError) as e:
    parts[name] = {"failed": f"no result ({e})"}
try:
  import jax
  device = jax.devices()[0].device_kind
except Exception as e:  # the suite's figures stand without it
  device = f"unknown ({e})"
suite = {"suite": "relic_jax device suite", "device": device, "wall_s": wall,
         "dry": os.environ.get("SUITE_DRY", "0") == "1", **parts}
line = json.dumps(suite, sort_keys=True)
open(os.path.join(out, "suite.json"), "w").write(line + "\n")
print(line)
EOF
