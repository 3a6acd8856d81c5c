"""Wan 2.1 video VAE weights from diffusers (`AutoencoderKLWan`).

`import_wan_vae(state_dict, hf_config)` infers the `VAEConfig` from the tensor names and shapes
(cross-checked with config.json when given) and maps every tensor onto our params;
`wan_vae_encode` / `wan_vae_decode` run our VAE on diffusers' [B, C, T, H, W] layout, so the
two can be compared number for number.

Names: our module paths mirror diffusers' (`down_blocks_3` <-> `down_blocks.3`), except that
`quant_conv` / `post_quant_conv` live inside our encoder / decoder, a resampler's conv is
`resample` (diffusers: `resample.1`, behind a padding or upsampling layer) and a decoder block's
upsampler is `upsampler` (diffusers: `upsamplers.0`).
Layouts: Conv3d [O, I, t, h, w] -> [t, h, w, I, O]; Conv2d [O, I, h, w] -> [h, w, I, O];
1x1(x1) convs -> Dense kernels [I, O]; RMS-norm `gamma` [C, 1, 1(, 1)] -> `scale` [C].
"""

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from relic_jax.models import vae as vae_lib
from relic_jax.models.vae import VAEConfig
from relic_jax.weights.wan import WanImportError

WAN22_FIX = ("Fix: import the vae/ folder of a Wan 2.1 diffusers checkpoint (e.g. "
             "Wan2.1-T2V-1.3B-Diffusers); the Wan 2.2 VAE (residual blocks, patch_size 2, "
             "48 latent channels) is not supported.")


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(x)


def _refuse_wan22(shapes: Mapping[str, tuple], hf: dict) -> None:
  if hf.get("is_residual"):
    raise WanImportError(f"config.json has is_residual=true: this is a Wan 2.2 VAE. {WAN22_FIX}")
  if hf.get("patch_size") not in (None, 1):
    raise WanImportError(f"config.json has patch_size={hf['patch_size']}: this is a Wan 2.2 "
                         f"VAE. {WAN22_FIX}")
  residual = sorted(n for n in shapes if re.match(
      r"(encoder\.down_blocks\.\d+\.(resnets|downsampler)|decoder\.up_blocks\.\d+\.upsampler)\.",
      n))
  if residual:
    raise WanImportError(f"tensor {residual[0]} belongs to a residual up/down block: this is a "
                         f"Wan 2.2 VAE. {WAN22_FIX}")


def _encoder_layout(shapes: Mapping[str, tuple]) -> list[tuple[str, object]]:
  """encoder.down_blocks as ("res", out channels) / ("down", temporal)."""
  ids = sorted({int(n.split(".")[2]) for n in shapes if n.startswith("encoder.down_blocks.")})
  if ids != list(range(len(ids))):
    gap = next(i for i in range(len(ids) + 1) if i not in ids)
    raise WanImportError(f"tensors encoder.down_blocks.{gap}.* are missing (the blocks are "
                         "numbered without a gap). Fix: check that the checkpoint is complete.")
  layout = []
  for i in ids:
    p = f"encoder.down_blocks.{i}."
    if p + "conv1.weight" in shapes:
      layout.append(("res", _shape(shapes[p + "conv1.weight"])[0]))
    elif p + "to_qkv.weight" in shapes:
      raise WanImportError(f"tensor {p}to_qkv.weight is an attention block in an encoder stage "
                           "(attn_scales non-empty), which Wan 2.1 does not have and we do not "
                           "support. Fix: import a Wan 2.1 VAE (attn_scales []).")
    elif p + "resample.1.weight" in shapes:
      layout.append(("down", p + "time_conv.weight" in shapes))
    else:
      name = sorted(n for n in shapes if n.startswith(p))[0]
      raise WanImportError(f"tensor {name} is not part of a residual, attention or resample "
                           "block of a Wan 2.1 VAE encoder. Fix: import an unmodified "
                           "AutoencoderKLWan checkpoint.")
  return layout


