"""The `relic` command: `relic <stage> --config=experiments/<name>.py --workdir=DIR
[--config.a.b=value ...]`.

Stages available now:
  data            generate the ViZDoom episode dataset (config.data.gen) into <workdir>/data
  data ingest     convert external episodes (--source=DIR, see the README) into the same shards
  data preview    an MP4 and a top-down trajectory PNG of an episode (--episode, --out)
  train_vae       the causal video VAE on the dataset's clips, then held-out PSNR/SSIM
  encode          the trained VAE encodes every training clip into the latent cache
  import-wan-vae  convert a diffusers Wan 2.1 AutoencoderKLWan (--source) to params (--out)
  train_teacher   flow-matching training of the (bidirectional) DiT
  ode_init        the block-causal student regresses the teacher's ODE trajectories (hybrid
                  forcing)
  distill         self-forcing DMD distillation of the student (critic, replayed back-prop)
  import-wan      convert a diffusers Wan 2.1 T2V transformer (--source) to params (--out)
  generate        a video from an image, a caption and scripted actions (--actions=NAME|FILE)
                  with the streaming generator and its KV memory
  pose_estimator  train the pose estimator behind the action-following metrics on real frames
  evaluate        action following, spatial memory, stability and speed on held-out maps,
                  against window-only, full-history and copy-last-frame baselines
  pipeline        every stage above in order (data, pose_estimator, train_vae, encode,
                  train_teacher, ode_init, distill, evaluate), skipping what is done
  sweep           `relic sweep experiments/sweeps/<name>.py [--workdir=DIR]`: the ablation's
                  variants as pipelines sharing the baseline's stages, one comparison table
  info            print the resolved config, mesh and parameter count; trains nothing
"""

import difflib
import importlib.util
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from relic_jax import stages
from relic_jax.config import ConfigError, validate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_string("source", None, "import-wan: a diffusers WanTransformer3DModel directory "
                    "(config.json + safetensors, sharded or not); data ingest: the directory "
                    "of external episodes.")
flags.DEFINE_string("out", None, "import-wan: where to write the imported params; data "
                    "preview: where to write the MP4 and PNG (default <dataset>/preview).")
flags.DEFINE_string("episode", None, "data preview: the episode's name (default: the first).")
flags.DEFINE_string("actions", None, "generate: a built-in action script (pan_360, "
                    "look_away_and_back, out_and_back, walk_and_look, strafe, explore_20s, "
                    "explore_60s) or a script file.")
flags.DEFINE_string("image", None, "generate: the start image (default: frame 0 of the first "
                    "held-out episode).")
flags.DEFINE_string("text", None, "generate: the caption (default: the episode's).")


def _data(cfg, workdir, action="generate"):
  """`relic data [generate|ingest|preview]`: the episode dataset in config.data.dir or
  <workdir>/data."""
  import time
  from data_pipeline.generate import dataset_dir
  if action == "generate":
    return stages.data(cfg, workdir)
  out = dataset_dir(cfg, workdir)
  t0 = time.time()
  if action == "ingest":
    from data_pipeline.ingest import ingest
    g = cfg.data.gen
    m = ingest(FLAGS.source, out, g.height, g.width, codec=g.codec, quality=g.jpeg_quality,
               episodes_per_shard=g.episodes_per_shard, workers=g.workers or os.cpu_count() or 1,
               progress=cfg.train.progress_bar)
    return stages.report_dataset(m, out, t0)
  from data_pipeline.preview import preview
  result = preview(out, FLAGS.out or os.path.join(out, "preview"), episode=FLAGS.episode)
  print(json.dumps(result, sort_keys=True))
  print(f"[relic] preview of {result['episode']}: video {result['video']}, top-down "
        f"trajectory {result['topdown']}")


def _import_wan_vae(cfg, workdir):
  """A diffusers AutoencoderKLWan (Wan 2.1) directory -> params for config.vae.init_from."""
  del workdir
  import dataclasses

  import ml_collections
  from relic_jax import checkpoint as ckpt_lib
  from relic_jax.weights import LazyStateDict, import_wan_vae, load_config
  from relic_jax.weights.store import save_params
  vae_cfg, params = import_wan_vae(LazyStateDict(FLAGS.source), load_config(FLAGS.source),
                                   param_dtype=cfg.vae.param_dtype)
  meta = ckpt_lib.describe_model(dataclasses.asdict(vae_cfg), params)
  save_params(FLAGS.out, ml_collections.ConfigDict(dataclasses.asdict(vae_cfg)), meta, params,
              extra={"source": os.path.abspath(FLAGS.source)})
  import jax
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"[relic] imported the Wan VAE ({n:,} params, base_dim {vae_cfg.base_dim}, z_dim "
        f"{vae_cfg.z_dim}, dim_mult {vae_cfg.dim_mult}) into {os.path.abspath(FLAGS.out)}; "
        "train or encode with --config.vae.init_from=<that dir> and matching config.vae fields")


