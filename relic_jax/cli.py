"""The `relic` command: `relic <stage> --config=experiments/<name>.py --workdir=DIR
[--config.a.b=value ...]`. Its stages are the records of relic_jax/stages.py; `usage()` lists
them (below, and in `relic --help`).
"""

import contextlib
import difflib
import importlib.util
import json
import logging as py_logging
import os
import sys
import textwrap

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipeline.episode import DataError
from relic_jax import pipeline, stages
from relic_jax.bench import aot
from relic_jax.checkpoint import CheckpointError, CheckpointWriteError
from relic_jax.config import ConfigError, validate
from relic_jax.evaluation.pose_estimation import PoseEstimatorError
from relic_jax.inference.scripts import ScriptError
from relic_jax.inference.text import TextEncoderError
from relic_jax.inference.streaming import ActionError
from relic_jax.io_utils import one_line
from relic_jax.memory.kv_cache import CacheCapacityError
from relic_jax.parallel.mesh import maybe_initialize_distributed
from relic_jax.pipeline import PipelineError
from relic_jax.stages import WorkdirUse
from relic_jax.sweep import SweepError, main_cli
from relic_jax.training.distill import DistillError
from relic_jax.training.ode_init import ODEInitError
from relic_jax.training.teacher import CurriculumError
from relic_jax.training.trainer import NonFiniteError
from relic_jax.training.vae_train import VAECurriculumError
from relic_jax.assets import AssetsError
from relic_jax.weights import SafetensorsError, UMT5ImportError, WanImportError
from relic_jax.weights.export import ExportError
from relic_jax.weights.pretrained import PretrainedError
from relic_jax.workdir import WorkdirError, locked

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_string("source", None, "import-wan: a diffusers WanTransformer3DModel directory "
                    "(config.json + safetensors, sharded or not); data ingest: the directory "
                    "of external episodes.")
flags.DEFINE_string("out", None, "import-wan: where to write the imported params; data "
                    "preview: where to write the MP4 and PNG (default <dataset>/preview).")
flags.DEFINE_string("data", None, "pipeline, data: `ingest:DIR` trains on your own episodes "
                    "(the ingest format, docs/data.md) instead of ViZDoom; sets "
                    "config.data.ingest=DIR.")
flags.DEFINE_string("until", None, "pipeline: stop after this stage (e.g. train_teacher, as "
                    "`make assets` does).")
flags.DEFINE_string("episode", None, "data preview: the episode's name (default: the first).")
flags.DEFINE_string("actions", None, "generate: a built-in action script "
                    "(relic_jax/inference/scripts.py BUILTIN: look_around, room_visit, "
                    "tour_20s, tour_40s, pan_360, look_away_and_back, ...) or a script file.")
flags.DEFINE_string("image", None, "generate: the start image (default: frame 0 of the first "
                    "held-out episode).")
flags.DEFINE_string("text", None, "generate: the caption (default: the episode's).")
flags.DEFINE_string("host", "127.0.0.1", "play: the address to serve on (127.0.0.1: this "
                    "machine only; 0.0.0.0 exposes it to the network).")
flags.DEFINE_integer("port", 8000, "play: the HTTP port.")
flags.DEFINE_integer("max_sessions", 2, "play: players at once (more get a busy message).")
flags.DEFINE_string("topology", None, "compile: the TPU or GPU topology compiled for "
                    "(v5p-64, v6e-32, h100x8, h100x32, ...; relic_jax/bench/aot.py TOPOLOGIES).")
flags.DEFINE_string("stage", "teacher", "compile: the stage whose step is compiled (teacher, "
                    "ode_init, distill, stream).")
flags.DEFINE_integer("latent_frames", None, "compile: the teacher's clip, the distillation "
                     "rollout's or the streaming cache's length in latent frames (default: the "
                     "config's).")

# The errors a stage reports as `relic: error: ...` (exit 2): a wrong config, file or input.
USER_ERRORS = (ConfigError, CheckpointError, SafetensorsError, WanImportError, UMT5ImportError,
               DataError, PretrainedError, AssetsError, ExportError,
               ScriptError, ActionError, CacheCapacityError, DistillError, ODEInitError,
               CurriculumError, PipelineError, PoseEstimatorError, VAECurriculumError,
               TextEncoderError, WorkdirError)


