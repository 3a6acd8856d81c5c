"""The `relic` stages as records, and the one registry of them.

A `Stage` record holds everything about one command: its name and help line, the directories
of the workdir it writes (names of `relic_jax.workdir.Workdir` places), the config prefixes it
depends on, how the pipeline derives its config, its body, what it produces, its place in the
pipeline, whether it needs --workdir and which flags, and its subcommands. `REGISTRY` (name ->
record, in the order `relic --help` lists them) is read by the CLI (relic_jax/cli.py: dispatch,
usage, checks), the pipeline (relic_jax/pipeline.py: order, directories, markers, inputs) and
the sweep (relic_jax/sweep.py: first-stage inference, linking the baseline's directories).

A body is called `body(cfg, workdir, **flags)` with the values of the record's `flags` and
`options`, prints a one-line summary of what it did and where its outputs are, and returns
nothing the caller needs. Two records carry no body here: `pipeline` and `sweep` run on this
registry, so relic_jax/cli.py binds theirs (`bind`).

The config derivation (`Stage.derive`, applied by `derived_config` the same way whether a
stage runs alone or inside `relic pipeline`, and printed when it changes anything): the DiT
stages (train_teacher, ode_init, distill, evaluate, generate) of a config made for the
synthetic latents (data.source='synthetic', as experiments/tiny.py) run, in a workdir that
holds a latent cache (`relic encode` built it, as the pipeline does before the teacher), on
that cache with the conditioning its episodes carry (`LATENT_SETUP`, by `dit_config`). In a
workdir without a cache, the synthetic quick start (`relic train_teacher
--config=experiments/tiny.py --workdir=runs/tiny`) trains on the synthetic latents as given.
"""

import dataclasses
import enum
import json
import os
import time
from collections.abc import Callable, Mapping

import jax
import ml_collections

from data_pipeline import clips as clips_lib
from data_pipeline import generate as datagen
from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from data_pipeline.episode import DataError
from data_pipeline import ingest as ingest_lib
from data_pipeline import preview as preview_lib
from data_pipeline.latent_cache import CACHE_META
from data_pipeline.loader import CachedLatents, make_train_iterator
from relic_jax import assets as assets_lib
from relic_jax import checkpoint as ckpt_lib
from relic_jax.config.choices import DataSource
from relic_jax.config import derive
from relic_jax.config.derive import flatten_config
from relic_jax.evaluation import evaluate as evaluate_lib
from relic_jax.evaluation import pose_estimation
from relic_jax.inference import generate as generate_lib
from relic_jax.inference import text as text_lib
from relic_jax.io_utils import write_json_atomic
from relic_jax.inference.loading import STUDENT_STAGES, dit_init
from relic_jax.models.dit import DiTConfig
from relic_jax.parallel.mesh import make_mesh
from relic_jax.parallel.mesh import rules as mesh_rules
from relic_jax.parallel.sharding import abstract_params
from relic_jax.training import distill as distill_lib
from relic_jax.training import ode_init as ode_init_lib
from relic_jax.training import teacher as teacher_lib
from relic_jax.training import vae_train
from relic_jax.weights import LazyStateDict, import_wan_transformer, infer_model_config, load_config
from relic_jax.weights import import_umt5 as import_umt5_params
from relic_jax.weights import import_wan_vae as import_wan_vae_params
from relic_jax.weights import pretrained as pretrained_lib
from relic_jax.weights.store import save_params
from relic_jax.workdir import PLACES, Workdir


class WorkdirUse(str, enum.Enum):
  """What a stage needs of --workdir."""
  OPTIONAL = "optional"  # nothing: ignored or optional
  REQUIRED = "required"  # --workdir=DIR: where its checkpoints and logs go
  DATASET = "dataset"    # --workdir=DIR (the dataset goes to DIR/data) or config.data.dir


