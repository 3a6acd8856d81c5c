"""The video DiT: the Wan 2.1 text-to-video transformer as pure-functional Flax linen modules.

Layout follows diffusers' `WanTransformer3DModel` so real weights map one to one (see the
`weights` package): (1,2,2) patch embedding, 3D RoPE, RMS QK-norm across heads, self-attention,
text cross-attention, GELU-tanh FFN, a timestep MLP with a shared 6*D modulation projection plus
a learned per-block table, and an output head with its own 2*D modulation.

Differences from diffusers, all layout-only:
  * channels-last video: x [B, T, H, W, C] (diffusers: [B, C, T, H, W]);
  * timesteps are per latent frame, t [B, T], so frame 0 can be a clean image (t=0) and
    diffusion forcing can noise frames independently; a [B] timestep is broadcast;
  * the patch embedding is a Dense over flattened (pt, ph, pw, C) patches, which equals the
    strided Conv3d.

Axes: B batch, T (patched) latent frames, P tokens per frame, S = T*P tokens, D dim, N heads,
H head dim, L text tokens.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name

from relic_jax.config.choices import AttentionMode, PoseFormat, RematPolicy, TextEncoder
from relic_jax.models import attention as attn_lib
from relic_jax.models import kv as kv_lib
from relic_jax.models import rope as rope_lib
from relic_jax.models.block_causal import BlockCausal
from relic_jax.models.text_encoder import ByteTextEncoder
from relic_jax.models.layers import (AffineLayerNorm, RMSNorm, dense, gate, layer_norm_fp32,
                                     modulate, per_frame)

# model.remat_policy -> the jax.checkpoint policy of each block ("none": no remat).
REMAT_POLICIES = {
    RematPolicy.FULL: lambda: jax.checkpoint_policies.nothing_saveable,
    RematPolicy.DOTS_SAVEABLE: lambda: jax.checkpoint_policies.dots_saveable,
    RematPolicy.DOTS_NO_BATCH_SAVEABLE:
        lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    RematPolicy.OFFLOAD_BLOCK_INPUT:
        lambda: jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=["block_input"],
            offload_src="device", offload_dst="pinned_host"),
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Static (hashable) model hyper-parameters; built from `config.model` by `from_config`."""
  dim: int = 64
  ffn_dim: int = 128
  num_heads: int = 2
  num_layers: int = 2
  in_channels: int = 16
  out_channels: int = 16
  patch_size: tuple[int, int, int] = (1, 2, 2)
  text_dim: int = 32
  text_encoder: str = "none"
  text_encoder_width: int = 64
  text_encoder_layers: int = 2
  freq_dim: int = 256
  eps: float = 1e-6
  qk_norm: bool = True
  cross_attn_norm: bool = True
  rope_theta: float = 10000.0
  yarn_factor: float = 1.0
  yarn_original_frames: int = 21
  yarn_beta_fast: float = 2.0
  yarn_beta_slow: float = 1.0
  attention_mode: str = "bidirectional"
  block_frames: int = 3
  first_block_frames: int = 1  # block-causal: frame 0 (the image latent) is a block of its own
  attention_impl: str = "xla"
  cache_attention_impl: str = ""  # attention over the KV cache ("": attention_impl)
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  # RELIC conditioning (0 = off): per-video-frame action magnitudes and camera poses.
  action_dim: int = 0
  pose_dim: int = 0
  cond_frames_per_latent: int = 4
  pose_format: str = "extrinsics"  # or "plucker": per-token rays from the 12-d extrinsics
  plucker_fov_deg: float = 74.0    # horizontal field of view of the frames, for "plucker"

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> "DiTConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: m[k] for k in m.keys() if k in fields}
    values["patch_size"] = tuple(values.get("patch_size", cls.patch_size))
    return cls(**values)


