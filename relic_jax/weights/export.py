"""Export of our models in Wan 2.1's diffusers layout: the inverse of `relic import-wan` and
`relic import-wan-vae`, so that weights trained here load through the same import path as real
Wan weights (and in diffusers itself).

A pipeline directory, as diffusers lays out Wan2.1-T2V-*-Diffusers:
  transformer/   config.json (WanTransformer3DModel) + diffusion_pytorch_model.safetensors
  vae/           config.json (AutoencoderKLWan, with latents_mean / latents_std: the
                 per-channel statistics the DiT's latents are normalised by) +
                 diffusion_pytorch_model.safetensors
and two folders of relic_jax's own modules, which Wan does not have (their tensors named by
our param paths, "/"-joined):
  text_encoder/  config.json ({"_class_name": "RelicByteTextEncoder", ...}) + model.safetensors:
                 the byte-caption encoder (models/text_encoder.py), in the slot where Wan keeps
                 umT5
  tiny_decoder/  config.json ({"_class_name": "RelicTinyDecoder", ...}) + model.safetensors

`save_safetensors` is our own writer of the format `safetensors_io` reads (atomic: a temporary
file renamed into place).
"""

import dataclasses
import json
import os
import struct

import jax
import ml_collections
import numpy as np

from relic_jax.io_utils import write_json_atomic
from relic_jax.models.dit import RELIC_ADDITIONS, unstack_blocks
from relic_jax.models.vae import VAEConfig
from relic_jax.weights.safetensors_io import DTYPES
from relic_jax.weights.wan import _conv3d, _linear, _table, name_map
from relic_jax.weights.wan_vae import _torch_shape, expected_shapes, torch_name

WEIGHTS = "diffusion_pytorch_model.safetensors"
OWN_WEIGHTS = "model.safetensors"
TEXT_ENCODER_CLASS = "RelicByteTextEncoder"
TINY_DECODER_CLASS = "RelicTinyDecoder"
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class ExportError(ValueError):
  """The params cannot be written in the requested layout."""