@dataclasses.dataclass(frozen=True)
class Stage:
  """One `relic` command. See the module docstring for how the registry's readers use it."""
  name: str
  help: str                                   # one line for `relic --help`
  body: Callable | None                       # body(cfg, workdir, **flags); None: see `bind`
  dirs: tuple[str, ...] = ()                  # the Workdir places it writes
  inputs: tuple[str, ...] = ()                # config prefixes whose change reruns it and the
                                              # stages after it (the longest prefix wins)
  derive: Callable | None = None              # (cfg, workdir) -> the config it runs with
  produces: str = ""                          # what it leaves, for people
  pipeline_step: int | None = None            # its place in `relic pipeline`; None: not in it
  workdir: WorkdirUse = WorkdirUse.OPTIONAL
  flags: tuple[str, ...] = ()                 # flags it needs (--name=...), passed to the body
  options: tuple[str, ...] = ()               # flags it may take, passed to the body
  subcommands: tuple["Stage", ...] = ()       # `relic <name> <sub>`: records of their own
  takes_config: bool = True                   # False: `relic <name> ARG` (body(argv))
  locks: bool = False                         # holds the workdir's lock while it runs (the
                                              # stages that write a run: workdir.locked)

  def subcommand(self, name: str) -> "Stage | None":
    return next((s for s in self.subcommands if s.name == name), None)


# ---------------------------------------------------------------------- config derivation

# The conditioning the pipeline's own data carries (byte captions, 13-d actions, 12-d poses).
LATENT_SETUP = {"data.source": "latents", "model.text_encoder": "bytes", "model.action_dim": 13,
                "model.pose_dim": 12}


def dit_config(cfg):
  """A config made for the synthetic latents (data.source='synthetic', as experiments/tiny.py
  for the quick demo) switched to the latent cache and the conditioning its episodes carry
  (LATENT_SETUP); a config that already says data.source='latents' is used as it is."""
  if cfg.data.source != DataSource.SYNTHETIC:
    return cfg
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    for dotted, value in LATENT_SETUP.items():
      group, field = dotted.split(".")
      out[group][field] = value
  return out


def has_latent_cache(cfg, workdir) -> bool:
  """Whether the run's latent cache exists (config.data.latent_dir or <workdir>/latents)."""
  return os.path.exists(os.path.join(Workdir.of(cfg, workdir).latents, CACHE_META))


def latent_cache_config(cfg, workdir):
  """`Stage.derive` of the DiT stages: `dataset_config`, then `dit_config` in a workdir that
  holds a latent cache (cfg as given elsewhere; see the module docstring)."""
  cfg = dataset_config(cfg, workdir)
  return dit_config(cfg) if has_latent_cache(cfg, workdir) else cfg


def dataset_config(cfg, workdir):
  """`Stage.derive` of every stage that reads the run's dataset, for an ingested one (its
  manifest says source "ingest"): the settings the data decides, not the config.

    generate.fps           the episodes' frame rate (the model generates at the rate it was
                           trained on); episodes at different rates are refused
    generate.action_scale  the training episodes' mean camera displacement per frame
                           (metres; the loader normalises each clip's actions by its own): the
                           unit the generated actions and the evaluation's truth are
                           integrated with (kept when the cameras only turn)

  and a clip no training episode is long enough for is refused (its fix: shorter clips or
  longer episodes). A generated (ViZDoom) dataset, whose rate and scale the config's defaults
  describe, or no dataset yet, leaves cfg as it is."""
  try:
    data_dir = Workdir.of(cfg, workdir).data
  except ValueError:
    return cfg
  if not os.path.exists(os.path.join(data_dir, shards_lib.MANIFEST)):
    return cfg
  manifest = shards_lib.read_manifest(data_dir)
  if not shards_lib.is_ingested(manifest):
    return cfg
  entries = [e for _, e in shards_lib.episode_entries(manifest)]
  rates = sorted({float(e["fps"]) for e in entries})
  if len(rates) > 1:
    shown = ", ".join(f"{r:g}" for r in rates)
    raise DataError(
        f"{data_dir}: the ingested episodes have different frame rates ({shown} fps); a model "
        "generates at one rate. Fix: resample the videos to one rate before "
        "ingesting (e.g. ffmpeg -r), with their poses, or ingest each rate into its own dataset.")
  train = clips_lib.split_episodes(len(entries), "train", cfg.data.heldout_episodes, data_dir)
  frames = [int(entries[i]["num_frames"]) for i in train]
  need = 1 + 4 * (derive.cache_frames(cfg) - 1)
  if not any(n >= need for n in frames):
    raise DataError(
        f"{data_dir}: the longest training episode has {max(frames)} frames, but the longest "
        f"clip the stages read has {need} ({derive.cache_frames(cfg)} latent frames: "
        "data.latent_frames, train.horizon_curriculum, ode_init.blocks, "
        "distill.rollout_curriculum). Fix: record longer episodes, or shorten those settings.")
  # metres per frame over every training frame pair (a dataset written before the manifest
  # recorded it: the episodes' action_scale, their own mean where the camera moves)
  moved = sum(float(entries[i].get("translation_per_frame", entries[i]["action_scale"]))
              * (frames[k] - 1) for k, i in enumerate(train))
  scale = moved / sum(n - 1 for n in frames)
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.generate.fps = rates[0]
    if scale > poses_lib.STATIC_TRANSLATION:  # a camera that only turns: the config's unit
      out.generate.action_scale = scale
  return out


