"""Export in Wan's diffusers layout (relic_jax/weights/export.py): our params written out and
imported back are the same params, and diffusers itself loads the written folders
(`from_pretrained`) and computes what our models compute, so exported assets travel the
real-weights import path."""

import json

import diffusers  # test-only dependency (`pip install -e ".[test]"`)
import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.torch import load_file

from relic_jax.config import get_base_config
from relic_jax.models import vae as vae_lib
from relic_jax.models.vae import VAEConfig
from relic_jax.training.teacher import TeacherTask
from relic_jax.weights import (LazyStateDict, import_wan_transformer, import_wan_vae,
                               load_config, wan_forward, wan_vae_decode, wan_vae_encode)
from relic_jax.weights import export as ex
from relic_jax.weights.safetensors_io import read_header

TOL = 1e-4


def _load(cls, d):
  """diffusers' model of the folder: its class built from config.json, the weights read by the
  safetensors library and loaded strictly (every name and shape must match). (from_pretrained
  itself needs `accelerate` for Wan's fp32-kept modules.)"""
  model = cls.from_config(cls.load_config(str(d)))
  model.load_state_dict(load_file(str(d / ex.WEIGHTS)), strict=True)
  return model.eval()


def _noisy(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(
      np.float32), tree)


def _dit_config():
  c = get_base_config()
  c.model.dim, c.model.ffn_dim, c.model.num_heads, c.model.num_layers = 48, 80, 3, 2
  c.model.text_dim = 24
  c.data.latent_frames, c.data.latent_height, c.data.latent_width = 3, 6, 4
  return c


@pytest.mark.parametrize("scan", [True, False])
def test_transformer_round_trip_and_diffusers_parity(tmp_path, scan):
  c = _dit_config()
  c.model.scan_layers = scan
  params = _noisy(nn.meta.unbox(TeacherTask(c).init_params(jax.random.key(0))), 1)
  ex.export_transformer(str(tmp_path), c.model, params, dtype="float32")
  hf = load_config(str(tmp_path))
  assert hf["_class_name"] == "WanTransformer3DModel" and hf["num_layers"] == 2
  _, back = import_wan_transformer(LazyStateDict(str(tmp_path)), hf, scan_layers=scan)
  flat = dict(jax.tree_util.tree_flatten_with_path(back)[0])
  for path, v in jax.tree_util.tree_flatten_with_path(params)[0]:
    np.testing.assert_array_equal(np.asarray(v), np.asarray(flat[path]))
  model = _load(diffusers.WanTransformer3DModel, tmp_path)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 16, 3, 6, 4)).astype(np.float32)
  t = np.array([100.0, 700.0], np.float32)
  txt = rng.standard_normal((2, 5, 24)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(txt)).sample.numpy()
  ours = np.asarray(wan_forward(c, back, x, t, txt))
  assert float(np.std(ref)) > 0.01
  assert float(np.max(np.abs(ours - ref))) <= TOL


def test_bf16_export_halves_the_bytes(tmp_path):
  c = _dit_config()
  params = nn.meta.unbox(TeacherTask(c).init_params(jax.random.key(0)))
  ex.export_transformer(str(tmp_path / "f32"), c.model, params, dtype="float32")
  ex.export_transformer(str(tmp_path / "bf16"), c.model, params)
  head = read_header(str(tmp_path / "bf16" / ex.WEIGHTS))
  assert {v["dtype"] for v in head.values()} == {"BF16"}
  size = lambda d: (tmp_path / d / ex.WEIGHTS).stat().st_size  # noqa: E731
  assert size("bf16") < 0.55 * size("f32")


def test_model_with_actions_is_refused(tmp_path):
  c = _dit_config()
  c.model.action_dim = 13
  params = nn.meta.unbox(TeacherTask(c).init_params(jax.random.key(0)))
  with pytest.raises(ex.ExportError, match="action_encoder.*RELIC addition"):
    ex.export_transformer(str(tmp_path), c.model, params)


def test_vae_round_trip_and_diffusers_parity(tmp_path):
  # the demo's strides (4 x 4 x 4: 3 stages, both downsamplings temporal); Wan's own layout is
  # covered by the import parity tests (tests/test_vae.py)
  cfg = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 4), num_res_blocks=1,
                  temporal_downsample=(True, True))
  params = _noisy(vae_lib.init_params(cfg, jax.random.key(0)), 3)
  mean, std = np.linspace(-1, 1, 4), np.linspace(0.5, 2, 4)
  ex.export_vae(str(tmp_path), cfg, params, mean, std, dtype="float32")
  hf = load_config(str(tmp_path))
  assert hf["latents_mean"] == pytest.approx(list(mean)) and hf["z_dim"] == 4
  back_cfg, back = import_wan_vae(LazyStateDict(str(tmp_path)), hf)
  assert back_cfg == cfg
  flat = dict(jax.tree_util.tree_flatten_with_path(back)[0])
  for path, v in jax.tree_util.tree_flatten_with_path(params)[0]:
    np.testing.assert_array_equal(np.asarray(v), np.asarray(flat[path]))
  model = _load(diffusers.AutoencoderKLWan, tmp_path)
  s = cfg.spatial_stride
  x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 5, 2 * s, 3 * s)).astype(np.float32)
  with torch.no_grad():
    ref_z = model.encode(torch.from_numpy(x)).latent_dist.mean
    ref_x = model.decode(ref_z).sample.numpy()
  ours_z = np.asarray(wan_vae_encode(cfg, back, x))
  assert float(np.max(np.abs(ours_z - ref_z.numpy()))) <= TOL
  ours_x = np.asarray(wan_vae_decode(cfg, back, ref_z.numpy()))
  assert float(np.max(np.abs(ours_x - ref_x))) <= TOL


def test_own_modules_round_trip(tmp_path):
  tree = {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.arange(4, dtype=np.float32)}
  ex.write_model_dir(str(tmp_path), {"_class_name": "X"}, ex.own_state_dict(tree, "float32"),
                     ex.OWN_WEIGHTS)
  back = ex.own_params(LazyStateDict(str(tmp_path)))
  np.testing.assert_array_equal(back["a"]["kernel"], tree["a"]["kernel"])
  np.testing.assert_array_equal(back["b"], tree["b"])
  assert json.loads((tmp_path / "config.json").read_text()) == {"_class_name": "X"}