def infer_vae_config(shapes: Mapping[str, tuple], hf_config: dict | None = None,
                     **overrides) -> VAEConfig:
  """Our `VAEConfig` for a checkpoint, from its tensor shapes (and config.json, cross-checked)."""
  hf = dict(hf_config or {})
  if hf.get("_class_name") not in (None, "AutoencoderKLWan"):
    raise WanImportError(f"config.json describes a {hf['_class_name']}, not an "
                         "AutoencoderKLWan. Fix: point at the vae/ folder of a Wan 2.1 "
                         "diffusers checkpoint.")
  _refuse_wan22(shapes, hf)
  for need in ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight",
               "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight"):
    if need not in shapes:
      raise WanImportError(f"tensor {need} is missing: this is not a diffusers AutoencoderKLWan "
                           "checkpoint (or it is incomplete). Fix: point at the vae/ folder of a "
                           "Wan 2.1 diffusers checkpoint.")
  base_dim, in_ch = _shape(shapes["encoder.conv_in.weight"])[:2]
  out_ch = _shape(shapes["decoder.conv_out.weight"])[0]
  for n, name, key in ((in_ch, "encoder.conv_in.weight", "in_channels"),
                       (out_ch, "decoder.conv_out.weight", "out_channels")):
    if n != vae_lib.RGB:
      raise WanImportError(f"tensor {name} has {n} video channels; only RGB video (3, no "
                           f"patchifying) is supported. {WAN22_FIX}")
    if hf.get(key, vae_lib.RGB) != vae_lib.RGB:
      raise WanImportError(f"config.json has {key}={hf[key]}; only RGB video (3) is supported. "
                           f"{WAN22_FIX}")
  z2 = _shape(shapes["encoder.conv_out.weight"])[0]
  if z2 % 2:
    raise WanImportError(f"tensor encoder.conv_out.weight has {z2} outputs, not mean + logvar "
                         "(an even number). Fix: import an unmodified AutoencoderKLWan.")
  layout = _encoder_layout(shapes)
  stages, stage = [], []
  temporal = []
  for kind, arg in layout:
    stage.append((kind, arg))
    if kind == "down":
      stages.append(stage)
      stage = []
      temporal.append(arg)
  stages.append(stage)
  res = [[a for k, a in s if k == "res"] for s in stages]
  if not all(res) or len({len(r) for r in res}) != 1:
    raise WanImportError(f"the encoder stages have {[len(r) for r in res]} residual blocks; a "
                         "Wan 2.1 VAE has the same number in every stage. Fix: import an "
                         "unmodified AutoencoderKLWan checkpoint.")
  if any(r[0] % base_dim for r in res):
    raise WanImportError(f"encoder stage widths {[r[0] for r in res]} are not multiples of "
                         f"base_dim {base_dim} (tensor encoder.conv_in.weight). Fix: import an "
                         "unmodified AutoencoderKLWan checkpoint.")
  dim_mult = tuple(r[0] // base_dim for r in res)
  dec_width = _shape(shapes["decoder.conv_out.weight"])[1]
  decoder_base = dec_width // dim_mult[0]
  inferred = dict(base_dim=base_dim, z_dim=z2 // 2, dim_mult=dim_mult,
                  num_res_blocks=len(res[0]), attn_scales=(),
                  temporal_downsample=tuple(temporal),
                  decoder_base_dim=None if decoder_base == base_dim else decoder_base)
  hf_names = dict(base_dim="base_dim", z_dim="z_dim", dim_mult="dim_mult",
                  num_res_blocks="num_res_blocks", attn_scales="attn_scales",
                  temporal_downsample="temperal_downsample", decoder_base_dim="decoder_base_dim")
  for ours, theirs in hf_names.items():
    if theirs not in hf:
      continue
    v = hf[theirs]
    v = tuple(v) if isinstance(v, (list, tuple)) else v
    if ours == "attn_scales":
      v = tuple(float(s) for s in v)
    if ours == "decoder_base_dim" and v == base_dim:
      v = None
    if v != inferred[ours]:
      raise WanImportError(f"config.json {theirs}={hf[theirs]} disagrees with the tensors, which "
                           f"give {inferred[ours]}. Fix: use the config.json that belongs to "
                           "these weights (or pass hf_config=None).")
  try:
    cfg = VAEConfig(**inferred, **overrides)
  except ValueError as e:
    raise WanImportError(f"the checkpoint's architecture is not supported: {e}") from e
  for key, value in (("scale_factor_temporal", cfg.temporal_stride),
                     ("scale_factor_spatial", cfg.spatial_stride)):
    if hf.get(key, value) != value:
      raise WanImportError(f"config.json {key}={hf[key]} disagrees with the architecture, whose "
                           f"stride is {value}. Fix: use the config.json of these weights.")
  return cfg


_RENAMES = {"resample": "resample.1", "upsampler": "upsamplers.0", "kernel": "weight",
            "scale": "gamma"}


def torch_name(path: tuple[str, ...]) -> str:
  """diffusers' tensor name of one of our param paths."""
  if path[:2] in (("encoder", "quant_conv"), ("decoder", "post_quant_conv")):
    path = path[1:]
  parts = []
  for p in path:
    p = _RENAMES.get(p, p)
    parts.append(re.sub(r"_(\d+)$", r".\1", p))
  return ".".join(parts)


def _torch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """diffusers' shape of a tensor whose converted shape is `shape`."""
  attention = name.endswith((".to_qkv.weight", ".proj.weight", ".norm.gamma"))
  if name.endswith(".gamma"):
    return shape + ((1, 1) if attention else (1, 1, 1))
  if name.endswith(".bias"):
    return shape
  if len(shape) == 2:  # a 1x1 conv as a Dense kernel [I, O]
    return shape[::-1] + ((1, 1) if attention else (1, 1, 1))
  return shape[-1:] + shape[-2:-1] + shape[:-2]  # [*k, I, O] -> [O, I, *k]


def _convert(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if len(shape) == 2:
    return w.reshape(shape[::-1]).T
  if len(shape) >= 4:
    return w.transpose(tuple(range(2, w.ndim)) + (1, 0))
  return w.reshape(shape)


def _describe(cfg: VAEConfig) -> str:
  return (f"base_dim {cfg.base_dim}, z_dim {cfg.z_dim}, dim_mult {cfg.dim_mult}, "
          f"num_res_blocks {cfg.num_res_blocks}, attn_scales {cfg.attn_scales}, "
          f"temporal_downsample {cfg.temporal_downsample}")


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def expected_shapes(cfg: VAEConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our param path -> shape, by abstract evaluation (nothing allocated)."""
  tree = jax.eval_shape(lambda: vae_lib.init_params(cfg, jax.random.key(0)))
  return {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def import_wan_vae(state_dict: Mapping[str, np.ndarray], hf_config: dict | None = None, *,
                   dtype: str = "float32", param_dtype: str = "float32"):
  """(VAEConfig, params) for a diffusers AutoencoderKLWan (Wan 2.1) state dict.

  state_dict: name -> array (numpy, or a LazyStateDict read one tensor at a time).
  hf_config: its config.json (optional; cross-checked against the tensors). dtype /
  param_dtype: compute and storage dtypes of the result (params come back as numpy arrays).
  """
  shapes = (dict(state_dict.shapes) if hasattr(state_dict, "shapes")
            else {k: _shape(v) for k, v in state_dict.items()})
  cfg = infer_vae_config(shapes, hf_config, dtype=dtype, param_dtype=param_dtype)
  want = expected_shapes(cfg)
  mapping = {torch_name(path): path for path in want}
  unknown = sorted(set(shapes) - set(mapping))
  if unknown:
    raise WanImportError(f"tensor {unknown[0]} is not part of a Wan 2.1 VAE with {_describe(cfg)}"
                         f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}. "
                         "Fix: import an unmodified AutoencoderKLWan (Wan 2.1) checkpoint.")
  missing = sorted(set(mapping) - set(shapes))
  if missing:
    raise WanImportError(f"tensor {missing[0]} is missing from the checkpoint"
                         f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. "
                         "Fix: check that the checkpoint is complete (every safetensors shard).")
  for name, path in sorted(mapping.items()):  # every shape is checked before any data is read
    expect = _torch_shape(name, want[path])
    if tuple(shapes[name]) != expect:
      raise WanImportError(f"tensor {name} has shape {list(shapes[name])}, expected "
                           f"{list(expect)} for {_describe(cfg)}. Fix: use an unmodified "
                           "checkpoint with its own config.json.")
  params: dict = {}
  storage = jnp.dtype(param_dtype)
  for name, path in mapping.items():
    value = _convert(np.asarray(state_dict[name]).astype(np.float32), want[path])
    _set(params, path, value.astype(storage))
  return cfg, params


def wan_vae_encode(config: VAEConfig, params, video_BCTHW):
  """Our encoder on diffusers' layout: video [B, 3, 1 + 4k, H, W] in [-1, 1] -> latent mean
  [B, z, 1 + k, H / 8, W / 8] (diffusers' `encode(x).latent_dist.mean`, not normalised)."""
  x = jnp.transpose(jnp.asarray(video_BCTHW), (0, 2, 3, 4, 1))
  mean, _ = vae_lib.encode(params, config, x)
  return jnp.transpose(mean, (0, 4, 1, 2, 3))


def wan_vae_decode(config: VAEConfig, params, latents_BCTHW, clamp: bool = True):
  """Our decoder on diffusers' layout: latents [B, z, 1 + k, h, w] -> video
  [B, 3, 1 + 4k, 8 h, 8 w], clamped to [-1, 1] as diffusers' `decode(z).sample`."""
  z = jnp.transpose(jnp.asarray(latents_BCTHW), (0, 2, 3, 4, 1))
  return jnp.transpose(vae_lib.decode(params, config, z, clamp=clamp), (0, 4, 1, 2, 3))
