"""Shared plumbing of the benchmarks: flags (--config, --out) and the JSON result line."""

import json
import os

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
  config_flags.DEFINE_config_file("config", default_config, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Write the JSON result here too.")


def emit(result: dict) -> None:
  """Prints one JSON object as the last line of output and writes it to --out (atomically)."""
  line = json.dumps(result, sort_keys=True)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    tmp = FLAGS.out + ".tmp"
    with open(tmp, "w") as f:
      f.write(line + "\n")
    os.replace(tmp, FLAGS.out)
  print(line, flush=True)