def _generate(cfg, workdir):
  from relic_jax.inference.generate import generate
  r = generate(cfg, workdir, FLAGS.actions, image_path=FLAGS.image, text=FLAGS.text,
               out_dir=FLAGS.out)
  print(json.dumps({k: v for k, v in r.items() if k != "actions"}, sort_keys=True))
  print(f"[relic] {r['frames']} frames ({r['blocks']} blocks, DiT from {r['dit_from']}, memory "
        f"{r['memory']}, {r['decoder']} decoder) at {r['fps']:.1f} frames/s: {r['video']}")


def _sweep(argv):
  """`relic sweep experiments/sweeps/<name>.py[:arg] [--workdir=DIR]` (no --config: the sweep
  file names its experiment)."""
  if len(argv) != 3:
    _fail("usage: relic sweep experiments/sweeps/<name>.py [--workdir=DIR]; sweeps: "
          + ", ".join(sorted(f for f in os.listdir(os.path.join("experiments", "sweeps"))
                             if f.endswith(".py") and not f.startswith("_")))
          if os.path.isdir(os.path.join("experiments", "sweeps")) else
          "usage: relic sweep experiments/sweeps/<name>.py [--workdir=DIR]")
  from relic_jax.config import ConfigError
  from relic_jax.pipeline import PipelineError
  from relic_jax.sweep import SweepError, main_cli
  from relic_jax.training.trainer import NonFiniteError
  from data_pipeline.episode import DataError
  try:
    main_cli(argv[2], FLAGS.workdir)
  except (SweepError, ConfigError, PipelineError, DataError) as e:
    _fail(str(e))
  except NonFiniteError as e:
    _fail(str(e), code=3)


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


def _import_wan(cfg, workdir):
  """Streams a diffusers Wan 2.1 T2V transformer into an Orbax params checkpoint, converted to
  config.model.param_dtype and laid out for config.model.scan_layers, sharded over cfg's mesh."""
  del workdir
  import dataclasses
  import time

  import jax
  from relic_jax import checkpoint as ckpt_lib
  from relic_jax.inference.loading import dit_init
  from relic_jax.models.dit import DiTConfig
  from relic_jax.parallel import mesh as mesh_lib
  from relic_jax.parallel.sharding import abstract_params
  from relic_jax.weights import LazyStateDict, import_wan_transformer, infer_model_config, load_config
  from relic_jax.weights.store import save_params

  t0 = time.time()
  state_dict = LazyStateDict(FLAGS.source)
  hf = load_config(FLAGS.source)
  model_cfg = infer_model_config(state_dict.shapes, hf)  # fails early, before any reading
  model_cfg.param_dtype = cfg.model.param_dtype
  model_cfg.scan_layers = cfg.model.scan_layers
  model_cfg.action_dim, model_cfg.pose_dim = cfg.model.action_dim, cfg.model.pose_dim
  run_cfg = cfg.copy_and_resolve_references()
  run_cfg.model = model_cfg
  mesh = mesh_lib.make_mesh(cfg.mesh)
  abstract = abstract_params(dit_init(run_cfg), mesh, mesh_lib.rules(cfg.mesh))
  flat = {tuple(k.key for k in p): a.sharding
          for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  model_cfg, params = import_wan_transformer(
      state_dict, hf, param_dtype=cfg.model.param_dtype, scan_layers=cfg.model.scan_layers,
      action_dim=cfg.model.action_dim, pose_dim=cfg.model.pose_dim, seed=cfg.seed,
      put=lambda path, x: jax.device_put(x, flat[path]))
  meta = ckpt_lib.describe_model(dataclasses.asdict(DiTConfig.from_config(run_cfg.model)),
                                 abstract)
  save_params(FLAGS.out, model_cfg, meta, params, extra={"source": os.path.abspath(FLAGS.source)})
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"[relic] imported {n:,} params ({model_cfg.num_layers} layers, dim {model_cfg.dim}, "
        f"{model_cfg.num_heads} heads, ffn {model_cfg.ffn_dim}, {model_cfg.param_dtype}) over "
        f"mesh {dict(mesh.shape)} in {time.time() - t0:.1f}s into {os.path.abspath(FLAGS.out)}")
  diffs = sorted(k for k in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim",
                             "in_channels", "out_channels") if model_cfg[k] != cfg.model[k])
  if diffs:
    print("[relic] note: the checkpoint differs from --config's model in "
          + ", ".join(f"{k} ({model_cfg[k]} vs {cfg.model[k]})" for k in diffs)
          + "; train it with a config whose model matches (see model_config.json).")


