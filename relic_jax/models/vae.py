"""The Wan 2.1 causal 3D video VAE as pure-functional Flax linen modules, streamable chunk by chunk.

The math is diffusers' `AutoencoderKLWan` (the Wan 2.1 variant), so its weights import one to
one (see `relic_jax.weights.wan_vae`): residual blocks of RMS norms and causal 3D convs,
single-head spatial attention per frame in the middle blocks, 2x spatial resampling by strided
or nearest-neighbour 2D convs, 2x temporal resampling by causal (3, 1, 1) convs.

Streaming. A causal conv with temporal kernel 3 sees the 2 frames before its chunk; they come
from an explicit cache (a pytree of fixed-shape arrays, zeros at the start of a stream), so a
video is encoded chunk by chunk (frame 0 alone, then chunks of 4 frames) and decoded one latent
frame at a time, with results equal to whole-clip processing. The first chunk is special, as in
diffusers: the temporal downsamplers pass it through (frame 0 alone becomes latent frame 0) and
the temporal upsamplers do not double it (latent frame 0 decodes to one frame).

Axes: B batch, T frames, H height, W width, C channels. Video and latents are channels-last,
[B, T, H, W, C] (diffusers: [B, C, T, H, W]); video values lie in [-1, 1]. The latent
normalisation (`latents_mean` / `latents_std` of diffusers' config) is not applied here.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

CONTEXT = 2  # past frames a temporal-kernel-3 causal conv needs (diffusers' CACHE_T)
RGB = 3
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps log-variance
# the fields of config.vae that are VAEConfig's (the others configure its training)
CONFIG_FIELDS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample",
                 "dtype", "param_dtype")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Static (hashable) VAE hyper-parameters; the defaults are Wan 2.1's (127M params).

  Stages: len(dim_mult); stage i has num_res_blocks residual blocks of base_dim * dim_mult[i]
  channels, and all but the last halve H and W (and T where temporal_downsample[i]), so the
  strides are 2 ** sum(temporal_downsample) in time and 2 ** (stages - 1) in space: (4, 8, 8).
  attn_scales: () only (attention is in the middle blocks; kept for diffusers' config).
  decoder_base_dim: None = base_dim.
  eps: the norm's floor on the channel L2 norm (torch F.normalize).
  """
  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  decoder_base_dim: int | None = None
  dropout: float = 0.0
  eps: float = 1e-12
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("dim_mult", "attn_scales", "temporal_downsample"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, "temporal_downsample",
                       tuple(bool(t) for t in self.temporal_downsample))
    object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
    for name in ("base_dim", "z_dim", "num_res_blocks"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"VAEConfig.{name}={getattr(self, name)!r} must be a positive integer. "
                         f"Fix: set {name} (Wan 2.1: {getattr(VAEConfig, name)}).")
    if not self.dim_mult or any(not isinstance(m, int) or m < 1 for m in self.dim_mult):
      raise ValueError(f"VAEConfig.dim_mult={self.dim_mult} must be positive integers, one per "
                       "stage. Fix: e.g. (1, 2, 4, 4) as Wan 2.1.")
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"VAEConfig.temporal_downsample={self.temporal_downsample} needs one entry "
                       f"per downsampling stage ({len(self.dim_mult) - 1} for dim_mult "
                       f"{self.dim_mult}). Fix: e.g. (False, True, True) as Wan 2.1.")
    if self.attn_scales:
      raise ValueError(f"VAEConfig.attn_scales={self.attn_scales} is not supported: Wan 2.1 has "
                       "attention only in the middle blocks (and diffusers' AutoencoderKLWan "
                       "cannot run encoder-stage attention). Fix: set attn_scales=().")
    if self.decoder_base_dim is not None and (not isinstance(self.decoder_base_dim, int)
                                              or self.decoder_base_dim < 1):
      raise ValueError(f"VAEConfig.decoder_base_dim={self.decoder_base_dim!r} must be a positive "
                       "integer or None. Fix: None (= base_dim) as Wan 2.1.")
    if self.dropout != 0.0:
      raise ValueError(f"VAEConfig.dropout={self.dropout} is not supported (the VAE runs frozen, "
                       "as in Wan). Fix: set dropout=0.0.")
    if not self.eps > 0:
      raise ValueError(f"VAEConfig.eps={self.eps} must be > 0. Fix: 1e-12 as torch.")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"VAEConfig.{name}={getattr(self, name)!r} is not a dtype. Fix: "
                         "'float32' or 'bfloat16'.") from e

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "VAEConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown VAEConfig key {unknown[0]!r}. Fix: use only {sorted(fields)} "
                       "(a diffusers config.json goes through weights.import_wan_vae).")
    return cls(**d)

  @classmethod
  def from_config(cls, v: ml_collections.ConfigDict,
                  spatial_stride: int | None = None) -> "VAEConfig":
    """From config.vae; spatial_stride (config.data.spatial_stride), when given, must be the
    VAE's own."""
    out = cls(**{k: (tuple(v[k]) if isinstance(v[k], (list, tuple)) else v[k])
                 for k in CONFIG_FIELDS})
    if spatial_stride is not None and out.spatial_stride != spatial_stride:
      raise ValueError(f"config.vae.dim_mult={tuple(v.dim_mult)} gives a spatial stride "
                       f"of {out.spatial_stride}, but config.data.spatial_stride="
                       f"{spatial_stride}. Fix: make them agree (Wan: 8).")
    return out

  @property
  def temporal_stride(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_stride(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def decoder_dim(self) -> int:
    return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim


def encoder_layers(cfg: VAEConfig) -> list[tuple[str, Any]]:
  """diffusers' `encoder.down_blocks`, in order: ("res", channels) or ("down", temporal)."""
  layers = []
  for i, m in enumerate(cfg.dim_mult):
    layers += [("res", cfg.base_dim * m)] * cfg.num_res_blocks
    if i != len(cfg.dim_mult) - 1:
      layers.append(("down", cfg.temporal_downsample[i]))
  return layers


def decoder_blocks(cfg: VAEConfig) -> list[tuple[int, str | None]]:
  """diffusers' `decoder.up_blocks`: (channels, upsampling: None, "2d" or "3d" (also in time))."""
  up = cfg.temporal_downsample[::-1]
  last = len(cfg.dim_mult) - 1
  return [(cfg.decoder_dim * m, None if i == last else ("3d" if up[i] else "2d"))
          for i, m in enumerate(cfg.dim_mult[::-1])]


def _dt(cfg: VAEConfig) -> dict:
  return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def _sub(cache, name: str):
  return None if cache is None else cache.get(name)


def causal_conv(conv: nn.Conv, x_BTHWC, past):
  """`conv` (temporal kernel 3, no temporal padding) applied causally: the 2 frames before the
  chunk come from `past` (None: zeros, the start of a stream). Returns (y, the last 2 input
  frames of past + chunk, the next chunk's past)."""
  if past is None:
    past = jnp.zeros(x_BTHWC.shape[:1] + (CONTEXT,) + x_BTHWC.shape[2:], x_BTHWC.dtype)
  ctx = jnp.concatenate([past.astype(x_BTHWC.dtype), x_BTHWC], axis=1)
  return conv(ctx), ctx[:, -CONTEXT:]


class Conv3x3x3(nn.Module):
  """A 3x3x3 conv, no temporal padding (T frames in, T - 2 out), spatial "same" padding, with
  nn.Conv's parameters (kernel [3, 3, 3, C_in, C_out], bias). Computed as ONE 2D conv whose
  input channels are the 3 temporal taps stacked: the same result, and on CPU XLA's 2D conv and
  its gradients run several times faster than its 3D conv (the VAE's training step ~3x)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 3, c, self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    out_t = t - 2
    x = x.astype(self.dtype)
    taps = jnp.concatenate([x[:, i:i + out_t] for i in range(3)], axis=-1)
    taps = taps.reshape(b * out_t, h, w, 3 * c)
    k = jnp.transpose(kernel.astype(self.dtype), (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c,
                                                                          self.features)
    y = jax.lax.conv_general_dilated(taps, k, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y + bias.astype(self.dtype)).reshape(b, out_t, h, w, self.features)


def _conv3(features: int, name: str, cfg: VAEConfig) -> Conv3x3x3:
  return Conv3x3x3(features, name=name, **_dt(cfg))


class RMSNorm(nn.Module):
  """x / max(|x|, eps) * sqrt(C) * scale over channels (diffusers' WanRMS_norm), in float32."""
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.dtype(self.cfg.param_dtype))
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, self.cfg.eps) * (c ** 0.5) * scale.astype(jnp.float32)
    return y.astype(x.dtype)


class ResidualBlock(nn.Module):
  """norm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut."""
  features: int
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache):
    cfg = self.cfg
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = nn.Dense(self.features, name="conv_shortcut", **_dt(cfg))(x)
    h = nn.silu(RMSNorm(cfg, name="norm1")(x))
    h, c1 = causal_conv(_conv3(self.features, "conv1", cfg), h, _sub(cache, "conv1"))
    h = nn.silu(RMSNorm(cfg, name="norm2")(h))
    h, c2 = causal_conv(_conv3(self.features, "conv2", cfg), h, _sub(cache, "conv2"))
    return h + shortcut, {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions of each frame (none across time)."""
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    y = RMSNorm(self.cfg, name="norm")(x).reshape(b * t, h * w, 1, c)
    q, k, v = jnp.split(nn.Dense(3 * c, name="to_qkv", **_dt(self.cfg))(y), 3, axis=-1)
    o = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    return x + nn.Dense(c, name="proj", **_dt(self.cfg))(o)


class MidBlock(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache):
    c, new = x.shape[-1], {}
    x, new["resnets_0"] = ResidualBlock(c, self.cfg, name="resnets_0")(x, _sub(cache, "resnets_0"))
    x = AttentionBlock(self.cfg, name="attentions_0")(x)
    x, new["resnets_1"] = ResidualBlock(c, self.cfg, name="resnets_1")(x, _sub(cache, "resnets_1"))
    return x, new


class Downsample(nn.Module):
  """2x in space (zero-pad right and bottom, 3x3 stride-2 conv per frame); if temporal, then 2x
  in time by a (3, 1, 1) stride-2 conv over [last frame of the previous chunk, chunk]. The first
  chunk passes through in time: frame 0 becomes latent frame 0 on its own."""
  temporal: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache, first: bool):
    c = x.shape[-1]
    x = nn.Conv(c, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), name="resample",
                **_dt(self.cfg))(x)
    if not self.temporal:
      return x, {}
    new = {"time_conv": x[:, -1:]}
    if first:
      return x, new
    past = _sub(cache, "time_conv")
    past = jnp.zeros_like(x[:, :1]) if past is None else past.astype(x.dtype)
    x = nn.Conv(c, (3, 1, 1), strides=(2, 1, 1), padding="VALID", name="time_conv",
                **_dt(self.cfg))(jnp.concatenate([past, x], axis=1))
    return x, new


class Upsample(nn.Module):
  """If temporal, 2x in time first: a causal (3, 1, 1) conv to 2C channels whose halves are
  two consecutive output frames (the first chunk is not doubled and leaves the conv's context at
  zeros); then 2x nearest in space and a 3x3 conv to `features` channels."""
  features: int
  temporal: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache, first: bool):
    b, t, h, w, c = x.shape
    new = {}
    if self.temporal:
      if first:
        new["time_conv"] = jnp.zeros((b, CONTEXT, h, w, c), x.dtype)
      else:
        conv = nn.Conv(2 * c, (3, 1, 1), padding="VALID", name="time_conv", **_dt(self.cfg))
        y, new["time_conv"] = causal_conv(conv, x, _sub(cache, "time_conv"))
        x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="resample",
                **_dt(self.cfg))(x)
    return x, new


class UpBlock(nn.Module):
  features: int
  upsample: str | None  # None, "2d" or "3d"
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache, first: bool):
    new = {}
    for j in range(self.cfg.num_res_blocks + 1):
      name = f"resnets_{j}"
      x, new[name] = ResidualBlock(self.features, self.cfg, name=name)(x, _sub(cache, name))
    if self.upsample is not None:
      x, c = Upsample(self.features // 2, self.upsample == "3d", self.cfg, name="upsampler")(
          x, _sub(cache, "upsampler"), first)
      if c:
        new["upsampler"] = c
    return x, new


class Encoder(nn.Module):
  """Video chunk [B, T, H, W, 3] -> (latent moments [B, T / 4, H / 8, W / 8, 2 z] = mean |
  logvar, new cache); the first chunk (first=True) is one frame -> one latent frame."""
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, cache, first: bool = False):
    cfg, new = self.cfg, {}
    x, new["conv_in"] = causal_conv(_conv3(cfg.base_dim, "conv_in", cfg), x,
                                    _sub(cache, "conv_in"))
    for i, (kind, arg) in enumerate(encoder_layers(cfg)):
      name = f"down_blocks_{i}"
      if kind == "res":
        x, new[name] = ResidualBlock(arg, cfg, name=name)(x, _sub(cache, name))
      else:
        x, c = Downsample(arg, cfg, name=name)(x, _sub(cache, name), first)
        if c:
          new[name] = c
    x, new["mid_block"] = MidBlock(cfg, name="mid_block")(x, _sub(cache, "mid_block"))
    x = nn.silu(RMSNorm(cfg, name="norm_out")(x))
    x, new["conv_out"] = causal_conv(_conv3(2 * cfg.z_dim, "conv_out", cfg), x,
                                     _sub(cache, "conv_out"))
    return nn.Dense(2 * cfg.z_dim, name="quant_conv", **_dt(cfg))(x), new


class Decoder(nn.Module):
  """Latent chunk [B, T, h, w, z] -> (video [B, 4 T, 8 h, 8 w, 3] (first=True: 1 + 4 (T - 1)),
  new cache). Not clamped."""
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z, cache, first: bool = False):
    cfg, new = self.cfg, {}
    blocks = decoder_blocks(cfg)
    x = nn.Dense(cfg.z_dim, name="post_quant_conv", **_dt(cfg))(z)
    top = cfg.decoder_dim * cfg.dim_mult[-1]
    x, new["conv_in"] = causal_conv(_conv3(top, "conv_in", cfg), x, _sub(cache, "conv_in"))
    x, new["mid_block"] = MidBlock(cfg, name="mid_block")(x, _sub(cache, "mid_block"))
    for i, (features, upsample) in enumerate(blocks):
      name = f"up_blocks_{i}"
      x, new[name] = UpBlock(features, upsample, cfg, name=name)(x, _sub(cache, name), first)
    x = nn.silu(RMSNorm(cfg, name="norm_out")(x))
    x, new["conv_out"] = causal_conv(_conv3(RGB, "conv_out", cfg), x, _sub(cache, "conv_out"))
    return x, new


# ----------------------------------------------------------------------------- functional API


def to_unit(frames):
  """uint8 frames -> float32 in [-1, 1] (the VAE's video range)."""
  return frames.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(video) -> np.ndarray:
  """Video in [-1, 1] -> uint8 frames."""
  return np.asarray(np.clip(np.round((np.asarray(video) + 1.0) * 127.5), 0, 255), np.uint8)


def init_params(cfg: VAEConfig, key) -> dict:
  """Random params {"encoder": ..., "decoder": ...} (shapes do not depend on the video size)."""
  k_enc, k_dec = jax.random.split(key)
  s = cfg.spatial_stride
  x = jnp.zeros((1, cfg.temporal_stride, s, s, RGB), jnp.dtype(cfg.dtype))
  z = jnp.zeros((1, 1, 1, 1, cfg.z_dim), jnp.dtype(cfg.dtype))
  return {"encoder": Encoder(cfg).init(k_enc, x, None)["params"],
          "decoder": Decoder(cfg).init(k_dec, z, None)["params"]}


def _check_size(cfg: VAEConfig, height: int, width: int) -> None:
  s = cfg.spatial_stride
  if height % s or width % s or height < s or width < s:
    raise ValueError(f"video size {height}x{width} is not a positive multiple of the VAE's "
                     f"spatial stride {s}. Fix: crop or resize frames to multiples of {s}.")


@functools.lru_cache(maxsize=64)
def _cache_spec(module: type, cfg: VAEConfig, batch: int, height: int, width: int):
  """Shapes and dtypes of a stream's cache, by abstract evaluation of one chunk (no compute)."""
  s, dt = cfg.spatial_stride, jnp.dtype(cfg.dtype)
  if module is Encoder:
    x = jax.ShapeDtypeStruct((batch, cfg.temporal_stride, height, width, RGB), dt)
  else:
    x = jax.ShapeDtypeStruct((batch, 1, height // s, width // s, cfg.z_dim), dt)
  return jax.eval_shape(
      lambda x: module(cfg).init_with_output(jax.random.key(0), x, None)[0][1], x)


def init_encoder_cache(cfg: VAEConfig, batch: int, height: int, width: int) -> dict:
  """The encoder's cache for a stream of height x width video: per causal conv its last 2 input
  frames, per temporal downsampler its last input frame; all zeros (a stream's start)."""
  _check_size(cfg, height, width)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      _cache_spec(Encoder, cfg, batch, height, width))


def init_decoder_cache(cfg: VAEConfig, batch: int, height: int, width: int) -> dict:
  """The decoder's cache for a stream decoding to height x width video (latents 8x smaller): per
  causal conv (temporal upsamplers' included) its last 2 input frames; all zeros."""
  _check_size(cfg, height, width)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      _cache_spec(Decoder, cfg, batch, height, width))


def _check_cache(cache, spec, what: str, init_fn: str) -> None:
  if cache is None:
    raise ValueError(f"{what} got no cache although first=False. Fix: start the stream with "
                     "first=True, then pass the cache each call returns.")
  got = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), cache)
  want = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), spec)
  if got != want:
    conv_in = jax.tree.leaves(cache.get("conv_in")) if isinstance(cache, dict) else []
    shape = f"conv_in entry {tuple(conv_in[0].shape)}" if conv_in else "another structure"
    raise ValueError(f"{what}: the cache does not fit this chunk (it has {shape}, expected "
                     f"{want['conv_in'][0]}). Fix: use the cache returned for the previous "
                     f"chunk of this stream, or {init_fn}(cfg, batch, height, width) with the "
                     "chunk's batch and video size.")


