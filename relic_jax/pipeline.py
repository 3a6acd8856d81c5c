"""`relic pipeline`: the registry's pipeline stages in order, skipping what is done and resuming
what was cut.

  data -> pose_estimator -> train_vae -> encode -> train_teacher -> ode_init -> distill
       -> evaluate

The stages are the records of relic_jax/stages.py with a `pipeline_step`, in that order. Each
writes into its own directories of the workdir (its record's `dirs`) and resumes from its own
checkpoints; the pipeline marks a finished stage with <workdir>/pipeline/<stage>.json (its
summary, wall-clock and the config fields it depends on: its record's `inputs` and those of
the stages before it), so a rerun skips it, and refuses a workdir whose finished stages were
made with other settings. A stage runs with the config its record's `derive` makes (the DiT
stages of a synthetic-source config: `stages.dit_config`), and the pipeline prints the fields
that changed.
"""

import json
import os
import time
from collections.abc import Mapping

from relic_jax.io_utils import write_json_atomic
from relic_jax.stages import REGISTRY, Stage
from relic_jax.config.derive import flatten_config
from relic_jax.stages import LATENT_SETUP, changed_fields, derived_config, dit_config  # noqa: F401
from relic_jax.workdir import Workdir


def pipeline_stages(registry: Mapping[str, Stage] = REGISTRY) -> tuple[Stage, ...]:
  """The records of `relic pipeline`, in its order."""
  return tuple(sorted((s for s in registry.values() if s.pipeline_step is not None),
                      key=lambda s: s.pipeline_step))


# Views of the registry, for readers that want names.
PIPELINE_STAGES = tuple(s.name for s in pipeline_stages())
STAGE_DIRS = {s.name: s.dirs for s in pipeline_stages()}

# Fields that change how a stage reports or checkpoints, not what it computes.
_NOT_INPUTS = ("progress_bar", "log_every", "checkpoint_every", "keep_checkpoints",
               "async_checkpointing", "profile_start_step", "profile_num_steps", "videos")


class PipelineError(ValueError):
  """A workdir whose finished stages do not match the config, or a bad stage list."""


def stage_of_prefix(field: str, registry: Mapping[str, Stage] = REGISTRY) -> str | None:
  """The pipeline stage whose `inputs` hold a dotted field's longest matching prefix, or
  None."""
  best, owner = None, None
  for s in pipeline_stages(registry):
    for prefix in s.inputs:
      if (field == prefix or field.startswith(prefix + ".")) and (
          best is None or len(prefix) > len(best)):
        best, owner = prefix, s.name
  return owner


def first_stage_of(field: str, registry: Mapping[str, Stage] = REGISTRY) -> str | None:
  """The first stage a dotted config field feeds (None: it feeds no stage's results)."""
  if field.rsplit(".", 1)[-1] in _NOT_INPUTS:
    return None
  return stage_of_prefix(field, registry)


def stage_inputs(cfg, stage: str, registry: Mapping[str, Stage] = REGISTRY) -> dict:
  """The config fields `stage`'s results depend on: those feeding it or an earlier stage."""
  order = [s.name for s in pipeline_stages(registry)]
  upto = order.index(stage)
  out = {}
  for field, value in flatten_config(cfg).items():
    first = first_stage_of(field, registry)
    if first is not None and order.index(first) <= upto:
      out[field] = value
  return out


def stage_done(cfg, workdir: str, stage: str,
               registry: Mapping[str, Stage] = REGISTRY) -> dict | None:
  """The done-marker of `stage` in workdir, or None; PipelineError if it was made with other
  inputs."""
  path = Workdir.of(cfg, workdir).marker(stage)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    done = json.load(f)
  now = json.loads(json.dumps(stage_inputs(cfg, stage, registry)))
  diff = sorted(k for k in set(now) | set(done.get("inputs", {}))
                if now.get(k) != done.get("inputs", {}).get(k))
  if diff:
    shown = ", ".join(f"{k}: {done.get('inputs', {}).get(k)!r} -> {now.get(k)!r}"
                      for k in diff[:6])
    raise PipelineError(
        f"{workdir} holds stage '{stage}' done with a different config ({shown}"
        f"{', ...' if len(diff) > 6 else ''}). Fix: use a new --workdir, restore those "
        f"settings, or delete {path} and the stage's directories "
        f"({', '.join(registry[stage].dirs)}) to redo it and what follows.")
  return done


def _run_stage(cfg, workdir: str, stage: Stage, head: str):
  """Runs a stage's body with the config its record derives, saying what the derivation
  changed."""
  stage.body(derived_config(stage, cfg, workdir, head), workdir)


def run_pipeline(cfg, workdir: str, stages=None, progress: bool = True,
                 registry: Mapping[str, Stage] = REGISTRY) -> dict:
  """Runs `stages` (default: every pipeline stage of the registry) in order in workdir,
  skipping those marked done (with the same inputs); each stage resumes its own interrupted
  work. progress=False turns the stages' progress bars off (else config.train.progress_bar
  decides). Returns {"metrics": results/metrics.json, "results": its directory, "stages":
  stage -> seconds}."""
  order = [s.name for s in pipeline_stages(registry)]
  stages = list(order if stages is None else stages)
  unknown = [s for s in stages if s not in order]
  if unknown:
    raise PipelineError(f"unknown pipeline stages {unknown}. Fix: choose from "
                        f"{', '.join(order)}.")
  run_cfg = cfg
  if not progress and cfg.train.progress_bar:
    run_cfg = cfg.copy_and_resolve_references()
    with run_cfg.unlocked():
      run_cfg.train.progress_bar = False
  wd = Workdir.of(cfg, workdir)
  os.makedirs(wd.pipeline, exist_ok=True)
  t_all = time.time()
  timings = {}
  for i, stage in enumerate(stages, 1):
    done = stage_done(cfg, workdir, stage, registry)
    head = f"[relic] pipeline {i}/{len(stages)} {stage}"
    if done is not None:
      print(f"{head}: done before ({done['seconds']:.0f}s), skipped")
      timings[stage] = done["seconds"]
      continue
    print(f"{head} ... (total {_clock(time.time() - t_all)} so far)", flush=True)
    t0 = time.time()
    _run_stage(run_cfg, workdir, registry[stage], head)
    seconds = time.time() - t0
    write_json_atomic(wd.marker(stage),
                      {"stage": stage, "seconds": seconds, "finished": time.time(),
                       "inputs": stage_inputs(cfg, stage, registry)})
    timings[stage] = seconds
    print(f"{head} finished in {_clock(seconds)}", flush=True)
  results = wd.results
  metrics = None
  if os.path.exists(os.path.join(results, "metrics.json")):
    with open(os.path.join(results, "metrics.json")) as f:
      metrics = json.load(f)
  return {"metrics": metrics, "results": results, "stages": timings,
          "seconds": time.time() - t_all}


def _clock(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m}m{s:02d}s"
