"""Throughput of the data pipeline against what training consumes.

python -m relic_jax.bench.data --config=experiments/small.py --out=data.json
  [--episodes=8 --loader_batches=20 --trainer_steps=3]

  gen_frames_per_s     `relic data`: ViZDoom rendering + resizing + image encoding + ArrayRecord
                       writing, in config.data.gen.workers processes (0 = one per core), at the
                       config's frame size; spawn start-up included
  loader_clips_per_s   the grain clip iterator (shard reads, checksums, decoding, palindrome,
                       crop/resize, actions and pose features) at the config's clip horizon
                       (1 + 4 (latent_frames - 1) frames) and resolution
  trainer_clips_per_s  global batch / median teacher train-step time on this machine for the
                       config (the consumer the loader must keep up with)
  loader_over_trainer  the ratio of the two (the target: >= 5)
"""

import os
import tempfile
import time

from absl import app, flags

from data_pipeline import loader
from data_pipeline.generate import generate
from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.bench.train_step import bench_train_step

define_flags("experiments/tiny.py")
flags.DEFINE_integer("episodes", 8, "Episodes to generate for the benchmark.")
flags.DEFINE_integer("loader_batches", 20, "Timed loader batches (after 2 untimed).")
flags.DEFINE_integer("trainer_steps", 3, "Timed train steps (0: skip the trainer).")
flags.DEFINE_string("workdir", None, "Where to write the data (default: a temporary directory).")


def bench_data(cfg, episodes: int, loader_batches: int, trainer_steps: int,
               workdir: str | None = None) -> dict:
  cfg = cfg.copy_and_resolve_references()
  cfg.data.gen.num_episodes = episodes
  cfg.data.gen.episodes_per_shard = 1
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(workdir or tmp, "bench_data")
    manifest = generate(cfg, out, progress=False)
    timing = manifest["timing"]
    it = loader.make_clip_iterator(cfg, out, 0, 1)
    for _ in range(2):
      batch = next(it)
    t0 = time.perf_counter()
    for _ in range(loader_batches):
      batch = next(it)
    loader_s = time.perf_counter() - t0
  loader_rate = loader_batches * cfg.train.batch_size / loader_s
  result = {
      "config": cfg.name,
      "gen_frames_per_s": timing["frames_written"] / timing["seconds"],
      "gen_frames": timing["frames_written"],
      "gen_workers": cfg.data.gen.workers or os.cpu_count(),
      "frame_size": [cfg.data.gen.height, cfg.data.gen.width],
      "codec": cfg.data.gen.codec,
      "loader_clips_per_s": loader_rate,
      "clip_shape": list(batch["frames"].shape[1:]),
      "batch_size": cfg.train.batch_size,
      "trainer_clips_per_s": None,
      "loader_over_trainer": None,
  }
  if trainer_steps > 0:
    step = bench_train_step(cfg, trainer_steps, 1)
    result["trainer_clips_per_s"] = cfg.train.batch_size / step["step_time_s"]
    result["trainer_device"] = step["device_kind"]
    result["loader_over_trainer"] = loader_rate / result["trainer_clips_per_s"]
  return result


def main(argv):
  del argv
  if FLAGS.episodes < 1 or FLAGS.loader_batches < 1 or FLAGS.trainer_steps < 0:
    raise app.UsageError("need --episodes >= 1, --loader_batches >= 1, --trainer_steps >= 0")
  emit(bench_data(FLAGS.config, FLAGS.episodes, FLAGS.loader_batches, FLAGS.trainer_steps,
                  FLAGS.workdir))


if __name__ == "__main__":
  app.run(main)
