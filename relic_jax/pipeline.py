"""`relic pipeline`: every stage in order, skipping what is done and resuming what was cut.

  data -> pose_estimator -> train_vae -> encode -> train_teacher -> ode_init -> distill
       -> evaluate

Each stage writes into its own directories of the workdir (STAGE_DIRS) and resumes from its own
checkpoints; the pipeline marks a finished stage with <workdir>/pipeline/<stage>.json (its
summary, wall-clock and the config fields it depends on), so a rerun skips it, and refuses a
workdir whose finished stages were made with other settings.
"""

import json
import os
import time

from relic_jax.io_utils import write_json_atomic

PIPELINE_STAGES = ("data", "pose_estimator", "train_vae", "encode", "train_teacher", "ode_init",
                   "distill", "evaluate")

# The directories of the workdir each stage writes (and later stages read).
STAGE_DIRS = {
    "data": ("data",),
    "pose_estimator": ("pose_estimator",),
    "train_vae": ("vae", "vae_tiny"),
    "encode": ("latents",),
    "train_teacher": ("teacher",),
    "ode_init": ("ode_init",),
    "distill": ("distill",),
    "evaluate": ("evaluate", "results"),
}

# The first stage a config group feeds: changing a field under the prefix means rerunning from
# that stage on (the longest matching prefix wins).
FIRST_STAGE_OF = {
    "seed": "data",
    "data.gen": "data",
    "data": "encode",
    "vae": "train_vae",
    "model": "train_teacher",
    "train": "train_teacher",
    "mesh": "train_teacher",
    "ode_init": "ode_init",
    "distill": "distill",
    # the student trains with its memory and few-step sampler: changing them retrains it
    "memory": "ode_init",
    "generate": "ode_init",
    "memory.max_frames": "evaluate",
    "memory.overflow": "evaluate",
    "generate.decoder": "evaluate",
    "evaluate": "evaluate",
    "evaluate.pose_estimator": "pose_estimator",
    # the pose estimator's inputs: its split, the frames' size and its motion normalisers
    "data.heldout_episodes": "pose_estimator",
    "data.latent_height": "pose_estimator",
    "data.latent_width": "pose_estimator",
    "data.spatial_stride": "pose_estimator",
    "generate.action_scale": "pose_estimator",
    "generate.fps": "pose_estimator",
}

# Fields that change how a stage reports or checkpoints, not what it computes.
_NOT_INPUTS = ("progress_bar", "log_every", "checkpoint_every", "keep_checkpoints",
               "async_checkpointing", "profile_start_step", "profile_num_steps", "videos")

# The conditioning the pipeline's own data carries (byte captions, 13-d actions, 12-d poses).
LATENT_SETUP = {"data.source": "latents", "model.text_encoder": "bytes", "model.action_dim": 13,
                "model.pose_dim": 12}


class PipelineError(ValueError):
  """A workdir whose finished stages do not match the config, or a bad stage list."""


def flatten_config(cfg, prefix: str = "") -> dict:
  """A config (or nested mapping) as {dotted field: value}."""
  out = {}
  for k, v in cfg.items():
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(flatten_config(v, key + "."))
    else:
      out[key] = v
  return out


def stage_of_prefix(field: str) -> str | None:
  """The stage FIRST_STAGE_OF gives a dotted field (its longest matching prefix), or None."""
  best = None
  for prefix in FIRST_STAGE_OF:
    if (field == prefix or field.startswith(prefix + ".")) and (
        best is None or len(prefix) > len(best)):
      best = prefix
  return FIRST_STAGE_OF[best] if best else None


def first_stage_of(field: str) -> str | None:
  """The first stage a dotted config field feeds (None: it feeds no stage's results)."""
  if field.rsplit(".", 1)[-1] in _NOT_INPUTS:
    return None
  return stage_of_prefix(field)


def stage_inputs(cfg, stage: str) -> dict:
  """The config fields `stage`'s results depend on: those feeding it or an earlier stage."""
  upto = PIPELINE_STAGES.index(stage)
  out = {}
  for field, value in flatten_config(cfg).items():
    first = first_stage_of(field)
    if first is not None and PIPELINE_STAGES.index(first) <= upto:
      out[field] = value
  return out