def _check_video(cfg: VAEConfig, x, first: bool) -> None:
  if x.ndim != 5 or x.shape[-1] != RGB:
    raise ValueError(f"video has shape {tuple(x.shape)}; expected channels-last RGB "
                     "[B, T, H, W, 3]. Fix: pass [B, T, H, W, 3] (from diffusers' [B, 3, T, H, W], "
                     "transpose(0, 2, 3, 4, 1)).")
  _check_size(cfg, x.shape[2], x.shape[3])
  t, s = x.shape[1], cfg.temporal_stride
  if first and (t - 1) % s:
    raise ValueError(f"video has {t} frames; a stream starts with 1 + {s}k frames (frame 0 is "
                     f"encoded alone, then chunks of {s}). Fix: trim or pad to 1 + {s}k frames.")
  if not first and (t == 0 or t % s):
    raise ValueError(f"chunk has {t} frames; after the first frame the encoder takes chunks of "
                     f"{s}k frames (k >= 1). Fix: feed frames in groups of {s}.")


def _check_latents(cfg: VAEConfig, z) -> None:
  if z.ndim != 5 or z.shape[-1] != cfg.z_dim or z.shape[1] == 0:
    raise ValueError(f"latents have shape {tuple(z.shape)}; expected channels-last "
                     f"[B, T, h, w, {cfg.z_dim}] with T >= 1. Fix: pass [B, T, h, w, z] (from "
                     "diffusers' [B, z, T, h, w], transpose(0, 2, 3, 4, 1)).")


