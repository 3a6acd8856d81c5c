"""Wan 2.1 text-to-video transformer weights from diffusers (`WanTransformer3DModel`).

`import_wan_transformer(state_dict, hf_config)` maps diffusers' tensor names and layouts onto
our `WanDiT` params and infers the model config; `wan_forward` runs our DiT on diffusers' input
layout, so the two can be compared number for number.

Layout conversions: `nn.Linear` weights [out, in] -> Dense kernels [in, out]; the patch
`Conv3d` weight [D, C, pt, ph, pw] -> a Dense kernel over flattened (pt, ph, pw, C) patches;
`scale_shift_table` [1, k, D] -> [k, D]; RMS-norm weights -> `scale`.
"""

import math
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from relic_jax.config import get_base_config
from relic_jax.models.dit import RELIC_ADDITIONS, DiTConfig, WanDiT


class WanImportError(ValueError):
  """The checkpoint is not a Wan 2.1 T2V transformer this importer understands."""


def _linear(w):
  return w.T


def _conv3d(w):
  d = w.shape[0]
  return w.transpose(2, 3, 4, 1, 0).reshape(-1, d)


def _table(w):
  return w.reshape(w.shape[1:])


def _same(w):
  return w


def _dense(src: str, dst: tuple) -> dict:
  return {f"{src}.weight": (dst + ("kernel",), _linear), f"{src}.bias": (dst + ("bias",), _same)}


def name_map(num_layers: int, qk_norm: bool, cross_attn_norm: bool
             ) -> dict[str, tuple[tuple[str, ...], Callable]]:
  """diffusers tensor name -> (our param path, layout transform)."""
  m = {
      "patch_embedding.weight": (("patch_embedding", "kernel"), _conv3d),
      "patch_embedding.bias": (("patch_embedding", "bias"), _same),
      "scale_shift_table": (("head_modulation",), _table),
      **_dense("condition_embedder.time_embedder.linear_1", ("time_embedding_1",)),
      **_dense("condition_embedder.time_embedder.linear_2", ("time_embedding_2",)),
      **_dense("condition_embedder.time_proj", ("time_projection",)),
      **_dense("condition_embedder.text_embedder.linear_1", ("text_embedding_1",)),
      **_dense("condition_embedder.text_embedder.linear_2", ("text_embedding_2",)),
      **_dense("proj_out", ("proj_out",)),
  }
  for i in range(num_layers):
    src, dst = f"blocks.{i}", (f"blocks_{i}",)
    m[f"{src}.scale_shift_table"] = (dst + ("modulation",), _table)
    for attn, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
      for p, q in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
        m.update(_dense(f"{src}.{attn}.{p}", dst + (ours, q)))
      if qk_norm:
        m[f"{src}.{attn}.norm_q.weight"] = (dst + (ours, "norm_q", "scale"), _same)
        m[f"{src}.{attn}.norm_k.weight"] = (dst + (ours, "norm_k", "scale"), _same)
    if cross_attn_norm:
      m[f"{src}.norm2.weight"] = (dst + ("norm2", "scale"), _same)
      m[f"{src}.norm2.bias"] = (dst + ("norm2", "bias"), _same)
    m.update(_dense(f"{src}.ffn.net.0.proj", dst + ("ffn", "fc1")))
    m.update(_dense(f"{src}.ffn.net.2", dst + ("ffn", "fc2")))
  return m


I2V_MARKERS = ("condition_embedder.image_embedder.", ".attn2.add_k_proj.", ".attn2.add_v_proj.",
               ".attn2.norm_added_k.")


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(x)