def changed_fields(before, after) -> dict:
  """{dotted field: new value} of the fields `after` sets differently from `before`."""
  a, b = flatten_config(before), flatten_config(after)
  return {k: v for k, v in b.items() if k not in a or a[k] != v}


def derived_config(stage: "Stage", cfg, workdir, head: str):
  """The config `stage` runs with (its record's derivation of cfg), printing under `head`
  the fields the derivation changed: the same for `relic <stage>` and `relic pipeline`."""
  if stage.derive is None:
    return cfg
  out = stage.derive(cfg, workdir)
  changed = changed_fields(cfg, out)
  if changed:
    print(f"{head} runs with " + ", ".join(f"{k}={v!r}" for k, v in changed.items())
          + f" (derived by stages.{stage.derive.__name__})", flush=True)
  return out


# ------------------------------------------------------------------------------- bodies

def data(cfg, workdir):
  """`relic data`: generate the ViZDoom episode dataset in config.data.dir or <workdir>/data,
  or ingest config.data.ingest's episodes when it is set."""
  if cfg.data.ingest:
    return data_ingest(cfg, workdir, cfg.data.ingest)
  out = datagen.dataset_dir(cfg, workdir)
  t0 = time.time()
  m = datagen.generate(cfg, out, progress=cfg.train.progress_bar)
  report_dataset(m, out, t0)


def data_ingest(cfg, workdir, source):
  """`relic data ingest --source=DIR`: external episodes into the dataset's shards."""
  out = datagen.dataset_dir(cfg, workdir)
  t0 = time.time()
  g = cfg.data.gen
  m = ingest_lib.ingest(source, out, g.height, g.width, codec=g.codec, quality=g.jpeg_quality,
                        episodes_per_shard=g.episodes_per_shard,
                        workers=g.workers or os.cpu_count() or 1,
                        progress=cfg.train.progress_bar)
  report_dataset(m, out, t0)


def data_preview(cfg, workdir, out=None, episode=None):
  """`relic data preview`: an MP4 and a top-down trajectory PNG of an episode."""
  dataset = datagen.dataset_dir(cfg, workdir)
  result = preview_lib.preview(dataset, out or os.path.join(dataset, "preview"), episode=episode)
  print(json.dumps(result, sort_keys=True))
  print(f"[relic] preview of {result['episode']}: video {result['video']}, top-down "
        f"trajectory {result['topdown']}")


def report_dataset(m, out, t0):
  timing = m["timing"]
  print(json.dumps({k: m[k] for k in ("num_shards", "num_episodes", "num_frames")} | timing,
                   sort_keys=True))
  rate = timing["frames_written"] / max(timing["seconds"], 1e-9)
  print(f"[relic] dataset in {out}: {m['num_episodes']} episodes, {m['num_frames']} frames in "
        f"{m['num_shards']} shards ({timing['shards_written']} written now at {rate:.0f} "
        f"frames/s, {timing['shards_skipped']} already complete) in {time.time() - t0:.1f}s")


def train_vae(cfg, workdir):
  final = vae_train.train_vae(cfg, workdir)
  print(json.dumps(final, sort_keys=True))
  ev = final["eval"]
  print(f"[relic] VAE done: checkpoints in {vae_train.stage_workdir(workdir)}/checkpoints; "
        f"held-out PSNR {ev['heldout_psnr']:.2f} dB, SSIM {ev['heldout_ssim']:.3f} over "
        f"{ev['frames']} frames; input | reconstruction video {ev['video']}")