STAGES = {"data": _data, "train_vae": stages.train_vae, "encode": stages.encode,
          "train_teacher": stages.train_teacher, "ode_init": stages.ode_init,
          "distill": stages.distill, "info": _info, "import-wan": _import_wan,
          "import-wan-vae": _import_wan_vae, "generate": _generate,
          "pose_estimator": stages.pose_estimator, "evaluate": stages.evaluate,
          "pipeline": stages.pipeline,
          "sweep": None}  # `relic sweep FILE`: handled by _sweep (no --config)
SUBCOMMANDS = {"data": ("generate", "ingest", "preview")}
NEEDS_WORKDIR = ("train_teacher", "train_vae", "encode", "ode_init", "distill", "generate",
                 "pose_estimator", "evaluate", "pipeline")
NEEDS_FLAGS = {"import-wan": ("source", "out"), "import-wan-vae": ("source", "out"),
               "data ingest": ("source",), "generate": ("actions",)}


def _fail(message: str, code: int = 2):
  print(f"relic: error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) not in (2, 3):
    _fail(f"expected exactly one stage, got {argv[1:]}. Usage: relic <stage> "
          f"--config=experiments/<name>.py --workdir=DIR; stages: {', '.join(STAGES)}")
  stage = argv[1]
  if stage not in STAGES:
    close = difflib.get_close_matches(stage, list(STAGES), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    _fail(f"unknown stage '{stage}'.{hint} Available stages: {', '.join(STAGES)}.")
  if stage == "sweep":
    return _sweep(argv)
  sub = argv[2] if len(argv) == 3 else None
  if sub is not None and sub not in SUBCOMMANDS.get(stage, ()):
    options = SUBCOMMANDS.get(stage)
    _fail(f"stage '{stage}' has no subcommand '{sub}'"
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
  if stage in NEEDS_WORKDIR and not FLAGS.workdir:
    _fail(f"stage '{stage}' needs --workdir=DIR (where checkpoints and logs go)")
  if stage == "data" and not (FLAGS.workdir or cfg.data.dir):
    _fail("stage 'data' needs --workdir=DIR (the dataset goes to DIR/data) or "
          "--config.data.dir=DIR")
  full = f"{stage} {sub}" if sub else stage
  for name in NEEDS_FLAGS.get(full, ()):
    if not FLAGS[name].value:
      _fail(f"stage '{full}' needs --{name}=...")
  try:
    validate(cfg)  # what the config alone determines; needs no JAX
  except ConfigError as e:
    _fail(str(e))
  import jax
  from relic_jax.parallel.mesh import maybe_initialize_distributed
  from relic_jax.checkpoint import CheckpointError
  from relic_jax.training.trainer import NonFiniteError
  from relic_jax.weights import SafetensorsError, WanImportError
  from data_pipeline.episode import DataError
  from relic_jax.inference.scripts import ScriptError
  from relic_jax.inference.streaming import ActionError
  from relic_jax.memory.kv_cache import CacheCapacityError
  from relic_jax.training.distill import DistillError
  from relic_jax.training.ode_init import ODEInitError
  from relic_jax.training.teacher import CurriculumError
  from relic_jax.pipeline import PipelineError
  from relic_jax.evaluation.pose_estimation import PoseEstimatorError
  try:
    maybe_initialize_distributed(cfg.distributed)  # before anything asks for the devices
    # the mesh against the actual devices, and the batch/params against the mesh
    validate(cfg, num_devices=jax.device_count(), num_processes=jax.process_count())
    if sub:
      STAGES[stage](cfg, FLAGS.workdir, sub)
    else:
      STAGES[stage](cfg, FLAGS.workdir)
  except (ConfigError, CheckpointError, SafetensorsError, WanImportError, DataError, ScriptError,
          ActionError, CacheCapacityError, DistillError, ODEInitError,
          CurriculumError, PipelineError, PoseEstimatorError) as e:
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