def _run_stream(module, params, cache, x, first: bool, chunk: int, init_cache, check_cache):
  """Runs `module` over x [B, T, ...] chunk by chunk, threading the causal cache: a stream's
  first frame alone (first=True, from init_cache()), then chunks of `chunk` frames. A Python
  loop (unrolled), not lax.scan: XLA:CPU runs the convs of a rolled loop, and their
  gradients, ~20x slower (tiny VAE train step: 30 s -> 1.6 s). Returns (cache, outputs
  concatenated in time)."""
  def step(c, part, is_first=False):
    y, c = module.apply({"params": params}, part, c, is_first)
    return c, y

  outs = []
  if first:
    cache, y = step(init_cache(), x[:, :1], True)
    outs, x = [y], x[:, 1:]
  else:
    check_cache(cache)
  for i in range(x.shape[1] // chunk):
    cache, y = step(cache, x[:, i * chunk:(i + 1) * chunk])
    outs.append(y)
  return cache, jnp.concatenate(outs, axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "first"))
def encode_chunk(params, cfg: VAEConfig, cache, x_BTHWC, first: bool = False):
  """One chunk of a stream -> (cache, (mean, logvar)), latents [B, T', H / 8, W / 8, z].

  first=True starts a stream (the given cache is ignored; None is fine): the chunk holds
  1 + 4k frames, frame 0 is encoded alone (T' = 1 + k). Otherwise the chunk holds 4k frames
  (T' = k) and `cache` is the one returned for the previous chunk. Chunks of 4 frames are run
  one after another by the same code, so a whole clip and a stream of 4-frame chunks compute
  the same thing; this function compiles once per (chunk shape, first).
  """
  _check_video(cfg, x_BTHWC, first)
  b, _, h, w, _ = x_BTHWC.shape
  x = x_BTHWC.astype(jnp.dtype(cfg.dtype))
  cache, y = _run_stream(
      Encoder(cfg), params["encoder"], cache, x, first, cfg.temporal_stride,
      lambda: init_encoder_cache(cfg, b, h, w),
      lambda c: _check_cache(c, _cache_spec(Encoder, cfg, b, h, w), "encode_chunk",
                             "init_encoder_cache"))
  mean, logvar = jnp.split(y, 2, axis=-1)
  return cache, (mean, jnp.clip(logvar, *LOGVAR_RANGE))


