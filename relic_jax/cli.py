"""The `relic` command: `relic <stage> --config=experiments/<name>.py --workdir=DIR
[--config.a.b=value ...]`.

Stages available now:
  train_teacher   flow-matching training of the (bidirectional) DiT
  info            print the resolved config, mesh and parameter count; trains nothing
Planned stages (later issues): data, train_vae, encode, ode_init, distill, generate, evaluate,
pipeline.
"""

import difflib
import importlib.util
import json
import os
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
  try:
    cfg.keys()  # a config file that failed to load raises on first access
  except OSError as e:
    path = _config_path(sys.argv)
    if path and not os.path.exists(path.partition(":")[0]):
      cause = f"no such file {path.partition(':')[0]!r} (relative to {os.getcwd()})"
    else:
      cause = " ".join(str(e.__cause__ or e).split())
    _fail(f"cannot load --config={path}: {cause}. Fix: pass an existing experiment file, e.g. "
          "--config=experiments/tiny.py")
  if stage in NEEDS_WORKDIR and not FLAGS.workdir:
    _fail(f"stage '{stage}' needs --workdir=DIR (where checkpoints and logs go)")
  try:
    validate(cfg)  # what the config alone determines; needs no JAX
  except ConfigError as e:
    _fail(str(e))
  import jax
  from relic_jax.parallel.mesh import maybe_initialize_distributed
  from relic_jax.training.checkpoint import CheckpointError
  from relic_jax.training.trainer import NonFiniteError
  try:
    maybe_initialize_distributed(cfg.distributed)  # before anything asks for the devices
    # the mesh against the actual devices, and the batch/params against the mesh
    validate(cfg, num_devices=jax.device_count(), num_processes=jax.process_count())
    STAGES[stage](cfg, FLAGS.workdir)
  except (ConfigError, CheckpointError) as e:
    _fail(str(e))
  except NonFiniteError as e:
    _fail(str(e), code=3)


def _config_path(argv):
  """The value of --config in argv, or None."""
  path = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      path = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _load_config_file(argv):
  """The experiment config named by --config in argv (None if it cannot be loaded)."""
  path = _config_path(argv)
  if not path:
    return None, None
  file, _, arg = path.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("relic_cli_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return (module.get_config(arg) if arg else module.get_config()), file
  except Exception:  # the flag parser reports an unloadable file itself
    return None, file


def _bad_override_message(argv, error) -> str:
  """Names the --config.a.b=v override whose field does not exist, with the valid fields."""
  cfg, file = _load_config_file(argv)
  overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  if cfg is not None:
    for dotted in overrides:
      node, prefix = cfg, "config"
      for part in dotted.split(".")[1:]:
        if not hasattr(node, "keys"):
          return (f"--{dotted}: {prefix} is not a group of fields (it holds the value "
                  f"{node!r}). Fix: override {prefix} itself.")
        if part not in node:
          fields = sorted(node.keys())
          close = difflib.get_close_matches(part, fields, n=1)
          hint = f" Did you mean '{close[0]}'?" if close else ""
          return (f"--{dotted}: {prefix} has no field '{part}'.{hint} Fields of {prefix}: "
                  f"{', '.join(fields)}. Fix: override an existing field (see {file} and "
                  "relic_jax/config/base.py).")
        node, prefix = node[part], f"{prefix}.{part}"
  first = " ".join(str(error).split())
  return (f"a --config.* override ({', '.join(overrides) or 'none given'}) could not be applied: "
          f"{first}. Fix: override only fields that exist in relic_jax/config/base.py.")


def _parse_flags(argv):
  """absl flag parsing, with flag and config-override errors turned into `relic: error:`."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}. Usage: relic <stage> --config=experiments/<name>.py --workdir=DIR "
          "[--config.a.b=value ...]")
  except (AttributeError, KeyError, TypeError) as e:  # config_flags: override of a missing field
    _fail(_bad_override_message(argv, e))


def run():
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