def sinusoidal_embedding(t, dim: int):
  """Timestep features as diffusers' Timesteps(flip_sin_to_cos=True, shift=0): [cos | sin]."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class SelfAttention(nn.Module):
  cfg: DiTConfig
  block_causal: BlockCausal | None = None  # static; None: bidirectional

  @nn.compact
  def __call__(self, x_BSD, angles, pose_BTD=None, cache: kv_lib.KVView | None = None):
    """cache: None, or a `kv.KVView` holding this layer's cached keys/values: the tokens attend
    to them and to themselves (one block, bidirectional); then returns (out, (k, v)) with the
    tokens' own keys (before RoPE) and values, to cache."""
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    b, s, _ = x_BSD.shape
    x = x_BSD.astype(dt)
    q = dense(c.dim, ("embed", "heads"), "q", dt, pdt)(x)
    k = dense(c.dim, ("embed", "heads"), "k", dt, pdt)(x)
    v = dense(c.dim, ("embed", "heads"), "v", dt, pdt)(x)
    if pose_BTD is not None:
      # RELIC: the pose embedding is added to queries and keys (not values), per latent frame,
      # before QK-norm and RoPE; zero-initialised, so a pretrained model starts unchanged.
      nt = pose_BTD.shape[1]
      for name in ("pose_q", "pose_k"):
        add = dense(c.dim, ("embed", "heads"), name, dt, pdt, kernel_init=nn.initializers.zeros)(
            pose_BTD.astype(dt))
        y = q if name == "pose_q" else k
        # per latent frame [B, T, D] (extrinsics) or per token [B, T, P, D] (Pluecker rays)
        add = add[:, :, None] if add.ndim == 3 else add
        y = (per_frame(y, nt) + add).reshape(b, s, c.dim)
        q, k = (y, k) if name == "pose_q" else (q, y)
    if c.qk_norm:
      q = RMSNorm(c.eps, param_dtype=pdt, name="norm_q")(q)
      k = RMSNorm(c.eps, param_dtype=pdt, name="norm_k")(k)
    q, k, v = (y.reshape(b, s, c.num_heads, c.head_dim) for y in (q, k, v))
    new_kv = (k, v)
    q = rope_lib.apply_rope(q, angles)
    k = rope_lib.apply_rope(k, angles)
    kv_valid = None
    if cache is not None:
      ck, cv, valid = kv_lib.read(cache, dt)
      k = jnp.concatenate([ck, k], axis=1)
      v = jnp.concatenate([cv, v], axis=1)
      kv_valid = jnp.concatenate([valid, jnp.ones((b, s), bool)], axis=1)
    q = nn.with_logical_constraint(q, ("batch", "act_len", "act_heads", None))
    # Keys/values are gathered over the context axis: every query shard sees all keys.
    k = nn.with_logical_constraint(k, ("batch", None, "act_kv_heads", None))
    v = nn.with_logical_constraint(v, ("batch", None, "act_kv_heads", None))
    impl = c.attention_impl if cache is None else (c.cache_attention_impl or c.attention_impl)
    out = attn_lib.dot_product_attention(
        q, k, v, impl=impl,
        scale=rope_lib.yarn_attention_scale(c.yarn_factor) / (c.head_dim ** 0.5),
        block_causal=None if cache is not None else self.block_causal, kv_valid=kv_valid)
    out = nn.with_logical_constraint(out, ("batch", "act_len", "act_heads", None))
    out = dense(c.dim, ("heads", "embed"), "o", dt, pdt)(out.reshape(b, s, c.dim))
    return out if cache is None else (out, new_kv)


class CrossAttention(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_BSD, ctx_BLD):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    b, s, _ = x_BSD.shape
    x, ctx = x_BSD.astype(dt), ctx_BLD.astype(dt)
    q = dense(c.dim, ("embed", "heads"), "q", dt, pdt)(x)
    k = dense(c.dim, ("embed", "heads"), "k", dt, pdt)(ctx)
    v = dense(c.dim, ("embed", "heads"), "v", dt, pdt)(ctx)
    if c.qk_norm:
      q = RMSNorm(c.eps, param_dtype=pdt, name="norm_q")(q)
      k = RMSNorm(c.eps, param_dtype=pdt, name="norm_k")(k)
    q = q.reshape(b, s, c.num_heads, c.head_dim)
    k = k.reshape(b, -1, c.num_heads, c.head_dim)
    v = v.reshape(b, -1, c.num_heads, c.head_dim)
    q = nn.with_logical_constraint(q, ("batch", "act_len", "act_heads", None))
    out = attn_lib.dot_product_attention(q, k, v, impl=c.attention_impl)
    return dense(c.dim, ("heads", "embed"), "o", dt, pdt)(out.reshape(b, s, c.dim))