def _pipeline(cfg, workdir, until=None):
  """`relic pipeline [--until=STAGE]`: every pipeline stage in order (relic_jax/pipeline.py),
  or those up to STAGE, then a summary. The pose estimator serves only the evaluation, so a
  pipeline stopped before `evaluate` (`make assets`: --until=train_teacher) skips it."""
  order = list(pipeline.PIPELINE_STAGES)
  if until is not None and until not in order:
    raise PipelineError(f"--until={until} is not a pipeline stage. Fix: use one of "
                        f"{', '.join(order)}.")
  chosen = None
  if until:
    chosen = order[:order.index(until) + 1]
    if "evaluate" not in chosen:
      chosen = [s for s in chosen if s != "pose_estimator" or s == until]
  r = pipeline.run_pipeline(cfg, workdir, stages=chosen, progress=cfg.train.progress_bar)
  res = r["results"]
  print("[relic] pipeline stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["stages"].items()))
  if r["metrics"] is None:
    print(f"[relic] pipeline done in {r['seconds'] / 60:.1f} min (stopped after {until}).")
    return
  with open(os.path.join(res, "metrics.md")) as f:
    print(f.read())
  print(f"[relic] pipeline done in {r['seconds'] / 60:.1f} min. Results in {res}: metrics.json "
        f"and metrics.md, videos/*.mp4 (relic | window_sink | window | truth), "
        f"plots/*.png; details per case in details.json")


def _sweep(argv):
  """`relic sweep experiments/sweeps/<name>.py[:arg] [--workdir=DIR]` (no --config: the sweep
  file names its experiment)."""
  if len(argv) != 3:
    _fail("usage: relic sweep experiments/sweeps/<name>.py [--workdir=DIR]; sweeps: "
          + ", ".join(sorted(f for f in os.listdir(os.path.join("experiments", "sweeps"))
                             if f.endswith(".py") and not f.startswith("_")))
          if os.path.isdir(os.path.join("experiments", "sweeps")) else
          "usage: relic sweep experiments/sweeps/<name>.py [--workdir=DIR]")
  try:
    main_cli(argv[2], FLAGS.workdir)
  except (SweepError, ConfigError, PipelineError, DataError) as e:
    _fail(str(e))
  except NonFiniteError as e:
    _fail(str(e), code=3)


def _compile(argv):
  """`relic compile --config=... --topology=NAME [--stage=teacher|ode_init|distill|stream]
  [--latent_frames=N] [--out=FILE]`: the stage's step compiled for the topology on this host
  (relic_jax/bench/aot.py); the report's JSON is the last line printed. Exit 4 when it does
  not fit."""
  if len(argv) != 2:
    _fail("usage: relic compile --config=FILE --topology=NAME [--stage=STAGE] "
          "[--latent_frames=N] [--out=FILE]")
  if FLAGS.config is None or not FLAGS.topology:
    _fail("relic compile needs --config=FILE and --topology=NAME (one of "
          f"{', '.join(aot.TOPOLOGIES)})")
  # the host's own devices are never used: only the target's compiler runs
  jax.config.update("jax_platforms", "cpu")
  try:
    cfg = FLAGS.config
    validate(cfg)
    report = aot.compile_stage(cfg, aot.topology(FLAGS.topology), FLAGS.stage,
                               FLAGS.latent_frames)
  except (aot.CompileError, ConfigError) as e:
    _fail(str(e))
  if FLAGS.out:
    aot.write_json(FLAGS.out, report)
  print("[relic] " + aot.summary(report), flush=True)
  print(json.dumps(report, sort_keys=True), flush=True)
  if not report["fits"]:
    sys.exit(4)


# The registry with the bodies stages.py leaves to the CLI: `pipeline`, `sweep` and `compile`
# run outside the usual stage flow (the registry itself; a topology's devices, not the host's).
REGISTRY = stages.bind(stages.REGISTRY, pipeline=_pipeline, sweep=_sweep, compile=_compile)


def usage(registry=REGISTRY) -> str:
  """The stages of `registry`, one entry each (subcommands under their stage), and the
  pipeline's order."""
  lines = ["Stages:"]

  def entry(name, s):
    lines.extend(textwrap.wrap(s.help, 96, initial_indent=f"  {name:<16}",
                               subsequent_indent=" " * 18))
    if s.produces:
      lines.extend(textwrap.wrap(f"-> {s.produces}", 96, initial_indent=" " * 18,
                                 subsequent_indent=" " * 21))

  for name, s in registry.items():
    entry(name, s)
    for sub in s.subcommands:
      if sub.body is not s.body:  # `relic data generate` is `relic data`
        entry(f"{name} {sub.name}", sub)
  order = " -> ".join(s.name for s in pipeline.pipeline_stages(registry))
  lines += textwrap.wrap(f"`relic pipeline` runs {order}.", 96, initial_indent="  ",
                         subsequent_indent="  ")
  return "\n".join(lines) + "\n"


__doc__ += "\n" + usage()


def _fail(message: str, code: int = 2):
  print(f"relic: error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv, registry=REGISTRY):
  names = ", ".join(registry)
  if len(argv) not in (2, 3):
    _fail(f"expected exactly one stage, got {argv[1:]}. Usage: relic <stage> "
          f"--config=experiments/<name>.py --workdir=DIR; stages: {names}")
  name = argv[1]
  if name not in registry:
    close = difflib.get_close_matches(name, list(registry), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    _fail(f"unknown stage '{name}'.{hint} Available stages: {names}.")
  stage = run = registry[name]
  if not stage.takes_config:
    return stage.body(argv)
  sub = argv[2] if len(argv) == 3 else None
  if sub is not None:
    run = stage.subcommand(sub)
    if run is None:
      options = [s.name for s in stage.subcommands]
      _fail(f"stage '{name}' has no subcommand '{sub}'"
            + (f"; it has: {', '.join(options)}." if options else "; it takes none."))
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
  if FLAGS.data is not None:
    kind, _, source = FLAGS.data.partition(":")
    if name not in ("pipeline", "data") or sub not in (None, "generate"):
      _fail(f"--data is for `relic pipeline` and `relic data`, not `relic {name}"
            f"{' ' + sub if sub else ''}`. Fix: drop it (or use --source for `relic data "
            "ingest`).")
    if kind != "ingest" or not source:
      _fail(f"--data={FLAGS.data}: expected ingest:DIR (a directory of your episodes in the "
            "ingest format, docs/data.md). Fix: e.g. --data=ingest:episodes/")
    cfg.data.ingest = source
  if stage.workdir is WorkdirUse.REQUIRED and not FLAGS.workdir:
    _fail(f"stage '{name}' needs --workdir=DIR (where checkpoints and logs go)")
  if stage.workdir is WorkdirUse.DATASET and not (FLAGS.workdir or cfg.data.dir):
    _fail(f"stage '{name}' needs --workdir=DIR (the dataset goes to DIR/data) or "
          "--config.data.dir=DIR")
  full = f"{name} {sub}" if sub else name
  if FLAGS.workdir and os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    _fail(f"--workdir={FLAGS.workdir} is a file, not a directory. Fix: pass a directory (a new "
          "one is created for the stages that write).")
  for flag in run.flags:
    if not FLAGS[flag].value:
      _fail(f"stage '{full}' needs --{flag}=...")
  try:
    validate(cfg)  # what the config alone determines, before any device is asked for
  except ConfigError as e:
    _fail(str(e))
  try:
    maybe_initialize_distributed(cfg.distributed)  # before anything asks for the devices
    # the mesh against the actual devices, and the batch/params against the mesh
    validate(cfg, num_devices=jax.device_count(), num_processes=jax.process_count())
    with _lock(run, cfg, full):
      run_cfg = stages.derived_config(run, cfg, FLAGS.workdir, f"[relic] {full}")
      run.body(run_cfg, FLAGS.workdir, **{f: FLAGS[f].value for f in run.flags + run.options})
  except CheckpointWriteError as e:
    # Orbax's writer threads may keep failing (and logging) while the interpreter shuts down:
    # the one message, then out, as a kill would (a run resumes from its last checkpoint)
    print(f"relic: error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)
  except USER_ERRORS as e:
    _fail(str(e))
  except NonFiniteError as e:
    _fail(str(e), code=3)
  except OSError as e:  # the disk, not the program: full, removed, read-only, permissions
    where = f" ({e.filename})" if e.filename else ""
    _fail(f"{type(e).__name__}: {e.strerror or e}{where}. Fix: check that the disk has space "
          "and the paths exist and are writable, then rerun the same command (it resumes).")


def _lock(stage, cfg, command: str):
  """The workdir's lock for a stage that writes a run (its process 0 holds it); the dataset's
  directory for `relic data` given only config.data.dir. Other stages: no lock."""
  root = FLAGS.workdir or (cfg.data.dir if stage.workdir is stages.WorkdirUse.DATASET else None)
  if not stage.locks or not root or jax.process_index() != 0:
    return contextlib.nullcontext()
  return locked(root, command)


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


def _config_file_error(argv) -> str | None:
  """Why the experiment file named by --config cannot be loaded (None: it loads, so an override
  failed): a syntax error, an exception in get_config, no get_config, not a config."""
  path = _config_path(argv)
  if not path:
    return None
  file, _, arg = path.partition(":")
  fix = ("Fix: correct the file, or start from one of experiments/*.py (a module whose "
         "get_config() returns relic_jax.config.get_base_config() with changes).")
  try:
    spec = importlib.util.spec_from_file_location("relic_cli_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      return f"cannot load --config={path}: the file defines no get_config(). {fix}"
    cfg = module.get_config(arg) if arg else module.get_config()
  except SyntaxError as e:
    return f"cannot load --config={path}: syntax error at line {e.lineno} ({e.msg}). {fix}"
  except Exception as e:  # noqa: BLE001 (whatever the experiment's own code raises)
    cause = one_line(e)
    return f"cannot load --config={path}: get_config() raised {type(e).__name__}: {cause}. {fix}"
  if not hasattr(cfg, "keys"):
    return (f"cannot load --config={path}: get_config() returned a {type(cfg).__name__}, not a "
            f"config. {fix}")
  return None


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
  except Exception as e:  # noqa: BLE001 (config_flags runs the experiment file, then overrides)
    _fail(_config_file_error(argv) or _bad_override_message(argv, e))


class _OrbaxFailures:
  """Drops Orbax's own error logs (a failed background write logs a traceback per handler,
  hundreds of lines): the failure reaches the run as one CheckpointError, whose message the
  command prints (relic_jax/checkpoint.py)."""

  def filter(self, record) -> bool:
    return not (record.levelno >= 40 and "orbax" in (record.pathname or ""))


def run():
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("absl").addFilter(_OrbaxFailures())
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:  # the `relic` script: absl's --help prints the stages from here
    main_module.__doc__ = __doc__
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
