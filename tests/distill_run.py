"""A tiny distillation run in its own process, for the kill-and-resume test.

python -m tests.distill_run WORKDIR [--kill_at=N] [--config.x=y ...]

WORKDIR must hold a teacher (WORKDIR/teacher). --kill_at=N: SIGKILLs this process right after
step N's metrics are read (no clean shutdown, as with a pre-empted job).
"""

import os
import signal
import sys


def main():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", "experiments/tiny.py", "config", lock_config=True)
  flags.DEFINE_integer("kill_at", -1, "SIGKILL after this step.")
  argv = flags.FLAGS(sys.argv)
  cfg = flags.FLAGS.config

  from relic_jax.training.distill import distill

  def killer(step, metrics):
    del metrics
    if step == flags.FLAGS.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  distill(cfg, argv[1], hooks=(killer,))


if __name__ == "__main__":
  main()