def encode(cfg, workdir):
  r = vae_train.encode_dataset(cfg, workdir, progress=cfg.train.progress_bar)
  print(json.dumps(r, sort_keys=True))
  why = f" (rebuilt: {r['rebuilt']})" if r["rebuilt"] else ""
  print(f"[relic] latent cache {r['dir']}: {r['num_clips']} clips of {r['latent_frames']} "
        f"latent frames (read in prefixes of {r['horizons']}), {r['encoded_now']} encoded now "
        f"in {r['seconds']:.1f}s, {r['skipped']} already there{why}")


def train_teacher(cfg, workdir):
  """Trains the teacher in <workdir>/teacher (through config.train.horizon_curriculum when set:
  earlier horizons in <workdir>/teacher/horizon_<i>_<frames>f), on the synthetic latents or on
  the latent cache (data.source='latents': config.data.latent_dir or <workdir>/latents, as
  `relic encode` wrote it); the cache's latent_stats, which the teacher's latents are
  normalised by, are copied to <workdir>/teacher/latent_stats.json for generation."""
  wd = Workdir.of(cfg, workdir)
  out = wd.teacher

  def make_iterator(phase_cfg):
    if phase_cfg.data.source != "latents":
      return make_train_iterator(phase_cfg)
    phase_wd = Workdir.of(phase_cfg, workdir)
    source = CachedLatents(phase_cfg, phase_wd.latents)  # checks the cache against the config
    if phase_cfg.data.normalize_latents:
      os.makedirs(out, exist_ok=True)
      write_json_atomic(wd.latent_stats, source.stats)
    return make_train_iterator(phase_cfg, source=source)

  final = teacher_lib.train_teacher(cfg, workdir, make_iterator)
  print(json.dumps(final, sort_keys=True))
  print(f"[relic] done: checkpoints in {out}/checkpoints, TensorBoard logs in "
        f"{out}/tensorboard, final metrics in {out}/final_metrics.json")


def ode_init(cfg, workdir):
  final = ode_init_lib.ode_init(cfg, workdir, progress=cfg.train.progress_bar)
  print(json.dumps(final, sort_keys=True))
  out = ode_init_lib.stage_workdir(workdir)
  print(f"[relic] ODE initialisation done: regression loss {final.get('first_loss', 0):.4f} -> "
        f"{final.get('loss', 0):.4f}; trajectories in {out}/trajectories, the student in "
        f"{out}/checkpoints")


def distill(cfg, workdir):
  final = distill_lib.distill(cfg, workdir)
  print(json.dumps(final, sort_keys=True))
  out = distill_lib.stage_workdir(workdir)
  proxy = ""
  if "first_teacher_fm_loss" in final:
    proxy = (f"; teacher flow-matching loss on the student's rollouts "
             f"{final['first_teacher_fm_loss']:.4f} -> {final['last_teacher_fm_loss']:.4f}")
  print(f"[relic] distillation done at step {final['step']} (generator from "
        f"{final['generator_from']}, {final['backprop']} back-propagation){proxy}; checkpoints "
        f"in {out}/checkpoints, metrics in {out}/metrics.jsonl")


def pose_estimator(cfg, workdir):
  """`relic pose_estimator`: the pose estimator of the evaluation, on the dataset's real
  frames, into <workdir>/pose_estimator."""
  out = Workdir.of(cfg, workdir).pose_estimator
  meta = pose_estimation.train_pose_estimator(cfg, datagen.dataset_dir(cfg, workdir), out,
                                              progress=cfg.train.progress_bar)
  print(json.dumps(meta, sort_keys=True, default=str))
  print(f"[relic] pose estimator in {out} (stride {meta['stride']} frames)")


def evaluate(cfg, workdir):
  r = evaluate_lib.evaluate(cfg, workdir, progress=cfg.train.progress_bar)
  m = r["metrics"]
  print(json.dumps(m, sort_keys=True))
  print(f"[relic] evaluation done in {r['seconds']:.0f}s: metrics {r['results']}/metrics.json "
        f"(table: metrics.md), videos (relic | window_sink | window | truth) in "
        f"{r['results']}/videos, plots in {r['results']}/plots")


def generate(cfg, workdir, actions, image=None, text=None, out=None):
  """`relic generate --actions=NAME|FILE`: a video with the streaming generator."""
  r = generate_lib.generate(cfg, workdir, actions, image_path=image, text=text, out_dir=out)
  print(json.dumps({k: v for k, v in r.items() if k != "actions"}, sort_keys=True))
  print(f"[relic] {r['frames']} frames ({r['blocks']} blocks, DiT from {r['dit_from']}, memory "
        f"{r['memory']}, {r['decoder']} decoder) at {r['fps']:.1f} frames/s: {r['video']}")