def dit_config(cfg):
  """The config the DiT stages (teacher, ODE init, distillation, evaluation) run with: a config
  made for the synthetic latents (data.source='synthetic', as experiments/tiny.py for the
  quick demo) is switched to the pipeline's latent cache and the conditioning its episodes
  carry (LATENT_SETUP); a config that already says data.source='latents' is used as it is."""
  if cfg.data.source != "synthetic":
    return cfg
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    for dotted, value in LATENT_SETUP.items():
      group, field = dotted.split(".")
      out[group][field] = value
  return out


def _marker(workdir, stage):
  return os.path.join(workdir, "pipeline", f"{stage}.json")


def stage_done(cfg, workdir: str, stage: str) -> dict | None:
  """The done-marker of `stage` in workdir, or None; PipelineError if it was made with other
  inputs."""
  path = _marker(workdir, stage)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    done = json.load(f)
  now = json.loads(json.dumps(stage_inputs(cfg, stage)))
  diff = sorted(k for k in set(now) | set(done.get("inputs", {}))
                if now.get(k) != done.get("inputs", {}).get(k))
  if diff:
    shown = ", ".join(f"{k}: {done.get('inputs', {}).get(k)!r} -> {now.get(k)!r}"
                      for k in diff[:6])
    raise PipelineError(
        f"{workdir} holds stage '{stage}' done with a different config ({shown}"
        f"{', ...' if len(diff) > 6 else ''}). Fix: use a new --workdir, restore those "
        f"settings, or delete {path} and the stage's directories "
        f"({', '.join(STAGE_DIRS[stage])}) to redo it and what follows.")
  return done


def _run_stage(cfg, workdir: str, stage: str):
  from relic_jax import stages
  if stage in ("train_teacher", "ode_init", "distill", "evaluate"):
    cfg = dit_config(cfg)
  getattr(stages, stage)(cfg, workdir)


def run_pipeline(cfg, workdir: str, stages=None, progress: bool = True) -> dict:
  """Runs `stages` (default: all of PIPELINE_STAGES) in order in workdir, skipping those marked
  done (with the same inputs); each stage resumes its own interrupted work. progress=False
  turns the stages' progress bars off (else config.train.progress_bar decides). Returns
  {"metrics": results/metrics.json, "results": its directory, "stages": stage -> seconds}."""
  stages = list(PIPELINE_STAGES if stages is None else stages)
  unknown = [s for s in stages if s not in PIPELINE_STAGES]
  if unknown:
    raise PipelineError(f"unknown pipeline stages {unknown}. Fix: choose from "
                        f"{', '.join(PIPELINE_STAGES)}.")
  run_cfg = cfg
  if not progress and cfg.train.progress_bar:
    run_cfg = cfg.copy_and_resolve_references()
    with run_cfg.unlocked():
      run_cfg.train.progress_bar = False
  os.makedirs(os.path.join(workdir, "pipeline"), exist_ok=True)
  t_all = time.time()
  timings = {}
  for i, stage in enumerate(stages, 1):
    done = stage_done(cfg, workdir, stage)
    head = f"[relic] pipeline {i}/{len(stages)} {stage}"
    if done is not None:
      print(f"{head}: done before ({done['seconds']:.0f}s), skipped")
      timings[stage] = done["seconds"]
      continue
    print(f"{head} ... (total {_clock(time.time() - t_all)} so far)", flush=True)
    t0 = time.time()
    _run_stage(run_cfg, workdir, stage)
    seconds = time.time() - t0
    write_json_atomic(_marker(workdir, stage),
                      {"stage": stage, "seconds": seconds, "finished": time.time(),
                       "inputs": stage_inputs(cfg, stage)})
    timings[stage] = seconds
    print(f"{head} finished in {_clock(seconds)}", flush=True)
  results = os.path.join(workdir, "results")
  metrics = None
  if os.path.exists(os.path.join(results, "metrics.json")):
    with open(os.path.join(results, "metrics.json")) as f:
      metrics = json.load(f)
  return {"metrics": metrics, "results": results, "stages": timings,
          "seconds": time.time() - t_all}


def _clock(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m}m{s:02d}s"
