"""Interactive generation: `Session.start(image, text) -> state`, `Session.step(state, actions)
-> (state, frames)`, with streaming decoding (the full causal VAE decoder or the tiny one).

Everything a step needs lives in the state (KV cache, camera, decoder cache, RNG), and the
step is one jitted function of fixed shapes, so a session compiles once and runs to
config.memory.max_frames latent frames. States are immutable: a step that fails (bad actions,
a full cache) leaves the state it was given usable.
"""

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline.loader import tokenize_caption
from relic_jax.config import choices
from relic_jax.inference import streaming as st
from relic_jax.inference import text as text_lib
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.sharding import abstract_params
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models import dit as dit_lib
from relic_jax.models import tiny_decoder as tiny_lib
from relic_jax.models import vae as vae_lib
from relic_jax.models.vae import to_uint8, to_unit


class Decoder:
  """Latents (normalised, as the DiT sees them) -> video in [-1, 1], streamed: `init(batch)`
  gives the cache, `decode(cache, z, first)` -> (cache, video [B, F, H, W, 3]) where F = 1 + 4
  (T - 1) when first (frame 0 decodes to one frame) else 4 T."""

  def __init__(self, kind: str, vae_cfg, vae_params, stats: dict | None = None,
               tiny_cfg=None, tiny_params=None):
    if kind not in choices.Decoder.values():
      raise ValueError(f"decoder {kind!r}: use 'vae' or 'tiny'")
    if kind == "tiny" and tiny_params is None:
      raise ValueError("the tiny decoder needs its params (train it with `relic train_vae`, "
                       "config.vae.tiny_steps > 0)")
    self.kind, self.vae_cfg, self.vae_params = kind, vae_cfg, vae_params
    self.tiny_cfg, self.tiny_params = tiny_cfg, tiny_params
    z = vae_cfg.z_dim
    self.mean = jnp.asarray(stats["mean"] if stats else np.zeros(z), jnp.float32)
    self.std = jnp.asarray(stats["std"] if stats else np.ones(z), jnp.float32)

  @property
  def params(self):
    """What decode() needs as traced arguments (not constants baked into the compiled step)."""
    return {"vae": self.vae_params, "tiny": self.tiny_params, "mean": self.mean,
            "std": self.std}

  def normalise(self, z):
    return (z - self.mean) / self.std

  def encode_image(self, image_BHW3):
    """uint8 images [B, H, W, 3] -> normalised latent frame 0 [B, 1, h, w, C]."""
    x = to_unit(jnp.asarray(image_BHW3))[:, None]
    _, (mean, _) = vae_lib.encode_chunk(self.vae_params, self.vae_cfg, None, x, first=True)
    return self.normalise(mean)

  def init(self, batch: int, latent_hw: tuple[int, int]):
    if self.kind == "tiny":
      return jnp.zeros((batch, 1, *latent_hw, self.vae_cfg.z_dim), jnp.float32)
    s = self.vae_cfg.spatial_stride
    return vae_lib.init_decoder_cache(self.vae_cfg, batch, latent_hw[0] * s, latent_hw[1] * s)

  def decode(self, params, cache, z_norm, first: bool):
    z = z_norm * params["std"] + params["mean"]
    if self.kind == "tiny":
      video = tiny_lib.decode(params["tiny"], self.tiny_cfg, z, prev=cache, first=first)
      return z[:, -1:], video
    return vae_lib.decode_chunk(params["vae"], self.vae_cfg, cache, z, first=first)


@dataclasses.dataclass(frozen=True)
class SessionState:
  stream: st.StreamState
  decoder_cache: Any
  frames: int  # latent frames made so far (frame 0 included), known on the host