def play(cfg, workdir, host="127.0.0.1", port=8000, max_sessions=2):
  """`relic play`: relic_jax/play/server.py."""
  from relic_jax.play import server  # noqa: PLC0415 (aiohttp: only when serving)
  server.serve(cfg, workdir, host=host, port=port, max_sessions=max_sessions)


def import_wan(cfg, workdir, source, out):
  """Streams a diffusers Wan 2.1 T2V transformer into an Orbax params checkpoint, converted to
  config.model.param_dtype and laid out for config.model.scan_layers, sharded over cfg's mesh."""
  del workdir
  t0 = time.time()
  state_dict = LazyStateDict(source)
  hf = load_config(source)
  model_cfg = infer_model_config(state_dict.shapes, hf)  # fails early, before any reading
  model_cfg.param_dtype = cfg.model.param_dtype
  model_cfg.scan_layers = cfg.model.scan_layers
  model_cfg.action_dim, model_cfg.pose_dim = cfg.model.action_dim, cfg.model.pose_dim
  run_cfg = cfg.copy_and_resolve_references()
  run_cfg.model = model_cfg
  mesh = make_mesh(cfg.mesh)
  abstract = abstract_params(dit_init(run_cfg), mesh, mesh_rules(cfg.mesh))
  flat = {tuple(k.key for k in p): a.sharding
          for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  model_cfg, params = import_wan_transformer(
      state_dict, hf, param_dtype=cfg.model.param_dtype, scan_layers=cfg.model.scan_layers,
      action_dim=cfg.model.action_dim, pose_dim=cfg.model.pose_dim, seed=cfg.seed,
      put=lambda path, x: jax.device_put(x, flat[path]))
  meta = ckpt_lib.describe_model(dataclasses.asdict(DiTConfig.from_config(run_cfg.model)),
                                 abstract)
  save_params(out, model_cfg, meta, params, extra={"source": os.path.abspath(source)})
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"[relic] imported {n:,} params ({model_cfg.num_layers} layers, dim {model_cfg.dim}, "
        f"{model_cfg.num_heads} heads, ffn {model_cfg.ffn_dim}, {model_cfg.param_dtype}) over "
        f"mesh {dict(mesh.shape)} in {time.time() - t0:.1f}s into {os.path.abspath(out)}")
  diffs = sorted(k for k in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim",
                             "in_channels", "out_channels") if model_cfg[k] != cfg.model[k])
  if diffs:
    print("[relic] note: the checkpoint differs from --config's model in "
          + ", ".join(f"{k} ({model_cfg[k]} vs {cfg.model[k]})" for k in diffs)
          + "; train it with a config whose model matches (see model_config.json).")


def _save_imported(out: str, model_cfg, params, source: str,
                   files: dict[str, str] | None = None, extra: dict | None = None) -> int:
  """Params imported from `source` with their model config (a dataclass) -> `out` (Orbax
  params, model_config.json, meta.json with `extra`, and `files` {path in out: source file});
  returns the parameter count."""
  meta = ckpt_lib.describe_model(dataclasses.asdict(model_cfg), params)
  save_params(out, ml_collections.ConfigDict(dataclasses.asdict(model_cfg)), meta, params,
              extra={"source": os.path.abspath(source), **(extra or {})}, files=files)
  return sum(x.size for x in jax.tree.leaves(params))


def import_wan_vae(cfg, workdir, source, out):
  """A diffusers AutoencoderKLWan (Wan 2.1) directory -> params for config.vae.init_from."""
  del workdir
  hf = load_config(source)
  vae_cfg, params = import_wan_vae_params(LazyStateDict(source), hf,
                                          param_dtype=cfg.vae.param_dtype)
  # Wan's latent normalisation constants travel with the params (pretrained.vae_params)
  extra = {"latent_stats": pretrained_lib.latent_stats_of(hf, source)}
  n = _save_imported(out, vae_cfg, params, source, extra=extra)
  print(f"[relic] imported the Wan VAE ({n:,} params, base_dim {vae_cfg.base_dim}, z_dim "
        f"{vae_cfg.z_dim}, dim_mult {vae_cfg.dim_mult}) into {os.path.abspath(out)}; "
        "train or encode with --config.vae.init_from=<that dir> and matching config.vae fields")