@functools.partial(jax.jit, static_argnames=("cfg", "first", "clamp"))
def decode_chunk(params, cfg: VAEConfig, cache, z_BTHWC, first: bool = False, clamp: bool = True):
  """Latent frames of a stream -> (cache, video [B, F, 8 h, 8 w, 3]), one latent frame at a time
  (an unrolled loop): each gives 4 frames, except the stream's first latent frame (first=True; the
  given cache is ignored), which gives 1. clamp: to [-1, 1], as diffusers."""
  _check_latents(cfg, z_BTHWC)
  b, _, h, w, _ = z_BTHWC.shape
  s = cfg.spatial_stride
  z = z_BTHWC.astype(jnp.dtype(cfg.dtype))
  cache, video = _run_stream(
      Decoder(cfg), params["decoder"], cache, z, first, 1,
      lambda: init_decoder_cache(cfg, b, h * s, w * s),
      lambda c: _check_cache(c, _cache_spec(Decoder, cfg, b, h * s, w * s), "decode_chunk",
                             "init_decoder_cache"))
  return cache, (jnp.clip(video, -1.0, 1.0) if clamp else video)


def encode(params, cfg: VAEConfig, video_BTHWC):
  """A clip of 1 + 4k frames in [-1, 1] -> (mean, logvar) [B, 1 + k, H / 8, W / 8, z]."""
  return encode_chunk(params, cfg, None, video_BTHWC, first=True)[1]


def decode(params, cfg: VAEConfig, z_BTHWC, clamp: bool = True):
  """Latents [B, 1 + k, h, w, z] -> video [B, 1 + 4k, 8 h, 8 w, 3] (clamped to [-1, 1] unless
  clamp=False)."""
  return decode_chunk(params, cfg, None, z_BTHWC, first=True, clamp=clamp)[1]


def sample(key, mean, logvar):
  """A reparameterised posterior draw, mean + exp(logvar / 2) * eps with eps ~ N(0, I)."""
  eps = jax.random.normal(key, mean.shape, jnp.float32).astype(mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps
