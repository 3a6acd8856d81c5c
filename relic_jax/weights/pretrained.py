"""Pretrained weights for `config.train.init_from` and `config.vae.init_from`.

Either may name:
  - params written by `relic import-wan` / `relic import-wan-vae` (an Orbax params checkpoint
    with meta.json: `weights.store`), or
  - a diffusers folder, read here through the same importers as those commands
    (`import_wan_transformer`, `import_wan_vae`): a model folder (config.json + safetensors),
    or a pipeline root holding transformer/ and vae/ (Wan2.1-T2V-*-Diffusers, or the demo's
    assets/demo written by `relic export-assets`). From a root the DiT also takes
    text_encoder/ (relic's byte-caption encoder, for model.text_encoder='bytes') and the VAE
    tiny_decoder/, where present.

A relative path is looked up from the working directory, then from the repository root (so
`assets/demo` works from anywhere inside a checkout). "" and "none" mean no init.
"""

import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np

from relic_jax import checkpoint as ckpt_lib
from relic_jax.config.base import NO_INIT
from relic_jax.models import vae as vae_lib
from relic_jax.models.tiny_decoder import TinyDecoderConfig
from relic_jax.models.vae import VAEConfig
from relic_jax.weights import export
from relic_jax.weights.safetensors_io import LazyStateDict, load_config
from relic_jax.weights.store import load_params
from relic_jax.weights.wan import WanImportError, import_wan_transformer
from relic_jax.weights.wan_vae import import_wan_vae

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DIT_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "in_channels",
               "out_channels", "freq_dim", "qk_norm", "cross_attn_norm")


class PretrainedError(ValueError):
  """init_from names something that cannot initialise this model; the message says why and
  the fix."""


def resolve(path: str, field: str) -> str | None:
  """The absolute path `path` names (None for no init); PretrainedError when it is missing."""
  if path in NO_INIT:
    return None
  candidates = [path] if os.path.isabs(path) else [os.path.abspath(path),
                                                   os.path.join(REPO_ROOT, path)]
  for p in candidates:
    if os.path.exists(p):
      return p
  raise PretrainedError(f"config.{field}={path!r} does not exist (looked from the working "
                        f"directory and the repository root). Fix: point it at `relic import-"
                        "wan`/`import-wan-vae` output or a diffusers folder, or set it to "
                        "'none'.")


def is_diffusers(path: str) -> bool:
  """A diffusers model folder or pipeline root (not an Orbax params checkpoint)."""
  return not os.path.isfile(os.path.join(path, "meta.json")) and (
      os.path.isfile(os.path.join(path, "config.json"))
      or os.path.isdir(os.path.join(path, "transformer"))
      or os.path.isdir(os.path.join(path, "vae")))


def _folder(path: str, sub: str, cls: str, field: str) -> str:
  """The model folder of class `cls`: path itself, or path/sub of a pipeline root."""
  for cand in (path, os.path.join(path, sub)):
    hf = load_config(cand) if os.path.isdir(cand) else None
    if hf is not None and hf.get("_class_name") == cls:
      return cand
  raise PretrainedError(f"config.{field}={path} holds no {cls} (neither config.json there nor "
                        f"in {sub}/ names it). Fix: point it at a diffusers {cls} folder or a "
                        f"pipeline root with {sub}/.")


def _sibling(folder: str, root: str, sub: str) -> str | None:
  """root/sub, or folder's sibling sub/ when folder is a model folder inside a root."""
  for cand in (os.path.join(root, sub), os.path.join(os.path.dirname(folder), sub)):
    if os.path.isfile(os.path.join(cand, "config.json")):
      return cand
  return None


def dit_params(path: str, model: ml_collections.ConfigDict, seed: int = 0,
               text_len: int | None = None) -> dict:
  """Params (numpy, laid out for model.scan_layers) for `model` from a diffusers Wan
  transformer folder or pipeline root; RELIC's additions (actions, poses) start as Wan does
  without them (zero projections), the byte text encoder from text_encoder/ when there is one
  (else freshly initialised, as a model trained on umT5 embeddings has none)."""
  folder = _folder(path, "transformer", "WanTransformer3DModel", "train.init_from")
  try:
    got, params = import_wan_transformer(
        LazyStateDict(folder), load_config(folder), param_dtype="float32",
        scan_layers=model.scan_layers, action_dim=model.action_dim, pose_dim=model.pose_dim,
        seed=seed)
  except WanImportError as e:
    raise PretrainedError(f"config.train.init_from={path}: {e}") from e
  diffs = [f"{k} {got[k]} (config.model.{k} = {model[k]})" for k in _DIT_FIELDS
           if got[k] != model[k]]
  if tuple(got.patch_size) != tuple(model.patch_size):
    diffs.append(f"patch_size {tuple(got.patch_size)} (config.model.patch_size = "
                 f"{tuple(model.patch_size)})")
  if diffs:
    raise PretrainedError(f"config.train.init_from={folder} is another model: it has "
                          + ", ".join(diffs) + ". Fix: set config.model to the checkpoint's "
                          "architecture (its config.json), or change init_from.")
  params.pop("text_encoder", None)
  if model.text_encoder == "bytes":
    te = _sibling(folder, path, "text_encoder")
    hf = load_config(te) if te else None
    if hf is not None and hf.get("_class_name") == export.TEXT_ENCODER_CLASS:
      want = {"width": model.text_encoder_width, "out_dim": model.text_dim,
              "num_layers": model.text_encoder_layers}
      if text_len is not None:
        want["max_len"] = text_len
      bad = [f"{k} {hf.get(k)} (config.model: {v})" for k, v in want.items() if hf.get(k) != v]
      if bad:
        raise PretrainedError(f"{te} is a byte text encoder with " + ", ".join(bad)
                              + ". Fix: set config.model.text_encoder_width / "
                              "text_encoder_layers (and data.text_len for max_len) to match it.")
      params["text_encoder"] = export.own_params(LazyStateDict(te))
  return params


