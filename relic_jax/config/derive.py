"""Configs derived from an experiment's config (and `flatten_config`, a config as dotted
fields): the teacher's horizon-curriculum phases and
the RoPE (YaRN factor) of the teacher it leaves, which every stage after it (ODE init,
distillation, generation, evaluation) runs the DiT with; and the latent horizons the stages
read from the latent cache (`cache_horizons`, `cache_frames`), which `relic encode` builds the
cache for once."""

import ml_collections


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


def phases(cfg: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """[(latent_frames, steps)] of the teacher's phases; one phase of data.latent_frames for
  train.steps when train.horizon_curriculum is empty."""
  cur = cfg.train.horizon_curriculum
  if not cur:
    return [(int(cfg.data.latent_frames), int(cfg.train.steps))]
  return [(int(frames), int(steps)) for frames, steps in cur]


def cache_horizons(cfg: ml_collections.ConfigDict) -> list[int]:
  """The sorted distinct clip lengths (latent frames) the stages after `relic encode` read
  from the latent cache: every teacher phase (`phases`: data.latent_frames without a
  curriculum), the ODE-init clip (model.first_block_frames + ode_init.blocks *
  model.block_frames) and every distillation rollout (first_block_frames + blocks *
  block_frames for each phase of distill.rollout_curriculum).

  With a curriculum, data.latent_frames itself is not one of them: `phase_config` rewrites it
  per phase, so counting it would give each phase's config other horizons and make the cache
  look stale to it. The fields read here are the ones every stage's derived config keeps."""
  m = cfg.model
  out = {frames for frames, _ in phases(cfg)}
  out.add(int(m.first_block_frames + cfg.ode_init.blocks * m.block_frames))
  out.update(int(m.first_block_frames + blocks * m.block_frames)
             for blocks, _ in cfg.distill.rollout_curriculum)
  return sorted(out)


def cache_frames(cfg: ml_collections.ConfigDict) -> int:
  """The latent frames of the latent cache's clips: the longest horizon any stage reads
  (`cache_horizons`); a stage reading fewer frames reads a prefix of each clip."""
  return cache_horizons(cfg)[-1]


def yarn_factors(cfg: ml_collections.ConfigDict) -> list[float]:
  """model.yarn_factor of each phase. With train.yarn_auto, a phase longer than the horizon
  the model was pretrained on (model.yarn_original_frames) stretches the temporal RoPE by
  frames / original; later phases keep the largest factor so far, since the model has adapted
  to it (a shorter phase after a longer one is still inside the stretched range). A factor the
  user set (!= 1), or an empty curriculum, applies as it is to every phase."""
  m, t = cfg.model, cfg.train
  n = len(phases(cfg))
  if not t.horizon_curriculum or not t.yarn_auto or m.yarn_factor != 1.0:
    return [float(m.yarn_factor)] * n
  out, factor = [], 1.0
  for frames, _ in phases(cfg):
    factor = max(factor, frames / m.yarn_original_frames)
    out.append(float(factor))
  return out


def phase_config(cfg: ml_collections.ConfigDict, i: int) -> ml_collections.ConfigDict:
  """A copy of cfg for phase i: its data.latent_frames, train.steps and model.yarn_factor."""
  ph = phases(cfg)
  if not 0 <= i < len(ph):
    raise IndexError(f"phase {i} does not exist: config.train.horizon_curriculum has "
                     f"{len(ph)} phase(s). Fix: use a phase index in [0, {len(ph)}).")
  frames, steps = ph[i]
  out = cfg.copy_and_resolve_references()
  out.data.latent_frames = frames
  out.train.steps = steps
  out.model.yarn_factor = yarn_factors(cfg)[i]
  return out


def final_teacher_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config that describes the teacher train_teacher leaves in <workdir>/teacher: its
  model fields (yarn_factor in particular, which the checkpoint's param shapes do not reveal)
  and the horizon it was last trained on (data.latent_frames). cfg itself when the curriculum
  is empty."""
  if not cfg.train.horizon_curriculum:
    return cfg
  return phase_config(cfg, len(phases(cfg)) - 1)


def with_teacher_rope(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """cfg with model.yarn_factor of the final teacher: what every stage after the teacher
  (ODE init, distillation, generation) runs the DiT with, so the student's RoPE is the one the
  teacher was last trained with (YaRN-extended to its longest horizon)."""
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.model.yarn_factor = final_teacher_config(cfg).model.yarn_factor
  return out
