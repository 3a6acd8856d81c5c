"""Params-only loading: "the params that a finished stage left in this workdir".

Each loader restores one params sub-tree of the latest checkpoint of a stage's run directory
(the train state's `params`, or the distilled generator's `gen_ema` / `gen`) straight into the
current mesh's shardings (`relic_jax.checkpoint.load_latest_params`): the target is the
model's abstract params tree built from the config (`parallel.sharding.abstract_params`), and
nothing else is read or built: no optimizer, no task, no train state. The checkpoint's
metadata is still checked against the model (`CheckpointError` for another model's params).

  load_dit(cfg, workdir)           the newest trained DiT: distill, else ode_init, else teacher
  student_stage(cfg, workdir)      which stage load_dit reads, without loading it
  fallback_warning(stage)          what to say when that DiT is not the distilled student
  load_teacher(cfg, workdir)       the teacher's params
  load_dit_params(cfg, run_dir)    the DiT params of any DiT run directory (a curriculum phase)
  load_vae / load_tiny_decoder     (model config, params) of <workdir>/vae, <workdir>/vae_tiny
  load_decoder(cfg, workdir)       the streaming `Decoder` generation uses
"""

import dataclasses
import functools
import json
import os

import ml_collections

from data_pipeline.episode import DataError
from relic_jax import checkpoint as ckpt_lib
from relic_jax.inference.session import Decoder
from relic_jax.models import dit as dit_lib
from relic_jax.models import tiny_decoder as tiny_lib
from relic_jax.models import vae as vae_lib
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.sharding import abstract_params
from relic_jax.workdir import Workdir

# where a student DiT comes from, newest first (a teacher run block-causally is the fallback
# for trying the pipeline before distillation)
STUDENT_STAGES = ("distill", "ode_init", "teacher")
TRAIN_FIRST = "train first, or point --workdir at a run that saved one."


dit_init = dit_lib.init_fn  # rng -> the DiT's boxed initial params for a config


def _restore(cfg, run_dir: str, init_fn, model_config: dict, key: str = "params",
             fix: str = TRAIN_FIRST):
  mesh, rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
  return ckpt_lib.load_latest_params(run_dir, key, abstract_params(init_fn, mesh, rules),
                                     model_config, fix)


def load_dit_params(cfg: ml_collections.ConfigDict, run_dir: str, key: str = "params",
                    fix: str = TRAIN_FIRST):
  """The DiT params (sub-tree `key` of the saved state) of the latest checkpoint in run_dir,
  on cfg's mesh."""
  dit = dit_lib.DiTConfig.from_config(cfg.model)
  return _restore(cfg, run_dir, dit_init(cfg), dataclasses.asdict(dit), key, fix)


def load_teacher(cfg: ml_collections.ConfigDict, workdir: str):
  """The trained teacher's params from <workdir>/teacher, for the stages after it."""
  tdir = Workdir.of(cfg, workdir).teacher
  if not ckpt_lib.has_checkpoint(tdir):
    raise ckpt_lib.CheckpointError(f"no trained teacher in {tdir}. Fix: run `relic "
                                   "train_teacher` with this --workdir first.")
  return load_dit_params(cfg, tdir)


def student_stage(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """The stage load_dit reads (the first of STUDENT_STAGES with a checkpoint), without
  loading anything."""
  w = Workdir.of(cfg, workdir)
  for stage in STUDENT_STAGES:
    if ckpt_lib.has_checkpoint(w.stage_dir(stage)):
      return stage
  raise DataError(f"no trained DiT in {workdir} (looked in {', '.join(STUDENT_STAGES)}). Fix: "
                  "run `relic train_teacher` (and later ode_init/distill) with this --workdir.")


def load_dit(cfg: ml_collections.ConfigDict, workdir: str):
  """(params, which stage they come from) of the newest trained DiT in workdir
  (student_stage); from distill, the generator's EMA (its raw params when
  distill.ema_decay = 0)."""
  stage = student_stage(cfg, workdir)
  path = Workdir.of(cfg, workdir).stage_dir(stage)
  if stage == "distill":
    key = "gen_ema" if cfg.distill.ema_decay > 0 else "gen"
    return load_dit_params(cfg, path, key, "run `relic distill` with this --workdir."), stage
  return load_dit_params(cfg, path), stage


def fallback_warning(stage: str) -> str | None:
  """None for a distilled student (load_dit's first choice); else a warning that the student
  fell back to an earlier stage's weights, naming it and the fix."""
  if stage == STUDENT_STAGES[0]:
    return None
  return (f"the student's weights come from `{stage}`, not from distillation (no "
          f"`{STUDENT_STAGES[0]}` checkpoint in this workdir): these results are not the "
          f"distilled student's. Fix: run `relic {STUDENT_STAGES[0]}` with this --workdir "
          "first, then evaluate again.")


def load_vae(cfg: ml_collections.ConfigDict, workdir: str, run_dir: str | None = None):
  """(VAEConfig, params) of the VAE trained in <workdir>/vae (or in run_dir: a phase's)."""
  vae = vae_lib.VAEConfig.from_config(cfg.vae, cfg.data.spatial_stride)
  params = _restore(cfg, run_dir or Workdir.of(cfg, workdir).vae,
                    functools.partial(vae_lib.init_params, vae), dataclasses.asdict(vae))
  return vae, params


def load_tiny_decoder(cfg: ml_collections.ConfigDict, workdir: str):
  """(TinyDecoderConfig, params) of the tiny decoder trained in <workdir>/vae_tiny."""
  tiny = tiny_lib.TinyDecoderConfig.from_config(cfg.vae)
  params = _restore(cfg, Workdir.of(cfg, workdir).vae_tiny,
                    functools.partial(tiny_lib.init_params, tiny), dataclasses.asdict(tiny))
  return tiny, params


def load_decoder(cfg: ml_collections.ConfigDict, workdir: str) -> Decoder:
  """The VAE (and with config.generate.decoder='tiny' the tiny decoder) of workdir, with the
  latent statistics the teacher trained with (<workdir>/teacher/latent_stats.json) if any."""
  w = Workdir.of(cfg, workdir)
  if not ckpt_lib.has_checkpoint(w.vae):
    raise DataError(f"no trained VAE in {w.vae}. Fix: run `relic train_vae` with this "
                    "--workdir.")
  vae, vae_params = load_vae(cfg, workdir)
  tiny = tiny_params = None
  if cfg.generate.decoder == "tiny":
    if not ckpt_lib.has_checkpoint(w.vae_tiny):
      raise DataError(f"config.generate.decoder='tiny' but there is no tiny decoder in "
                      f"{w.vae_tiny}. Fix: run `relic train_vae` with config.vae.tiny_steps > 0, "
                      "or use --config.generate.decoder=vae.")
    tiny, tiny_params = load_tiny_decoder(cfg, workdir)
  stats = None
  if os.path.exists(w.latent_stats):
    with open(w.latent_stats) as f:
      stats = json.load(f)
  return Decoder(cfg.generate.decoder, vae, vae_params, stats, tiny, tiny_params)
