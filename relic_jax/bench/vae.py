"""Speed (and, given a trained run, quality) of the causal video VAE.

python -m relic_jax.bench.vae --config=experiments/tiny.py --out=vae.json [--workdir=DIR]

  encode_frames_per_s      video frames encoded per second, whole clips of the config's
                           1 + 4 (latent_frames - 1) frames at 8x the latent size, batch 1
  decode_frames_per_s      video frames decoded per second, same clips
  stream_decode_latency_s  median time to decode one latent frame (4 video frames) through
                           the streaming cache, what generation pays per latent frame
  tiny_decode_frames_per_s the tiny decoder's rate, same clips (relic_jax/models/tiny_decoder.py)
  tiny_stream_latency_s    the tiny decoder's time per latent frame, streaming
  heldout_psnr / heldout_ssim / tiny_decoder_psnr  from DIR/vae/eval.json when --workdir
                           names a trained run (`relic train_vae`); its params are then the
                           ones timed
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.inference import loading
from relic_jax.models import tiny_decoder as tiny_lib
from relic_jax.models import vae as vae_lib
from relic_jax.training import vae_train
from relic_jax.workdir import Workdir

define_flags("experiments/tiny.py")
flags.DEFINE_string("workdir", None, "A run with a trained VAE (DIR/vae), for its params and "
                    "held-out quality.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after one untimed).")


def _median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_vae(cfg, workdir: str | None, repeats: int) -> dict:
  run_cfg = vae_train.stage_config(cfg)
  task = vae_train.VAETask(run_cfg)
  vae = task.vae
  quality = {"heldout_psnr": None, "heldout_ssim": None, "tiny_decoder_psnr": None}
  tiny_cfg = tiny_lib.TinyDecoderConfig.from_config(cfg.vae)
  tiny_params = tiny_lib.init_params(tiny_cfg, jax.random.key(1))
  if workdir:
    _, params = loading.load_vae(cfg, workdir)
    tiny_dir = Workdir(root=workdir).vae_tiny
    if os.path.isdir(os.path.join(tiny_dir, "checkpoints")):
      _, tiny_params = loading.load_tiny_decoder(cfg, workdir)
    path = os.path.join(vae_train.stage_workdir(workdir), "eval.json")
    if os.path.exists(path):
      with open(path) as f:
        ev = json.load(f)
      quality = {k: ev.get(k) for k in quality}
  else:
    params = task.init_params(jax.random.key(0))
  frames, h, w = task.frames, task.height, task.width
  video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, frames, h, w, 3)),
                      jnp.float32)
  encode = jax.jit(lambda p, v: vae_lib.encode(p, vae, v)[0])
  decode = jax.jit(lambda p, z: vae_lib.decode(p, vae, z))
  z = encode(params, video)
  enc_s = _median_time(lambda: encode(params, video), repeats)
  dec_s = _median_time(lambda: decode(params, z), repeats)
  # streaming: the first latent frame starts the stream, then one latent frame per call
  cache, _ = vae_lib.decode_chunk(params, vae, None, z[:, :1], first=True)
  step = z[:, 1:2] if z.shape[1] > 1 else z[:, :1]
  state = {"cache": cache}

  def one():
    state["cache"], out = vae_lib.decode_chunk(params, vae, state["cache"], step)
    return out
  latency = _median_time(one, repeats)
  tiny = jax.jit(lambda p, z: tiny_lib.decode(p, tiny_cfg, z))
  tiny_s = _median_time(lambda: tiny(tiny_params, z), repeats)
  tiny_step = jax.jit(lambda p, z, prev: tiny_lib.decode(p, tiny_cfg, z, prev, first=False))
  tiny_latency = _median_time(lambda: tiny_step(tiny_params, step, z[:, :1]), repeats)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return {"config": cfg.name, "param_count": int(n_params), "clip_frames": frames,
          "height": h, "width": w, "latent_frames": int(z.shape[1]),
          "encode_frames_per_s": frames / enc_s, "decode_frames_per_s": frames / dec_s,
          "stream_decode_latency_s": latency, "tiny_decode_frames_per_s": frames / tiny_s,
          "tiny_stream_latency_s": tiny_latency, **quality,
          "device_kind": jax.devices()[0].device_kind,
          "trained": bool(workdir)}


def main(argv):
  del argv
  if FLAGS.repeats < 1:
    raise app.UsageError("--repeats must be >= 1")
  emit(bench_vae(FLAGS.config, FLAGS.workdir, FLAGS.repeats))


if __name__ == "__main__":
  app.run(main)
