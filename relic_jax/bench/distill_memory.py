"""Memory and time of one distillation step, replayed vs naive back-propagation.

python -m relic_jax.bench.distill_memory --config=experiments/small.py --out=distill_memory.json

One step = the student's rollout over N blocks (a random exit step, by default one for all
blocks), the DMD direction from the teacher and the critic on the whole sequence, and the
generator's gradient (`training/self_forcing.generator_grads`; the optimizer update and the
critic step are not included). For each mode and N in --blocks, the step is compiled alone
and measured:
  temp_bytes    XLA's compiled memory analysis, temp_size_in_bytes: the working memory beyond
                the arguments (params of generator, teacher and critic, the batch) and the
                outputs; deterministic for a given program
  peak_bytes    arguments + outputs + temp - aliased
  step_time_s   wall-clock of the compiled step (median of --repeats after a warm-up)
Output: {"replayed": {"2": {...}, ...}, "naive": {...}, "growth": {mode: temp(N_max) /
temp(N_min)}, "config": ...}. The attention kernel is --attention (default "chunked": online
softmax over key chunks, so no score matrix over the whole sequence is materialised); the
cache is sized to each rollout (memory.max_frames = 1 + 3 N). Params are random (memory and
time do not depend on them).
"""

import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.training import self_forcing as sf
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import compiled_stats

define_flags("experiments/small.py")
flags.DEFINE_list("blocks", ["2", "4", "8", "16"], "Rollout lengths (blocks).")
flags.DEFINE_list("modes", ["replayed", "naive"], "Back-propagation modes.")
flags.DEFINE_string("attention", "chunked", "model.attention_impl for the measurement.")
flags.DEFINE_integer("batch", 1, "Rollouts per step.")
flags.DEFINE_bool("naive_remat", True, "distill.naive_remat: rematerialise each block in the "
                  "naive mode's backward pass.")
flags.DEFINE_integer("repeats", 2, "Timed steps per measurement (after one warm-up); 0: only "
                     "compile and report memory.")


def measure(cfg, params, mode: str, blocks: int, batch: int, repeats: int) -> dict:
  spec = sf.spec_from_config(cfg, blocks, backprop=mode)
  c, d = spec.stream.dit, cfg.data
  k = jax.random.split(jax.random.key(1), 3)
  text = (jax.random.randint(k[1], (batch, d.text_len), 0, 256) if c.text_encoder == "bytes"
          else jax.random.normal(k[1], (batch, d.text_len, c.text_dim)))
  inputs = {"latent0": jax.random.normal(k[0], (batch, 1, d.latent_height, d.latent_width,
                                                 c.in_channels)),
            "text": text,
            "actions": jax.random.uniform(k[2], (batch, blocks * spec.video_frames_per_block,
                                                 13))}
  fn = jax.jit(lambda g, t, cr, b: sf.generator_grads(g, t, cr, spec, b, jax.random.key(2))[:2])
  t0 = time.time()
  compiled = fn.lower(params, params, params, inputs).compile()
  out = {"compile_s": time.time() - t0, "latent_frames": spec.latent_frames}
  stats = compiled_stats(compiled)
  out |= {k: stats[k] for k in ("temp_bytes", "peak_bytes", "argument_bytes") if k in stats}
  if repeats:
    jax.block_until_ready(compiled(params, params, params, inputs))
    times = []
    for _ in range(repeats):
      t0 = time.time()
      jax.block_until_ready(compiled(params, params, params, inputs))
      times.append(time.time() - t0)
    out["step_time_s"] = float(np.median(times))
  return out


def main(argv):
  del argv
  cfg = FLAGS.config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.attention_impl = FLAGS.attention
    cfg.distill.naive_remat = FLAGS.naive_remat
  params = nn.meta.unbox(TeacherTask(cfg).init_params(jax.random.key(0)))
  blocks = [int(b) for b in FLAGS.blocks]
  result = {"config": cfg.name, "attention_impl": FLAGS.attention, "batch": FLAGS.batch,
            "naive_remat": FLAGS.naive_remat,
            "device": jax.devices()[0].device_kind}
  for mode in FLAGS.modes:
    result[mode] = {}
    for n in blocks:
      r = measure(cfg, params, mode, n, FLAGS.batch, FLAGS.repeats)
      result[mode][str(n)] = r
      print(f"[bench] {mode} {n} blocks: temp {r.get('temp_bytes', 0) / 2**20:.1f} MiB, peak "
            f"{r.get('peak_bytes', 0) / 2**20:.1f} MiB, "
            f"step {r.get('step_time_s', float('nan')):.2f} s (compile {r['compile_s']:.1f} s)",
            flush=True)
  result["growth"] = {
      m: result[m][str(blocks[-1])].get("temp_bytes", 0) / max(
          result[m][str(blocks[0])].get("temp_bytes", 0), 1) for m in FLAGS.modes}
  emit(result)


if __name__ == "__main__":
  app.run(main)