class FeedForward(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_BSD):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    h = dense(c.ffn_dim, ("embed", "mlp"), "fc1", dt, pdt)(x_BSD.astype(dt))
    h = nn.with_logical_constraint(h, ("batch", "act_len", "act_mlp"))
    h = jax.nn.gelu(h, approximate=True)
    return dense(c.dim, ("mlp", "embed"), "fc2", dt, pdt)(h)


class WanBlock(nn.Module):
  """One transformer block. The residual stream x [B, S, D] stays float32 (as in diffusers);
  e [B, T, 6, D] is the shared per-frame modulation, to which the block adds its own table."""
  cfg: DiTConfig
  block_causal: BlockCausal | None = None

  @nn.compact
  def __call__(self, x_BSD, ctx_BLD, e_BT6D, angles, action_BTD=None, pose_BTD=None,
               cache_layer=None, cache_shared=None):
    """cache_layer: this layer's `kv.LayerKV` (or None), cache_shared: the `kv.KVView` without
    layers. Returns (x, kv): kv is None, or with a KV cache the tokens' own (k, v) to cache."""
    c = self.cfg
    x_BSD = checkpoint_name(x_BSD, "block_input")
    table = self.param(
        "modulation",
        nn.with_logical_partitioning(nn.initializers.normal(c.dim ** -0.5),
                                     ("modulation", "embed")),
        (6, c.dim), jnp.dtype(c.param_dtype))
    mod = e_BT6D + table.astype(jnp.float32)
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (mod[:, :, i] for i in range(6))

    h = modulate(layer_norm_fp32(x_BSD, c.eps), shift_sa, scale_sa)
    cache = None if cache_layer is None else cache_shared.with_layer(cache_layer)
    h = SelfAttention(c, self.block_causal, name="self_attn")(h, angles, pose_BTD, cache)
    kv = None
    if cache is not None:
      h, kv = h
    x_BSD = x_BSD + gate(h.astype(jnp.float32), gate_sa)
    if action_BTD is not None:
      # RELIC: the action embedding is added to the hidden states right after self-attention
      # (zero-initialised projection).
      a = dense(c.dim, ("embed", "embed_out"), "action_proj", jnp.dtype(c.dtype),
                jnp.dtype(c.param_dtype), kernel_init=nn.initializers.zeros)(
                    action_BTD.astype(jnp.dtype(c.dtype)))
      x_BSD = (per_frame(x_BSD, a.shape[1]) + a.astype(jnp.float32)[:, :, None]).reshape(
          x_BSD.shape)

    h = (AffineLayerNorm(c.eps, jnp.dtype(c.param_dtype), name="norm2")(x_BSD)
         if c.cross_attn_norm else x_BSD)
    x_BSD = x_BSD + CrossAttention(c, name="cross_attn")(h, ctx_BLD).astype(jnp.float32)

    h = modulate(layer_norm_fp32(x_BSD, c.eps), shift_ff, scale_ff)
    h = FeedForward(c, name="ffn")(h)
    x_BSD = x_BSD + gate(h.astype(jnp.float32), gate_ff)
    return nn.with_logical_constraint(x_BSD, ("batch", "act_len", "act_embed")), kv


class ScannedBlock(WanBlock):
  """WanBlock in nn.scan's (carry, x) -> (carry, y) form: x is the layer's KV cache (or
  None), y the tokens' own (k, v) (or None)."""

  def __call__(self, x_BSD, ctx_BLD, e_BT6D, angles, action_BTD=None, pose_BTD=None,
               cache_shared=None, cache_layer=None):
    return super().__call__(x_BSD, ctx_BLD, e_BT6D, angles, action_BTD, pose_BTD, cache_layer,
                            cache_shared)