def import_umt5(cfg, workdir, source, out):
  """A Hugging Face umT5 / T5 v1.1 encoder directory (safetensors, sharded or not, with
  config.json), or a diffusers Wan pipeline root (its text_encoder/), -> params of
  relic_jax.models.umt5 in config.model.dtype (the encoder is frozen), with the tokenizer
  files found beside it (text_lib.find_tokenizer) copied to <out>/tokenizer/: what
  config.model.text_encoder_from names."""
  del workdir
  t0 = time.time()
  if os.path.isfile(os.path.join(source, "text_encoder", "config.json")):
    source = os.path.join(source, "text_encoder")  # a diffusers pipeline root
  tok_dir = text_lib.find_tokenizer(source)
  if tok_dir is None:
    raise text_lib.TextEncoderError(
        f"no tokenizer.json in {source}, {source}/tokenizer or its sibling tokenizer/: the "
        "umT5's tokenizer must come with it. Fix: copy the checkpoint's tokenizer files "
        "(tokenizer.json, special_tokens_map.json; google/umt5-xxl's, or a diffusers Wan "
        "pipeline's tokenizer/) into the --source folder.")
  text_lib.Tokenizer(tok_dir)  # readable, before the weights are read
  # frozen: stored in the compute dtype (bf16 for the flagships, as Wan ships umT5-XXL)
  umt5_cfg, params = import_umt5_params(LazyStateDict(source), load_config(source) or {},
                                        dtype=cfg.model.dtype, param_dtype=cfg.model.dtype)
  files = {os.path.join(text_lib.TOKENIZER_DIR, n): p
           for n, p in text_lib.tokenizer_files(tok_dir).items()}
  n = _save_imported(out, umt5_cfg, params, source, files)
  print(f"[relic] imported the {'umT5' if umt5_cfg.per_layer_bias else 'T5'} encoder ({n:,} "
        f"params, {umt5_cfg.num_layers} layers, d_model {umt5_cfg.d_model}, "
        f"{umt5_cfg.param_dtype}) and its tokenizer in {time.time() - t0:.1f}s into "
        f"{os.path.abspath(out)}; use it with --config.model.text_encoder=umt5 "
        "--config.model.text_encoder_from=<that dir>")


def export_assets(cfg, workdir, out):
  """`relic export-assets --out=DIR`: the asset run in workdir (its VAE, tiny decoder and base
  DiT) as a diffusers pipeline folder with a manifest (relic_jax/assets.py)."""
  m = assets_lib.export_assets(cfg, workdir, out)
  h = m["heldout"]
  size = sum(f["bytes"] for f in m["files"].values())
  print(json.dumps({"heldout": h, "check": m["check"], "bytes": size}, sort_keys=True))
  print(f"[relic] assets in {out}: {len(m['files'])} files, {size / 2**20:.1f} MiB; held-out "
        f"({h['episodes']} episodes of the held-out maps): VAE {h['vae_psnr']:.2f} dB / SSIM "
        f"{h['vae_ssim']:.3f}, tiny decoder {h['tiny_psnr']:.2f} dB (flat colour "
        f"{h['flat_colour_psnr']:.2f} dB), base DiT flow-matching loss {h['dit_fm_loss']:.4f}")