def save_safetensors(path: str, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` (name -> numpy array) as one safetensors file, atomically."""
  header, offset, blobs = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise ExportError(f"tensor {name} has dtype {a.dtype}, which safetensors cannot hold.")
    raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for raw in blobs:
      f.write(raw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _cast(x, dtype: str) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32).astype(jax.numpy.dtype(dtype))


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflat(flat: dict[tuple, np.ndarray]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return out


# ----------------------------------------------------------------------------- transformer

def _inverse(transform, value: np.ndarray, torch_shape: tuple | None = None) -> np.ndarray:
  if transform is _linear:
    return value.T
  if transform is _conv3d:
    return value.reshape(torch_shape[2:] + torch_shape[1:2] + torch_shape[:1]).transpose(
        4, 3, 0, 1, 2)
  if transform is _table:
    return value[None]
  return value


def wan_transformer_config(m: ml_collections.ConfigDict) -> dict:
  """diffusers' config.json of a WanTransformer3DModel with our model config's architecture."""
  return {"_class_name": "WanTransformer3DModel", "patch_size": list(m.patch_size),
          "num_attention_heads": int(m.num_heads),
          "attention_head_dim": int(m.dim // m.num_heads), "in_channels": int(m.in_channels),
          "out_channels": int(m.out_channels), "text_dim": int(m.text_dim),
          "freq_dim": int(m.freq_dim), "ffn_dim": int(m.ffn_dim),
          "num_layers": int(m.num_layers),
          "cross_attn_norm": bool(m.cross_attn_norm),
          "qk_norm": "rms_norm_across_heads" if m.qk_norm else None, "eps": float(m.eps),
          "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024}


def wan_transformer_state_dict(m: ml_collections.ConfigDict, params, dtype: str = "bfloat16"
                               ) -> dict[str, np.ndarray]:
  """diffusers' tensors of our DiT's params (scanned or not). RELIC's additions other than the
  byte text encoder (exported on its own, `own_state_dict`) have no place in Wan's layout and
  are refused."""
  params = jax.device_get(params)
  if "blocks" in params:
    params = unstack_blocks(params, m.num_layers)
  flat = _flat(params)
  extra = sorted("/".join(p) for p in flat if any(a in p for a in RELIC_ADDITIONS)
                 and p[0] != "text_encoder")
  if extra:
    raise ExportError(f"param {extra[0]} (and {len(extra) - 1} more) is a RELIC addition that "
                      "Wan's transformer layout cannot hold. Fix: export a model without "
                      "actions or poses (model.action_dim = model.pose_dim = 0).")
  out = {}
  for name, (path, transform) in name_map(m.num_layers, m.qk_norm, m.cross_attn_norm).items():
    if path not in flat:
      raise ExportError(f"param {'/'.join(path)} (diffusers' {name}) is missing from the params.")
    value = _cast(flat[path], "float32")
    torch_shape = None
    if transform is _conv3d:
      pt, ph, pw = m.patch_size
      torch_shape = (m.dim, m.in_channels, pt, ph, pw)
    out[name] = _inverse(transform, value, torch_shape).astype(jax.numpy.dtype(dtype))
  return out


# ------------------------------------------------------------------------------------- VAE

def wan_vae_config(cfg: VAEConfig, latents_mean=None, latents_std=None) -> dict:
  """diffusers' config.json of an AutoencoderKLWan with `cfg`'s architecture."""
  out = {"_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim, "z_dim": cfg.z_dim,
         "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
         "attn_scales": list(cfg.attn_scales),
         "temperal_downsample": list(cfg.temporal_downsample), "dropout": 0.0,
         "in_channels": 3, "out_channels": 3, "is_residual": False,
         "scale_factor_temporal": cfg.temporal_stride,
         "scale_factor_spatial": cfg.spatial_stride, "clip_output": True}
  if cfg.decoder_base_dim is not None:
    out["decoder_base_dim"] = cfg.decoder_base_dim
  if latents_mean is not None:
    out["latents_mean"] = [float(x) for x in np.asarray(latents_mean).reshape(-1)]
    out["latents_std"] = [float(x) for x in np.asarray(latents_std).reshape(-1)]
  return out


def wan_vae_state_dict(cfg: VAEConfig, params, dtype: str = "bfloat16") -> dict[str, np.ndarray]:
  """diffusers' tensors of our VAE's params."""
  flat = _flat(jax.device_get(params))
  want = expected_shapes(cfg)
  if set(flat) != set(want):
    diff = sorted("/".join(p) for p in set(flat) ^ set(want))
    raise ExportError(f"the params do not match the VAE config ({diff[0]} and "
                      f"{len(diff) - 1} more differ). Fix: export with the config they were "
                      "trained with.")
  out = {}
  for path in want:
    value = _cast(flat[path], "float32")
    name = torch_name(path)
    shape = _torch_shape(name, value.shape)
    if value.ndim == 2:
      value = value.T.reshape(shape)
    elif value.ndim >= 4:
      n = value.ndim
      value = value.transpose((n - 1, n - 2) + tuple(range(n - 2)))
    else:
      value = value.reshape(shape)
    out[name] = value.astype(jax.numpy.dtype(dtype))
  return out


# ----------------------------------------------------------------------- our own modules

def own_state_dict(params, dtype: str = "bfloat16") -> dict[str, np.ndarray]:
  """Our param tree -> {"a/b/c": array}."""
  return {"/".join(p): _cast(v, dtype) for p, v in _flat(jax.device_get(params)).items()}


def own_params(state_dict) -> dict:
  """{"a/b/c": array} -> our param tree (float32 numpy arrays)."""
  return _unflat({tuple(k.split("/")): np.asarray(state_dict[k], np.float32)
                  for k in state_dict})


def write_model_dir(out: str, config: dict, tensors: dict[str, np.ndarray],
                    weights: str = WEIGHTS) -> None:
  """One model folder: config.json and its safetensors file."""
  os.makedirs(out, exist_ok=True)
  save_safetensors(os.path.join(out, weights), tensors, {"format": "pt"})
  write_json_atomic(os.path.join(out, "config.json"), config)


def export_transformer(out: str, m: ml_collections.ConfigDict, params, dtype: str = "bfloat16"
                       ) -> None:
  write_model_dir(out, wan_transformer_config(m), wan_transformer_state_dict(m, params, dtype))


def export_text_encoder(out: str, m: ml_collections.ConfigDict, params,
                        dtype: str = "bfloat16") -> None:
  """The byte text encoder of a DiT with model.text_encoder == 'bytes' (its params'
  "text_encoder" subtree; max_len: the caption bytes its position table holds, data.text_len)."""
  te = jax.device_get(params)["text_encoder"]
  config = {"_class_name": TEXT_ENCODER_CLASS, "width": int(m.text_encoder_width),
            "out_dim": int(m.text_dim), "num_layers": int(m.text_encoder_layers),
            "max_len": int(np.shape(te["positions"])[0])}
  write_model_dir(out, config, own_state_dict(te, dtype), OWN_WEIGHTS)


def export_vae(out: str, cfg: VAEConfig, params, latents_mean=None, latents_std=None,
               dtype: str = "bfloat16") -> None:
  write_model_dir(out, wan_vae_config(cfg, latents_mean, latents_std),
                  wan_vae_state_dict(cfg, params, dtype))


def export_tiny_decoder(out: str, tiny_cfg, params, dtype: str = "bfloat16") -> None:
  config = {"_class_name": TINY_DECODER_CLASS, **dataclasses.asdict(tiny_cfg)}
  write_model_dir(out, config, own_state_dict(params, dtype), OWN_WEIGHTS)
