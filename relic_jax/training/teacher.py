"""The teacher stage: the bidirectional DiT trained by flow matching (velocity target).

Frame 0 of each clip is the clean image latent (t = 0, excluded from the loss) when
config.train.clean_first_frame is set; per_frame_noise gives every frame its own noise level.

Batches: {"latents" [B, T, h, w, C], "text" [B, L, text_dim] float} from the synthetic source,
or from the latent cache (data.source = "latents") {"latents" (normalised), "text" [B, L] byte
tokens, "actions" [B, F, 13], "poses" [B, F, 12]} with F = 1 + 4 (T - 1) video frames; actions
and poses are used when model.action_dim / pose_dim are set.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

from relic_jax.diffusion import flow_matching as fm
from relic_jax.models import flops as flops_lib
from relic_jax.models.dit import DiTConfig, WanDiT


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
    frames = 1 + c.cond_frames_per_latent * (t - 1)
    if d.source != "latents":  # only the latent cache has actions and poses (else zeros)
      return batch
    if c.action_dim:
      batch["actions"] = np.zeros((batch_size, frames, c.action_dim), np.float32)
    if c.pose_dim:
      batch["poses"] = np.zeros((batch_size, frames, c.pose_dim), np.float32)
    return batch

  def init_params(self, rng):
    # TeacherTask's own example (subclasses train on other batches, with the same params)
    ex = {k: jnp.asarray(v) for k, v in TeacherTask.example_batch(self, 1).items()}
    t = jnp.zeros((1, self._clip[0]), jnp.float32)
    return self.model.init(rng, ex["latents"], t, ex["text"], actions=ex.get("actions"),
                           poses=ex.get("poses"))["params"]

  def loss_fn(self, params, batch, rng):
    tc = self.cfg.train
    x_t, t, target, weight = fm.noisy_inputs(
        rng, batch["latents"], shift=tc.timestep_shift, sampling=tc.timestep_sampling,
        clean_first_frame=tc.clean_first_frame, per_frame_noise=tc.per_frame_noise)
    pred = self.model.apply({"params": params}, x_t, t, batch["text"],
                            actions=batch.get("actions") if self.dit.action_dim else None,
                            poses=batch.get("poses") if self.dit.pose_dim else None)
    return fm.velocity_loss(pred, target, weight)

  def flops_per_example(self) -> float:
    return flops_lib.forward_flops(self.dit, *self._clip, self.cfg.data.text_len)

  def tokens_per_example(self) -> int:
    return flops_lib.tokens(self.dit, *self._clip)[2]
