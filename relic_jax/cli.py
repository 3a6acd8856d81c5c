"""The `relic` command: `relic <stage> --config=experiments/<name>.py --workdir=DIR
[--config.a.b=value ...]`.

Stages available now:
  train_teacher   flow-matching training of the (bidirectional) DiT
  info            print the resolved config, mesh and parameter count; trains nothing
Planned stages (later issues): data, train_vae, encode, ode_init, distill, generate, evaluate,
pipeline.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from relic_jax.config import ConfigError, validate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def _train_teacher(cfg, workdir):
  from relic_jax.training.teacher import TeacherTask
  from relic_jax.training.trainer import train
  final = train(cfg, workdir, TeacherTask(cfg))
  print(json.dumps(final, sort_keys=True))
  print(f"[relic] done: checkpoints in {workdir}/checkpoints, TensorBoard logs in "
        f"{workdir}/tensorboard, final metrics in {workdir}/final_metrics.json")


def _info(cfg, workdir):
  del workdir
  import jax
  from relic_jax.parallel.mesh import make_mesh
  from relic_jax.training.teacher import TeacherTask
  task = TeacherTask(cfg)
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  mesh = make_mesh(cfg.mesh)
  print(cfg)
  print(f"mesh: {dict(mesh.shape)} over {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"params: {n:,}")


STAGES = {"train_teacher": _train_teacher, "info": _info}
PLANNED = ("data", "train_vae", "encode", "ode_init", "distill", "generate", "evaluate", "pipeline")
NEEDS_WORKDIR = ("train_teacher",)


def _fail(message: str, code: int = 2):
  print(f"relic: error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) != 2:
    _fail(f"expected exactly one stage, got {argv[1:]}. Usage: relic <stage> "
          f"--config=experiments/<name>.py --workdir=DIR; stages: {', '.join(STAGES)}")
  stage = argv[1]
  if stage not in STAGES:
    hint = (f" '{stage}' is planned but not implemented yet." if stage in PLANNED else "")
    _fail(f"unknown stage '{stage}'.{hint} Available stages: {', '.join(STAGES)}.")
  cfg = FLAGS.config
  if cfg is None:
    _fail("--config is required, e.g. --config=experiments/tiny.py")
  if stage in NEEDS_WORKDIR and not FLAGS.workdir:
    _fail(f"stage '{stage}' needs --workdir=DIR (where checkpoints and logs go)")
  from relic_jax.training.checkpoint import CheckpointError
  from relic_jax.training.trainer import NonFiniteError
  try:
    validate(cfg)
    STAGES[stage](cfg, FLAGS.workdir)
  except (ConfigError, CheckpointError) as e:
    _fail(str(e))
  except NonFiniteError as e:
    _fail(str(e), code=3)


def run():
  logging.set_verbosity(logging.WARNING)
  app.run(main)


if __name__ == "__main__":
  run()