def info(cfg, workdir):
  """`relic info`: the resolved config, the mesh and the parameter count; trains nothing."""
  del workdir
  task = teacher_lib.TeacherTask(cfg)
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  mesh = make_mesh(cfg.mesh)
  print(cfg)
  print(f"mesh: {dict(mesh.shape)} over {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"params: {n:,}")


# ----------------------------------------------------------------------------- registry

_DATA_HELP = "generate the ViZDoom episode dataset (config.data.gen) into <workdir>/data"
_STAGES = (
    Stage("data", _DATA_HELP, data, dirs=("data",), inputs=("seed", "data.gen", "data.ingest"),
          produces="episode shards in config.data.dir or <workdir>/data", pipeline_step=1,
          workdir=WorkdirUse.DATASET, locks=True,
          subcommands=(
              Stage("generate", _DATA_HELP, data, locks=True),
              Stage("ingest", "convert external episodes (--source=DIR, see the README) into "
                    "the same shards", data_ingest, flags=("source",), locks=True),
              Stage("preview", "an MP4 and a top-down trajectory PNG of an episode "
                    "(--episode, --out)", data_preview, options=("out", "episode")))),
    Stage("train_vae", "the causal video VAE on the dataset's clips, then held-out PSNR/SSIM",
          train_vae, dirs=("vae", "vae_tiny"), inputs=("vae",), pipeline_step=3,
          derive=dataset_config,
          produces="<workdir>/vae (+ vae_tiny): checkpoints, held-out PSNR/SSIM, a video",
          workdir=WorkdirUse.REQUIRED, locks=True),
    Stage("encode", "the trained VAE encodes every training clip, at the longest horizon a "
          "stage reads, into the latent cache", encode,
          dirs=("latents",), inputs=("data",), pipeline_step=4, derive=dataset_config,
          produces="the latent cache in config.data.latent_dir or <workdir>/latents",
          workdir=WorkdirUse.REQUIRED, locks=True),
    Stage("train_teacher", "flow-matching training of the (bidirectional) DiT", train_teacher,
          dirs=("teacher",), inputs=("model", "train", "mesh"), derive=latent_cache_config,
          pipeline_step=5, workdir=WorkdirUse.REQUIRED, locks=True,
          produces="<workdir>/teacher: checkpoints, TensorBoard logs, final_metrics.json"),
    # the student trains with its memory and few-step sampler: changing them retrains it
    Stage("ode_init", "the block-causal student regresses the teacher's ODE trajectories "
          "(hybrid forcing)", ode_init, dirs=("ode_init",),
          inputs=("ode_init", "memory", "generate"), derive=latent_cache_config, pipeline_step=6,
          produces="<workdir>/ode_init: trajectories and the student's checkpoints",
          workdir=WorkdirUse.REQUIRED, locks=True),
    Stage("distill", "self-forcing DMD distillation of the student (critic, replayed "
          "back-prop)", distill, dirs=("distill",), inputs=("distill",), derive=latent_cache_config,
          pipeline_step=7, produces="<workdir>/distill: checkpoints, metrics.jsonl",
          workdir=WorkdirUse.REQUIRED, locks=True),
    Stage("info", "print the resolved config, mesh and parameter count; trains nothing", info),
    Stage("import-wan", "convert a diffusers Wan 2.1 T2V transformer (--source) to params "
          "(--out)", import_wan, flags=("source", "out"), produces="an Orbax params checkpoint"),
    Stage("import-wan-vae", "convert a diffusers Wan 2.1 AutoencoderKLWan (--source) to params "
          "(--out)", import_wan_vae, flags=("source", "out"),
          produces="params for config.vae.init_from"),
    Stage("import-umt5", "convert a Hugging Face umT5 / T5 v1.1 encoder (--source: safetensors "
          "and config.json) to params (--out)", import_umt5, flags=("source", "out"),
          produces="params of the umT5 text encoder"),
    Stage("export-assets", "the asset run of --workdir (VAE, tiny decoder, base DiT) as a "
          "diffusers pipeline folder (--out), with SHA-256s and held-out figures",
          export_assets, flags=("out",), workdir=WorkdirUse.REQUIRED,
          produces="assets/demo-style folder: vae/, tiny_decoder/, transformer/, "
          "text_encoder/, manifest.json"),
    Stage("generate", "a video from an image, a caption and scripted actions "
          "(--actions=NAME|FILE) with the streaming generator and its KV memory", generate,
          dirs=("generate",), flags=("actions",), options=("image", "text", "out"),
          derive=latent_cache_config,
          produces="<workdir>/generate: an MP4 and its metadata", workdir=WorkdirUse.REQUIRED),
    Stage("play", "the student in a browser, steered with the keyboard, in real time "
          "(--host, --port, --max_sessions): a web server for the run's student", play,
          dirs=("play",), options=("host", "port", "max_sessions"), derive=latent_cache_config,
          produces="<workdir>/play/recordings: what its record button wrote",
          workdir=WorkdirUse.REQUIRED),
    # the pose estimator's inputs: its split, the frames' size and its motion normalisers
    Stage("pose_estimator", "train the pose estimator behind the action-following metrics on "
          "real frames", pose_estimator, dirs=("pose_estimator",), derive=dataset_config,
          inputs=("evaluate.pose_estimator", "data.heldout_episodes", "data.latent_height",
                  "data.latent_width", "data.spatial_stride", "generate.action_scale",
                  "generate.fps"),
          pipeline_step=2, produces="<workdir>/pose_estimator", workdir=WorkdirUse.REQUIRED,
          locks=True),
    Stage("evaluate", "action following, spatial memory, stability and speed on held-out maps, "
          "against window-only, full-history and copy-last-frame baselines", evaluate,
          dirs=("evaluate", "results"),
          inputs=("evaluate", "memory.max_frames", "memory.overflow", "generate.decoder"),
          derive=latent_cache_config, pipeline_step=8, workdir=WorkdirUse.REQUIRED, locks=True,
          produces="<workdir>/results: metrics.json, metrics.md, videos, plots"),
    Stage("pipeline", "every pipeline stage in order (or up to --until=STAGE), skipping what "
          "is done and resuming what was cut", None, dirs=("pipeline",), options=("until",),
          workdir=WorkdirUse.REQUIRED, locks=True,
          produces="every stage's outputs; <workdir>/pipeline: a done-marker per stage"),
    Stage("compile", "the --stage's step (teacher, ode_init, distill, stream) compiled ahead "
          "of time for a TPU or GPU --topology on this host: peak memory per device against HBM, "
          "FLOPs, compile time (--latent_frames, --out)", None, takes_config=False,
          produces="a JSON report (the last line; --out=FILE)"),
    Stage("sweep", "`relic sweep experiments/sweeps/<name>.py [--workdir=DIR]`: the "
          "ablation's variants as pipelines sharing the baseline's stages, one comparison "
          "table", None, takes_config=False,
          produces="comparison.md, comparison.csv and plots in the sweep's workdir"),
)
REGISTRY: Mapping[str, Stage] = {s.name: s for s in _STAGES}


def check_registry(registry: Mapping[str, Stage]) -> None:
  """ValueError unless every record is keyed by its name, writes only Workdir places, has a
  distinct pipeline step, and shares no input prefix with another record."""
  steps, owners = {}, {}
  for name, s in registry.items():
    if s.name != name:
      raise ValueError(f"registry key {name!r} holds the record of {s.name!r}. Fix: key each "
                       "record by its name.")
    bad = [d for d in s.dirs if d not in PLACES]
    if bad:
      raise ValueError(f"stage {name!r}: dirs {bad} are not places of relic_jax.workdir."
                       "Workdir. Fix: add them there or name existing ones.")
    if s.pipeline_step is not None:
      if s.pipeline_step in steps:
        raise ValueError(f"stages {steps[s.pipeline_step]!r} and {name!r} share pipeline step "
                         f"{s.pipeline_step}. Fix: give each its own place.")
      steps[s.pipeline_step] = name
    for prefix in s.inputs:
      if prefix in owners:
        raise ValueError(f"config prefix {prefix!r} is an input of both {owners[prefix]!r} and "
                         f"{name!r}. Fix: keep it on the first stage it feeds.")
      owners[prefix] = name
    if s.inputs and s.pipeline_step is None:
      raise ValueError(f"stage {name!r} has inputs but no pipeline step. Fix: give it one, or "
                       "drop its inputs.")
  # where generation looks for a student (inference/loading.py, below this registry's layer)
  for name in STUDENT_STAGES:
    if name not in registry and not any(name in s.dirs for s in registry.values()):
      raise ValueError(f"inference.loading.STUDENT_STAGES names {name!r}, which no stage "
                       "writes. Fix: keep it in step with the registry's records.")


def bind(registry: Mapping[str, Stage], **bodies: Callable) -> dict:
  """A copy of `registry` with the bodies of its body-less records (`name=body`; '-' in a
  name as '_'); ValueError if one is left without or a body names no such record."""
  by_key = {name.replace("-", "_"): name for name in registry}
  unknown = sorted(set(bodies) - set(by_key))
  if unknown:
    raise ValueError(f"bind: no records {unknown}. Fix: bind only registry records.")
  out = {}
  for key, name in by_key.items():
    s = registry[name]
    if key in bodies:
      if s.body is not None:
        raise ValueError(f"bind: stage {name!r} has a body already.")
      s = dataclasses.replace(s, body=bodies[key])
    elif s.body is None:
      raise ValueError(f"bind: stage {name!r} has no body. Fix: bind one.")
    out[name] = s
  return out


check_registry(REGISTRY)