def _block_class(cfg: DiTConfig, scanned: bool):
  cls = ScannedBlock if scanned else WanBlock
  if cfg.remat_policy != RematPolicy.NONE:
    cls = nn.remat(cls, policy=REMAT_POLICIES[cfg.remat_policy](), prevent_cse=not scanned)
  return cls


# Param names RELIC adds to the Wan 2.1 backbone (encoders and per-block projections), and our
# built-in text encoder (instead of umT5): none of them is in a Wan checkpoint.
RELIC_ADDITIONS = ("action_encoder", "pose_encoder", "action_proj", "pose_q", "pose_k",
                   "text_encoder")


class CondEncoder(nn.Module):
  """RELIC's action / pose encoder: per-video-frame vectors [B, F, c] -> [B, T, D], one per
  latent frame (or per-token ones [B, F, P, c] -> [B, T, P, D], Pluecker rays). Temporal
  patchify by cond_frames_per_latent (4, the VAE's stride): latent frame 0 covers video frame 0
  alone (as in the causal VAE), so it is repeated to fill its patch; then a two-layer MLP.
  F must be 1 + 4 (T - 1)."""
  cfg: DiTConfig

  @nn.compact
  def __call__(self, c_BFC, num_latent: int, with_frame0: bool = True):
    """with_frame0=False: the vectors of latent frames that do not include frame 0 (a
    streaming block), F = 4 T."""
    c = self.cfg
    k = c.cond_frames_per_latent
    b, f, ch = c_BFC.shape[0], c_BFC.shape[1], c_BFC.shape[-1]
    want = 1 + k * (num_latent - 1) if with_frame0 else k * num_latent
    if f != want:
      raise ValueError(f"{self.name}: got {f} per-frame vectors for {num_latent} latent frames; "
                       f"expected {want}")
    x = c_BFC
    if with_frame0:
      x = jnp.concatenate([jnp.repeat(c_BFC[:, :1], k - 1, axis=1), c_BFC], axis=1)
    # [B, T * k, ..., C] -> [B, T, ..., k * C]: per latent frame (and per token, if given)
    rest = x.shape[2:-1]
    x = x.reshape(b, num_latent, k, *rest, ch)
    x = jnp.moveaxis(x, 2, -2).reshape(b, num_latent, *rest, k * x.shape[-1])
    x = x.astype(jnp.dtype(c.dtype))
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    h = dense(c.dim, ("cond_in", "embed"), "fc1", dt, pdt)(x)
    h = dense(c.dim, ("embed", "embed_out"), "fc2", dt, pdt)(nn.silu(h))
    return h.astype(jnp.float32)


def plucker_rays(poses_BF12, nh: int, nw: int, fov_deg: float):
  """Pluecker rays (direction, moment = origin x direction) [B, F, nh * nw, 6] through the
  centres of an nh x nw token grid, for camera-to-first-frame extrinsics [B, F, 12] (our
  convention: OpenCV camera axes) and a pinhole camera of horizontal field of view fov_deg
  (square pixels)."""
  b, f, _ = poses_BF12.shape
  e = poses_BF12.reshape(b, f, 3, 4).astype(jnp.float32)
  r, o = e[..., :3], e[..., 3]
  tan = jnp.tan(jnp.deg2rad(fov_deg) / 2)
  xs = ((jnp.arange(nw) + 0.5) / nw * 2 - 1) * tan
  ys = ((jnp.arange(nh) + 0.5) / nh * 2 - 1) * tan * nh / nw
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  d_cam = jnp.stack([xx, yy, jnp.ones_like(xx)], -1).reshape(-1, 3)
  d_cam = d_cam / jnp.linalg.norm(d_cam, axis=-1, keepdims=True)
  d = jnp.einsum("bfij,pj->bfpi", r, d_cam)
  m = jnp.cross(jnp.broadcast_to(o[:, :, None], d.shape), d)
  return jnp.concatenate([d, m], -1)