class Session:
  """A generator with its params; one per model/mode, any number of states."""

  def __init__(self, cfg: ml_collections.ConfigDict, params, decoder: Decoder | None = None,
               mode: str | None = None, max_frames: int | None = None, batch: int = 1,
               mesh=None):
    """mesh: run sharded (RELIC's layout): params as the config's rules lay them out (FSDP
    over embed, heads and FFN over tensor), the KV cache by head, the model's activations per
    its logical constraints (sequence over context, heads over tensor); None: one device."""
    self.spec = st.spec_from_config(cfg, mode, max_frames)
    self.cfg, self.decoder, self.batch, self.mesh = cfg, decoder, batch, mesh
    self.rules = mesh_lib.rules(cfg.mesh) if mesh is not None else None
    self._state_sh = None
    if mesh is not None:
      layout = abstract_params(dit_lib.init_fn(cfg), mesh, self.rules)
      params = jax.device_put(params, jax.tree.map(lambda a: a.sharding, layout))
      text_ndim = 2 if self.spec.dit.text_encoder == "bytes" else 3
      self._state_sh = st.state_shardings(self.spec, mesh, self.rules, batch, text_ndim)
    self.params = params
    self._text_encoder = None  # umT5, loaded at the first caption (text_input)
    self.traces = 0  # how many times the step was traced (= compiled), for tests and benchmarks
    self._start = jax.jit(self._start_fn)
    self._step = jax.jit(self._step_fn)

  def _context(self):
    """The mesh and its logical rules around a call (the model's sharding constraints)."""
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _pin(self, stream):
    """The session state in its layout (the same at every step: compiled once)."""
    if self._state_sh is None:
      return stream
    return jax.lax.with_sharding_constraint(stream, self._state_sh)

  def _start_fn(self, params, dparams, latent0, text, rng):
    stream = self._pin(st.start(params, self.spec, latent0, text, rng))
    dec, video = None, None
    if self.decoder is not None:
      dec, video = self.decoder.decode(
          dparams, self.decoder.init(latent0.shape[0], self.spec.latent_hw), latent0, True)
    return stream, dec, video

  def _step_fn(self, params, dparams, stream, dec, actions):
    self.traces += 1
    stream, latents = st.step(params, self.spec, stream, actions)
    stream = self._pin(stream)
    video = None
    if self.decoder is not None:
      dec, video = self.decoder.decode(dparams, dec, latents, False)
    return stream, dec, latents, video

  @property
  def _dparams(self):
    return None if self.decoder is None else self.decoder.params

  def text_input(self, text) -> np.ndarray:
    """A caption (str) -> byte tokens for model.text_encoder='bytes', its umT5 embedding for
    'umt5' (the encoder of config.model.text_encoder_from, loaded at the first caption);
    arrays pass through."""
    if isinstance(text, str):
      kind = self.spec.dit.text_encoder
      if kind == "umt5":
        if self._text_encoder is None:
          self._text_encoder = text_lib.from_config(self.cfg, batch_size=1)
        return self.text_input(self._text_encoder([text])[0])
      if kind != "bytes":
        raise ValueError("this model takes precomputed text embeddings [L, text_dim] "
                         "(model.text_encoder='none'), not a string")
      text = tokenize_caption(text, self.cfg.data.text_len)
    text = np.asarray(text)
    want = 1 if self.spec.dit.text_encoder == "bytes" else 2
    return np.broadcast_to(text, (self.batch, *text.shape)) if text.ndim == want else text

  def start(self, text, image=None, latent=None, seed: int = 0):
    """A new session from an image (uint8 [H, W, 3] or [B, H, W, 3]; needs a decoder with the
    VAE) or its normalised latent [B, 1, h, w, C]. Returns (state, video of frame 0 or None)."""
    if latent is None:
      if image is None or self.decoder is None:
        raise ValueError("start() needs an image and a decoder (to encode it), or a latent")
      image = np.asarray(image)
      image = np.broadcast_to(image, (self.batch, *image.shape)) if image.ndim == 3 else image
      latent = self.decoder.encode_image(image)
    latent = jnp.asarray(latent, jnp.float32)
    want = (self.batch, 1, *self.spec.latent_hw, self.spec.dit.in_channels)
    if latent.shape != want:
      raise ValueError(f"the image latent is {latent.shape}, expected {want}; the model works "
                       f"on {self.spec.latent_hw} latents (config.data.latent_height/width)")
    with self._context():
      stream, dec, video = self._start(self.params, self._dparams, latent,
                                       self.text_input(text), jax.random.key(seed))
    return SessionState(stream, dec, 1), (None if video is None else to_uint8(video))

  def step(self, state: SessionState, actions):
    """One block: actions [4 * block_frames, 13] (or [B, ...]) -> (new state, {"latents",
    "video" (uint8 [B, 4 * block_frames, H, W, 3] if decoding)})."""
    a = st.check_actions(self.spec, actions, self.batch)
    kv_lib.check_capacity(self.spec.cache, state.frames + self.spec.block_frames)
    with self._context():
      stream, dec, latents, video = self._step(self.params, self._dparams, state.stream,
                                               state.decoder_cache, jnp.asarray(a))
    out = {"latents": latents}
    if video is not None:
      out["video"] = to_uint8(video)
    return SessionState(stream, dec, state.frames + self.spec.block_frames), out