def infer_model_config(shapes: Mapping[str, tuple[int, ...]], hf_config: dict | None
                       ) -> ml_collections.ConfigDict:
  """Our `config.model` for a checkpoint, from its tensor shapes and config.json."""
  i2v = sorted(n for n in shapes if any(k in n for k in I2V_MARKERS))
  if i2v:
    raise WanImportError(
        f"this is an image-to-video Wan checkpoint (tensor {i2v[0]} and {len(i2v) - 1} more "
        "CLIP-image tensors); only the text-to-video transformer (Wan2.1-T2V-1.3B/14B) is "
        "supported, since RELIC conditions on the image through the clean first latent frame. "
        "Fix: import a T2V checkpoint.")
  for need in ("patch_embedding.weight", "proj_out.weight",
               "condition_embedder.text_embedder.linear_1.weight",
               "condition_embedder.time_embedder.linear_1.weight",
               "blocks.0.ffn.net.0.proj.weight"):
    if need not in shapes:
      raise WanImportError(f"tensor {need} is missing: this is not a diffusers "
                           "WanTransformer3DModel checkpoint (or it is incomplete). Fix: point at "
                           "the transformer/ folder of a Wan 2.1 T2V diffusers checkpoint.")
  hf = dict(hf_config or {})
  if hf.get("_class_name") not in (None, "WanTransformer3DModel"):
    raise WanImportError(f"config.json describes a {hf['_class_name']}, not a "
                         "WanTransformer3DModel. Fix: point at the transformer/ folder.")
  dim, in_ch, pt, ph, pw = _shape(shapes["patch_embedding.weight"])
  layers = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blocks."))
  if "num_attention_heads" not in hf:
    raise WanImportError("config.json (with num_attention_heads) is missing: the head count "
                         "cannot be read off the tensors (Wan's QK-norm spans all heads). Fix: "
                         "keep the checkpoint's config.json beside the safetensors files, or "
                         "pass hf_config.")
  heads = int(hf["num_attention_heads"])
  head_dim = int(hf.get("attention_head_dim", dim // heads))
  if heads * head_dim != dim:
    raise WanImportError(f"config.json says {heads} heads x {head_dim} = {heads * head_dim}, but "
                         f"tensor patch_embedding.weight has dim {dim}. Fix: use the config.json "
                         "that belongs to these weights.")
  qk_norm = hf.get("qk_norm", "rms_norm_across_heads")
  if qk_norm not in ("rms_norm_across_heads", None):
    raise WanImportError(f"config.json qk_norm={qk_norm!r} is not supported (Wan 2.1 uses "
                         "'rms_norm_across_heads').")
  patch = tuple(int(p) for p in hf.get("patch_size", (pt, ph, pw)))
  if patch != (pt, ph, pw):
    raise WanImportError(f"config.json patch_size {patch} disagrees with tensor "
                         f"patch_embedding.weight {(pt, ph, pw)}.")
  out_features = _shape(shapes["proj_out.weight"])[0]
  if out_features % (pt * ph * pw):
    raise WanImportError(f"tensor proj_out.weight has {out_features} outputs, not a multiple of "
                         f"the patch volume {pt * ph * pw}.")
  m = get_base_config().model
  m.dim, m.num_heads, m.num_layers = dim, heads, layers
  m.ffn_dim = _shape(shapes["blocks.0.ffn.net.0.proj.weight"])[0]
  m.in_channels, m.out_channels = in_ch, out_features // (pt * ph * pw)
  m.patch_size = (pt, ph, pw)
  m.text_dim = _shape(shapes["condition_embedder.text_embedder.linear_1.weight"])[1]
  m.freq_dim = _shape(shapes["condition_embedder.time_embedder.linear_1.weight"])[1]
  m.eps = float(hf.get("eps", 1e-6))
  m.qk_norm = qk_norm is not None
  m.cross_attn_norm = bool(hf.get("cross_attn_norm", "blocks.0.norm2.weight" in shapes))
  return m


def expected_shapes(model_cfg: ml_collections.ConfigDict) -> dict[tuple[str, ...], tuple]:
  """Our (unscanned) param path -> shape, by abstract evaluation (nothing allocated)."""
  dit = DiTConfig.from_config(model_cfg)
  dit = DiTConfig(**{**dit.__dict__, "scan_layers": False, "remat_policy": "none"})
  pt, ph, pw = dit.patch_size
  x = jnp.zeros((1, pt, ph, pw, dit.in_channels))
  t = jnp.zeros((1, pt))
  txt = jnp.zeros((1, 1, dit.text_dim))
  tree = jax.eval_shape(lambda: WanDiT(dit).init(jax.random.key(0), x, t, txt)["params"])
  tree = nn.meta.unbox(tree)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _relic_init(path: tuple, shape: tuple, rng) -> np.ndarray:
  """Init of a RELIC addition: projections into the network (and all biases) zero, encoder
  kernels Glorot-uniform (as the modules initialise them)."""
  if not any(p in RELIC_ADDITIONS for p in path):
    raise WanImportError(f"internal: param {'/'.join(path)} is neither in the checkpoint nor a "
                         "RELIC addition")
  if path[-1] != "kernel" or any(p in ("action_proj", "pose_q", "pose_k") for p in path):
    return np.zeros(shape, np.float32)
  limit = math.sqrt(6.0 / (shape[0] + shape[1]))
  return rng.uniform(-limit, limit, shape).astype(np.float32)


def _place(params: dict, path: tuple, value: np.ndarray, scan_layers: bool, layers: int) -> None:
  """Puts a converted param at its path; with scan_layers, a block's param goes straight into
  the stacked [layers, ...] array (one host copy in all)."""
  if scan_layers and path[0].startswith("blocks_"):
    stacked_path = ("blocks",) + path[1:]
    stacked = _get(params, stacked_path)
    if stacked is None:
      stacked = np.empty((layers,) + value.shape, value.dtype)
      _set(params, stacked_path, stacked)
    stacked[int(path[0].split("_")[1])] = value
  else:
    _set(params, path, value)


def _get(tree: dict, path: tuple):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def import_wan_transformer(state_dict: Mapping[str, np.ndarray], hf_config: dict | None = None,
                           *, param_dtype: str = "float32", scan_layers: bool = True,
                           action_dim: int = 0, pose_dim: int = 0, seed: int = 0,
                           put: Callable | None = None):
  """(config.model, params) for a diffusers WanTransformer3DModel state dict.

  state_dict: name -> array (numpy, or anything with .shape that np.asarray reads; a lazy
  mapping is read one tensor at a time). param_dtype: storage dtype of the result.
  scan_layers: stack the blocks for nn.scan (our default). put(path, array) -> array: where
  each converted param goes (default: stays a numpy array), e.g. a device_put onto a mesh;
  path is its key path in the returned tree.
  action_dim / pose_dim > 0 add RELIC's action and pose encoders and per-block projections,
  which Wan does not have: the encoders are randomly initialised (seed) and every projection
  into the network is zero, so the imported model computes exactly the Wan function.
  """
  shapes = (dict(state_dict.shapes) if hasattr(state_dict, "shapes")  # lazy: headers only
            else {k: _shape(v) for k, v in state_dict.items()})
  model_cfg = infer_model_config(shapes, hf_config)
  model_cfg.param_dtype = param_dtype
  model_cfg.scan_layers = scan_layers
  model_cfg.action_dim, model_cfg.pose_dim = action_dim, pose_dim
  mapping = name_map(model_cfg.num_layers, model_cfg.qk_norm, model_cfg.cross_attn_norm)
  unknown = sorted(set(shapes) - set(mapping))
  if unknown:
    raise WanImportError(f"tensor {unknown[0]} is not part of a Wan 2.1 T2V transformer"
                         f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}. "
                         "Fix: import the transformer of a Wan2.1-T2V diffusers checkpoint.")
  missing = [n for n in mapping if n not in shapes]
  if missing:
    raise WanImportError(f"tensor {missing[0]} is missing from the checkpoint"
                         f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. "
                         "Fix: check that every safetensors shard is present.")
  want = expected_shapes(model_cfg)
  dtype = jnp.dtype(param_dtype)
  layers = model_cfg.num_layers
  params: dict = {}
  mapped = {path for path, _ in mapping.values()}
  additions = [(None, (path, None)) for path in want if path not in mapped]
  rng = np.random.default_rng(seed)
  for name, (path, transform) in list(mapping.items()) + additions:
    if transform is None:  # a RELIC addition
      _place(params, path, _relic_init(path, want[path], rng).astype(dtype), scan_layers, layers)
      continue
    src = shapes[name]
    converted_shape = _shape(transform(np.empty(src, np.int8)))
    if converted_shape != want[path]:
      raise WanImportError(
          f"tensor {name} has shape {list(src)}, which does not fit this model (expected "
          f"{list(_inverse_shape(transform, want[path]))} for dim {model_cfg.dim}, ffn_dim "
          f"{model_cfg.ffn_dim}, text_dim {model_cfg.text_dim}). Fix: use an unmodified "
          "checkpoint with its own config.json.")
    value = transform(np.asarray(state_dict[name])).astype(dtype)
    _place(params, path, value, scan_layers, layers)
  if put is not None:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for p, leaf in flat:
      keys = tuple(k.key for k in p)
      _set(params, keys, put(keys, leaf))  # the host copy is dropped as each leaf moves
  return model_cfg, params


def _inverse_shape(transform, shape):
  if transform is _linear:
    return shape[::-1]
  if transform is _table:
    return (1,) + tuple(shape)
  return shape


def wan_forward(config, params, latents, timestep, text_embeddings, actions=None, poses=None):
  """Our DiT on diffusers' layout: latents [B, C, T, H, W], timestep [B] (0..1000), text
  [B, L, D] -> velocity [B, C_out, T, H, W]. `config` is a full config or its `model` part.
  actions [B, F, action_dim] / poses [B, F, pose_dim] per video frame (F = 1 + 4 (T - 1)) for
  a model with the RELIC additions (zeros when omitted)."""
  m = config.model if "model" in config else config
  dit = DiTConfig.from_config(m)
  x = jnp.transpose(jnp.asarray(latents, jnp.float32), (0, 2, 3, 4, 1))
  t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (x.shape[0],))
  y = WanDiT(dit).apply({"params": params}, x, t, jnp.asarray(text_embeddings),
                       actions=actions, poses=poses)
  return jnp.transpose(y, (0, 4, 1, 2, 3))