class WanDiT(nn.Module):
  """x [B, T, H, W, C_in], t [B, T] or [B] (0..1000), text [B, L, text_dim] -> [B, T, H, W, C_out].

  With cfg.text_encoder == "bytes", text is byte tokens [B, L] int32 instead, embedded by the
  built-in encoder (param "text_encoder")."""
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_BTHWC, t, text_BLC, t_offset=0, actions=None, poses=None, kv_cache=None,
               first_frame_in_input: bool = True):
    """t_offset: the latent frame index of x's first frame (RoPE). kv_cache: None, or a
    `kv.KVView` with stacked layers (`memory.kv_cache.view` builds one): x is then one block
    that attends to the cached keys/values and to itself, and the call returns (out, (k, v))
    with the block's keys (before RoPE) and values per layer [L, B, S, N, H], to cache.
    first_frame_in_input: whether x starts at frame 0 (the actions/poses patchify frame 0
    alone); a streaming block after it passes False and 4 vectors per latent frame."""
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    b, t_in, h_in, w_in, ch = x_BTHWC.shape
    pt, ph, pw = c.patch_size
    nt, nh, nw = t_in // pt, h_in // ph, w_in // pw
    p = nh * nw
    if t.ndim == 1:
      t = jnp.broadcast_to(t[:, None], (b, t_in))
    t_BT = t[:, ::pt]  # one timestep per patched frame

    # patch embedding: [B, T, H, W, C] -> [B, S, pt*ph*pw*C] -> [B, S, D]
    patches = x_BTHWC.reshape(b, nt, pt, nh, ph, nw, pw, ch).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    patches = patches.reshape(b, nt * p, pt * ph * pw * ch)
    x = dense(c.dim, ("patch", "embed"), "patch_embedding", dt, pdt)(patches.astype(dt))
    x = nn.with_logical_constraint(x.astype(jnp.float32), ("batch", "act_len", "act_embed"))

    # timestep MLP and the shared modulation projection, per frame
    temb = sinusoidal_embedding(t_BT, c.freq_dim)
    temb = dense(c.dim, ("freq", "embed"), "time_embedding_1", dt, pdt)(temb.astype(dt))
    temb = dense(c.dim, ("embed", "embed_out"), "time_embedding_2", dt, pdt)(nn.silu(temb))
    temb = temb.astype(jnp.float32)
    e = dense(6 * c.dim, ("embed", "modulation_out"), "time_projection", dt, pdt)(
        nn.silu(temb).astype(dt))
    e_BT6D = e.astype(jnp.float32).reshape(b, nt, 6, c.dim)

    # text projection
    if c.text_encoder == TextEncoder.BYTES:
      if jnp.issubdtype(text_BLC.dtype, jnp.floating) or text_BLC.ndim != 2:
        raise ValueError(f"model.text_encoder='bytes' takes byte tokens [B, L] int32; got "
                         f"{text_BLC.dtype} {text_BLC.shape}")
      text_BLC = ByteTextEncoder(c.text_encoder_width, c.text_dim, c.text_encoder_layers,
                                 dtype=c.dtype, param_dtype=c.param_dtype,
                                 name="text_encoder")(text_BLC)
    ctx = dense(c.dim, ("text_embed", "embed"), "text_embedding_1", dt, pdt)(text_BLC.astype(dt))
    ctx = dense(c.dim, ("embed", "embed_out"), "text_embedding_2", dt, pdt)(
        jax.nn.gelu(ctx, approximate=True))
    ctx = nn.with_logical_constraint(ctx, ("batch", "act_text_len", "act_embed"))

    angles = rope_lib.rope_angles(c.head_dim, (nt, nh, nw), c.rope_theta, t_offset, c.yarn_factor,
                                  c.yarn_original_frames, c.yarn_beta_fast, c.yarn_beta_slow)
    # A block is block_frames latent frames of p tokens each (a static layout, so kernels such as
    # splash can build the mask without materialising it).
    block_causal = None
    if c.attention_mode == AttentionMode.BLOCK_CAUSAL:
      off = (c.block_frames - c.first_block_frames) * p  # frame 0 .. first-1 form block 0
      block_causal = BlockCausal(block_tokens=c.block_frames * p, q_offset=off, kv_offset=off)

    # RELIC conditioning: per-video-frame actions / poses -> one embedding per latent frame.
    act = pose = None
    n_cond = (1 + c.cond_frames_per_latent * (t_in - 1) if first_frame_in_input
              else c.cond_frames_per_latent * t_in)
    if c.action_dim:
      actions = jnp.zeros((b, n_cond, c.action_dim)) if actions is None else actions
      act = CondEncoder(c, name="action_encoder")(actions, t_in, first_frame_in_input)[:, ::pt]
    if c.pose_dim:
      poses = jnp.zeros((b, n_cond, c.pose_dim)) if poses is None else poses
      if c.pose_format == PoseFormat.PLUCKER:
        poses = plucker_rays(poses, nh, nw, c.plucker_fov_deg)  # [B, F, P, 6]
      pose = CondEncoder(c, name="pose_encoder")(poses, t_in, first_frame_in_input)[:, ::pt]

    cache_layers, cache_shared = ((None, None) if kv_cache is None
                                  else (kv_cache.layers, kv_cache.shared()))
    if c.scan_layers:
      blocks = nn.scan(
          _block_class(c, scanned=True), variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 6 + (0,), length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_kv = blocks(c, block_causal, name="blocks")(x, ctx, e_BT6D, angles, act, pose,
                                                          cache_shared, cache_layers)
    else:
      kvs = []
      for i in range(c.num_layers):
        layer = None if cache_layers is None else jax.tree.map(lambda a, i=i: a[i], cache_layers)
        x, kv = _block_class(c, scanned=False)(c, block_causal, name=f"blocks_{i}")(
            x, ctx, e_BT6D, angles, act, pose, layer, cache_shared)
        kvs.append(kv)
      new_kv = None if kv_cache is None else jax.tree.map(lambda *a: jnp.stack(a), *kvs)

    # output head with its own (shift, scale) table added to the (pre-projection) temb
    table = self.param("head_modulation",
                       nn.with_logical_partitioning(nn.initializers.normal(c.dim ** -0.5),
                                                    ("modulation", "embed")), (2, c.dim), pdt)
    mod = table.astype(jnp.float32)[None, None] + temb[:, :, None]
    x = modulate(layer_norm_fp32(x, c.eps), mod[:, :, 0], mod[:, :, 1])
    out = dense(pt * ph * pw * c.out_channels, ("embed", "patch"), "proj_out", dt, pdt,
                kernel_init=nn.initializers.zeros)(x.astype(dt))
    out = out.astype(jnp.float32).reshape(b, nt, nh, nw, pt, ph, pw, c.out_channels)
    out = out.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t_in, h_in, w_in, c.out_channels)
    return out if kv_cache is None else (out, new_kv)


