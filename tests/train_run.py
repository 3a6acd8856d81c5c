"""A tiny teacher run in its own process, for the kill-and-resume tests.

python -m tests.train_run WORKDIR STEPS [--kill-at=N] [--dump=F.npz] [--config.x=y ...]

--kill-at=N: SIGKILLs this process right after step N's metrics are read (no clean shutdown,
as with a pre-empted job). --dump: writes the final params (flattened, keyed by path) to F.
"""

import os
import signal
import sys

import jax
import numpy as np


def main():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", "experiments/tiny.py", "config", lock_config=True)
  flags.DEFINE_integer("kill_at", -1, "SIGKILL after this step.")
  flags.DEFINE_string("dump", "", "Write final params here (.npz).")
  argv = flags.FLAGS(sys.argv)
  workdir, steps = argv[1], int(argv[2])
  cfg = flags.FLAGS.config
  cfg.unlock()
  cfg.train.steps = steps
  cfg.train.progress_bar = False

  from relic_jax.training.teacher import TeacherTask
  from relic_jax.training.trainer import train

  def killer(step, metrics):
    del metrics
    if step == flags.FLAGS.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  train(cfg, workdir, TeacherTask(cfg), hooks=(killer,))
  if flags.FLAGS.dump:
    from relic_jax.inference.loading import load_dit_params
    params = load_dit_params(cfg, workdir)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    np.savez(flags.FLAGS.dump, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})


if __name__ == "__main__":
  main()
