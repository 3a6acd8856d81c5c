"""The teacher stage: the bidirectional DiT trained by flow matching (velocity target).

Frame 0 of each clip is the clean image latent (t = 0, excluded from the loss) when
config.train.clean_first_frame is set; per_frame_noise gives every frame its own noise level.

Batches: {"latents" [B, T, h, w, C], "text" [B, L, text_dim] float} from the synthetic source,
or from the latent cache (data.source = "latents") {"latents" (normalised), "text" [B, L] byte
tokens, "actions" [B, F, 13], "poses" [B, F, 12], "action_scale" [B]} with F = 1 + 4 (T - 1)
video frames (each phase reads a T-frame prefix of the cache's longer clips); actions and poses
are used when model.action_dim / pose_dim are set, the action scale is not (the student's
rollout integrates poses with it).

config.train.text_dropout replaces an example's text by the null text (`null_text`: the empty
caption's umT5 embedding, or zeros for byte captions) so that the teacher learns the
unconditional velocity classifier-free guidance needs.

The horizon curriculum (config.train.horizon_curriculum, RELIC: 5 s -> 10 s -> 20 s) runs in
`train_teacher`: phase i trains clips of its own latent_frames for its own steps, starting from
phase i-1's final params, with YaRN extending the temporal RoPE once a phase is longer than the
pretrained horizon (train.yarn_auto). Layout under <workdir>/teacher:
  horizon_<i>_<frames>f/   every phase but the last (checkpoints, metrics, TensorBoard)
  .                        the last phase, so whatever loads <workdir>/teacher gets the final
                           teacher; load it with `config.derive.final_teacher_config(cfg)`
                           (its yarn_factor)
  curriculum.json          the phases, their yarn factors, directories and progress
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from relic_jax import checkpoint as ckpt_lib
from relic_jax.config import validate
from relic_jax.config.derive import phase_config, phases, yarn_factors
from relic_jax.diffusion import flow_matching as fm
from relic_jax.inference import loading
from relic_jax.io_utils import write_json_atomic
from relic_jax.models import dit as dit_lib
from relic_jax.models import flops as flops_lib
from relic_jax.models.dit import DiTConfig, WanDiT
from relic_jax.training import trainer
from relic_jax.weights import pretrained
from relic_jax.workdir import Workdir

CURRICULUM_FILE = "curriculum.json"
# fold_in constant for the text-dropout key: the noise keeps its own stream, so a run's noise and
# timesteps do not change when text_dropout is turned on or off.
_TEXT_DROPOUT_STREAM = 0x7E47


class CurriculumError(ValueError):
  """<workdir>/teacher was trained with another horizon curriculum; the message says how."""


def null_text(batch: dict):
  """The null text of a batch's examples: the latent cache's empty-caption embedding
  ("null_text", with model.text_encoder='umt5': what Wan's pipeline feeds the unconditional
  branch), else zeros (byte tokens: all padding; the synthetic source's embeddings). The same
  null text for caption dropout here and for the unconditional branch of classifier-free
  guidance in ode_init and distill."""
  null = batch.get("null_text")
  return jnp.zeros_like(batch["text"]) if null is None else jnp.asarray(null, jnp.float32)


def drop_text(rng, text, p: float, null=None):
  """Replaces each example's text ([B, L] tokens or [B, L, D] embeddings) by the null text
  (`null`, shaped as text; None: zeros) with probability p."""
  drop_B = jax.random.bernoulli(rng, p, (text.shape[0],))
  null = jnp.zeros_like(text) if null is None else null
  return jnp.where(drop_B.reshape((-1,) + (1,) * (text.ndim - 1)), null, text)


class TeacherTask:
  """A `trainer.Task` for flow-matching training of the DiT on latent clips."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    self.dit = DiTConfig.from_config(cfg.model)
    self.model = WanDiT(self.dit)
    self.model_config = dataclasses.asdict(self.dit)
    d = cfg.data
    self._clip = (d.latent_frames, d.latent_height, d.latent_width)

  def example_batch(self, batch_size: int) -> dict:
    t, h, w = self._clip
    d, c = self.cfg.data, self.dit
    batch = {"latents": np.zeros((batch_size, t, h, w, c.in_channels), np.float32)}
    if c.text_encoder == "bytes":
      batch["text"] = np.zeros((batch_size, d.text_len), np.int32)
    else:
      batch["text"] = np.zeros((batch_size, d.text_len, c.text_dim), np.float32)
    if c.text_encoder == "umt5" and d.source == "latents":
      batch["null_text"] = np.zeros_like(batch["text"])
    frames = 1 + c.cond_frames_per_latent * (t - 1)
    if d.source != "latents":  # only the latent cache has actions and poses (else zeros)
      return batch
    # the cache's clips carry RELIC's 13-d actions and 12-d poses whatever the model uses (a
    # base model without them, action_dim = pose_dim = 0, ignores them)
    batch["action_scale"] = np.ones((batch_size,), np.float32)
    batch["actions"] = np.zeros((batch_size, frames, c.action_dim or 13), np.float32)
    batch["poses"] = np.zeros((batch_size, frames, c.pose_dim or 12), np.float32)
    return batch

  def init_params(self, rng):
    return dit_lib.init_params(self.dit, rng, self._clip, self.cfg.data.text_len)

  def import_params(self, path: str):
    """Params from a diffusers Wan transformer folder or pipeline root (train.init_from)."""
    return pretrained.dit_params(path, self.cfg.model, self.cfg.seed, self.cfg.data.text_len)

  def loss_fn(self, params, batch, rng):
    tc = self.cfg.train
    text = batch["text"]
    if tc.text_dropout > 0:
      text = drop_text(jax.random.fold_in(rng, _TEXT_DROPOUT_STREAM), text, tc.text_dropout,
                       null_text(batch))
    x_t, t, target, weight = fm.noisy_inputs(
        rng, batch["latents"], shift=tc.timestep_shift, sampling=tc.timestep_sampling,
        clean_first_frame=tc.clean_first_frame, per_frame_noise=tc.per_frame_noise)
    pred = self.model.apply({"params": params}, x_t, t, text,
                            actions=batch.get("actions") if self.dit.action_dim else None,
                            poses=batch.get("poses") if self.dit.pose_dim else None)
    return fm.velocity_loss(pred, target, weight)

  def flops_per_example(self) -> float:
    return flops_lib.forward_flops(self.dit, *self._clip, self.cfg.data.text_len)

  def tokens_per_example(self) -> int:
    return flops_lib.tokens(self.dit, *self._clip)[2]


# ------------------------------------------------------------------ the horizon curriculum


def phase_dirs(cfg: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Each phase's run directory: <workdir>/teacher/horizon_<i>_<frames>f, the last phase
  <workdir>/teacher itself."""
  teacher = Workdir.of(cfg, workdir).teacher
  ph = phases(cfg)
  return [teacher if i == len(ph) - 1 else os.path.join(teacher, f"horizon_{i}_{frames}f")
          for i, (frames, _) in enumerate(ph)]


def _check_plan(teacher_dir: str, plan: list[dict]) -> bool:
  """Refuses to continue a teacher trained with another curriculum: its last phase shares
  <workdir>/teacher with ours and would silently resume from the wrong run. Only the last
  phase's steps may change (training it longer, as train.steps may grow on resume). Carries
  the recorded progress ("done", "final_loss") into `plan` -> whether a record exists."""
  path = os.path.join(teacher_dir, CURRICULUM_FILE)
  fix = (f"Fix: set config.train.horizon_curriculum back to the recorded phases, or train in a "
         f"fresh --workdir (or delete {teacher_dir}).")
  if not os.path.exists(path):
    if len(plan) > 1 and ckpt_lib.latest_step(teacher_dir) is not None:
      raise CurriculumError(
          f"{teacher_dir} holds a teacher trained without a horizon curriculum, but "
          f"config.train.horizon_curriculum has {len(plan)} phases whose last would resume "
          f"from it. {fix}")
    return False
  with open(path) as f:
    old = json.load(f)["phases"]

  def same(a, b, last):
    return (a["latent_frames"] == b["latent_frames"] and a["dir"] == b["dir"]
            and math.isclose(a["yarn_factor"], b["yarn_factor"])
            and (last or a["steps"] == b["steps"]))
  if len(old) != len(plan) or not all(same(a, b, i == len(plan) - 1)
                                      for i, (a, b) in enumerate(zip(old, plan))):
    def desc(ps):
      return [(p["latent_frames"], p["steps"], round(p["yarn_factor"], 4)) for p in ps]
    raise CurriculumError(
        f"{path} records the phases (latent_frames, steps, yarn_factor) {desc(old)}, but this "
        f"config asks for {desc(plan)}. {fix}")
  for new, recorded in zip(plan, old):
    for key in ("done", "final_loss"):
      if key in recorded:
        new[key] = recorded[key]
  return True


def train_teacher(cfg: ml_collections.ConfigDict, workdir: str,
                  make_iterator: Callable[[ml_collections.ConfigDict], Any],
                  hooks: Iterable[Callable[[int, dict], None]] = ()) -> dict:
  """Trains (or resumes) the teacher through its horizon curriculum into <workdir>/teacher.

  Phase i runs `trainer.train` on phase_config(cfg, i) in phase_dirs(cfg, workdir)[i] with
  the batches of make_iterator(phase_config(cfg, i)). A phase after the first starts from the
  previous phase's final params (fresh optimizer, EMA and LR schedule: each phase is a
  fine-tuning run of its own). A finished phase (a checkpoint at its step count) is skipped
  without compiling anything; an interrupted one resumes from its latest checkpoint. hooks go
  to every phase's trainer (steps restart at 0 in each phase).
  Returns the final phase's final metrics; <workdir>/teacher/curriculum.json records the plan
  and each phase's progress.
  """
  validate(cfg)
  teacher_dir = Workdir.of(cfg, workdir).teacher
  dirs, ph, factors = phase_dirs(cfg, workdir), phases(cfg), yarn_factors(cfg)
  plan = [{"latent_frames": frames, "steps": steps, "yarn_factor": f,
           "dir": os.path.relpath(d, teacher_dir), "done": False}
          for (frames, steps), f, d in zip(ph, factors, dirs)]
  recorded = _check_plan(teacher_dir, plan)
  is_main = jax.process_index() == 0

  def record():
    if is_main:
      os.makedirs(teacher_dir, exist_ok=True)
      write_json_atomic(os.path.join(teacher_dir, CURRICULUM_FILE),
                        {"phases": plan, "yarn_original_frames": cfg.model.yarn_original_frames,
                         "yarn_auto": bool(cfg.train.yarn_auto)})

  if not recorded:  # a record is rewritten only once a phase has run (a refused run writes
    record()        # nothing)
  final: dict = {}
  for i, run_dir in enumerate(dirs):
    pcfg = phase_config(cfg, i)
    latest = ckpt_lib.latest_step(run_dir)
    where = (f"phase {i + 1}/{len(dirs)} ({ph[i][0]} latent frames, {ph[i][1]} steps, "
             f"yarn_factor {factors[i]:.4g}) in {run_dir}")
    if latest is not None and latest >= ph[i][1]:
      # skipped, not restored: its checkpoint must still be this model's
      ckpt_lib.check_model(run_dir, TeacherTask(pcfg).model_config)
      if is_main:
        print(f"[relic] teacher {where}: already done (step {latest}), skipped", flush=True)
      metrics_path = os.path.join(run_dir, "final_metrics.json")
      final = {"step": latest}
      if os.path.exists(metrics_path):
        with open(metrics_path) as f:
          final = json.load(f)
    else:
      init = None
      if i > 0 and latest is None:  # a new phase starts where the previous one ended
        prev = phase_config(cfg, i - 1)
        init = loading.load_dit_params(prev, dirs[i - 1])
      if is_main:
        how = ("resuming" if latest is not None else
               f"starting from phase {i}'s params" if init is not None else "starting")
        print(f"[relic] teacher {where}: {how}", flush=True)
      final = trainer.train(pcfg, run_dir, TeacherTask(pcfg), make_iterator(pcfg), hooks,
                    init_params=init)
    plan[i]["done"] = True
    if "loss" in final:
      plan[i]["final_loss"] = final["loss"]
    record()
  return final