def init_params(cfg: DiTConfig, rng, clip: tuple[int, int, int], text_len: int):
  """WanDiT(cfg)'s initial params, boxed (nn.Partitioned leaves carrying their logical axis
  names), from a one-example batch of zeros: latents of clip = (latent frames, height, width),
  text_len text tokens (or embeddings). Actions and poses are left to the model's own zeros."""
  t, h, w = clip
  latents = jnp.zeros((1, t, h, w, cfg.in_channels), jnp.float32)
  text = (jnp.zeros((1, text_len), jnp.int32) if cfg.text_encoder == "bytes" else
          jnp.zeros((1, text_len, cfg.text_dim), jnp.float32))
  return WanDiT(cfg).init(rng, latents, jnp.zeros((1, t), jnp.float32), text)["params"]




def init_fn(cfg):
  """rng -> the DiT's boxed initial params, for an experiment config's model and clip size."""
  d = cfg.data
  return functools.partial(init_params, DiTConfig.from_config(cfg.model),
                           clip=(d.latent_frames, d.latent_height, d.latent_width),
                           text_len=d.text_len)

def unstack_blocks(params: dict, num_layers: int) -> dict:
  """Scanned params ("blocks" with a leading layer axis) -> per-layer "blocks_{i}" params."""
  out = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(num_layers):
    out[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
  return out


def stack_blocks(params: dict, num_layers: int) -> dict:
  """Per-layer "blocks_{i}" params -> scanned params with a leading layer axis."""
  out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[params[f"blocks_{i}"] for i in range(num_layers)])
  return out