def vae_folder(path: str) -> str:
  return _folder(path, "vae", "AutoencoderKLWan", "vae.init_from")


def latent_stats_of(hf: dict | None, source: str) -> dict | None:
  """The per-channel latent statistics a diffusers AutoencoderKLWan config carries
  (latents_mean / latents_std: Wan's normalisation constants), or None."""
  if not hf or hf.get("latents_mean") is None:
    return None
  return {"mean": [float(x) for x in hf["latents_mean"]],
          "std": [float(x) for x in hf["latents_std"]], "source": os.path.abspath(source)}


def vae_params(path: str, cfg: VAEConfig) -> tuple[dict, dict | None]:
  """(params, latent stats {"mean", "std"} or None) of the diffusers AutoencoderKLWan folder
  (or pipeline root) `path`, or of `relic import-wan-vae`'s output, checked against `cfg`."""
  if not is_diffusers(path):
    return _imported_vae(path, cfg)
  folder = vae_folder(path)
  hf = load_config(folder)
  try:
    got, params = import_wan_vae(LazyStateDict(folder), hf, dtype=cfg.dtype,
                                 param_dtype="float32")
  except WanImportError as e:
    raise PretrainedError(f"config.vae.init_from={path}: {e}") from e
  fields = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample",
            "decoder_base_dim")
  diffs = [f"{k} {getattr(got, k)} (config: {getattr(cfg, k)})" for k in fields
           if getattr(got, k) != getattr(cfg, k)]
  if diffs:
    raise PretrainedError(f"config.vae.init_from={folder} is another VAE: it has "
                          + ", ".join(diffs) + ". Fix: set config.vae (and data.spatial_stride) "
                          "to its architecture, or change init_from.")
  return params, latent_stats_of(hf, folder)


def _imported_vae(path: str, cfg: VAEConfig) -> tuple[dict, dict | None]:
  """(params, latent stats) of `relic import-wan-vae`'s output (weights.store), restored for
  cfg's architecture (CheckpointError naming the differences otherwise)."""
  want = jax.eval_shape(functools.partial(vae_lib.init_params, cfg), jax.random.key(0))
  params = load_params(path, want, ckpt_lib.describe_model(dataclasses.asdict(cfg), want))
  with open(os.path.join(path, "meta.json")) as f:
    stats = json.load(f).get("latent_stats")
  return jax.tree.map(np.asarray, params), stats


def tiny_decoder_params(path: str, cfg: TinyDecoderConfig) -> dict | None:
  """The tiny decoder beside a pretrained VAE (root/tiny_decoder), or None if there is none
(an imported Wan VAE has none)."""
  if not is_diffusers(path):
    return None
  folder = vae_folder(path)
  tiny = _sibling(folder, path, "tiny_decoder")
  hf = load_config(tiny) if tiny else None
  if hf is None or hf.get("_class_name") != export.TINY_DECODER_CLASS:
    return None
  want = dataclasses.asdict(cfg)
  bad = [f"{k} {hf.get(k)} (config: {v})" for k, v in want.items() if hf.get(k) != v]
  if bad:
    raise PretrainedError(f"{tiny} is a tiny decoder with " + ", ".join(bad) + ". Fix: set "
                          "config.vae.tiny_dim to match it.")
  return export.own_params(LazyStateDict(tiny))


def check_tree(params, abstract, what: str) -> None:
  """PretrainedError unless params has abstract's structure and shapes."""
  a = {jax.tree_util.keystr(p): tuple(x.shape)
       for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  b = {jax.tree_util.keystr(p): tuple(np.shape(x))
       for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
      raise PretrainedError(f"{what}: param {k} is {b.get(k)} in the pretrained weights but "
                            f"{a.get(k)} in the model. Fix: match the config to the weights.")
