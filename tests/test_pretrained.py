"""Pretrained weights through diffusers folders (relic_jax/weights/pretrained.py): a VAE, its
tiny decoder and a base DiT exported in Wan's layout initialise `relic train_vae` (used as is:
evaluated, not trained; its latent statistics normalise the cache) and the teacher (RELIC's
action and pose additions start at zero, the byte text encoder comes along); a folder of
another architecture is refused by name."""

import json
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from relic_jax.inference import loading
from relic_jax.models import tiny_decoder as tiny_lib
from relic_jax.models import vae as vae_lib
from relic_jax.models.tiny_decoder import TinyDecoderConfig
from relic_jax.models.vae import VAEConfig
from relic_jax.stages import dit_config
from relic_jax.training import trainer, vae_train
from relic_jax.training.teacher import TeacherTask
from relic_jax.weights import export as ex
from relic_jax.weights import pretrained
from tests.test_vae_train import micro_config, micro_workdir


def _bf16(tree):
  return jax.tree.map(lambda x: np.asarray(np.asarray(x, np.float32).astype(jax.numpy.bfloat16),
                                           np.float32), tree)


def _base_dit_config(cfg):
  """The base model's config: the latents' DiT without actions or poses."""
  base = dit_config(cfg)
  base.model.action_dim = base.model.pose_dim = 0
  return base


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """A pipeline root as `relic export-assets` writes it, of random models (bf16)."""
  root = tmp_path_factory.mktemp("assets")
  cfg = micro_config()
  vae = VAEConfig.from_config(cfg.vae, cfg.data.spatial_stride)
  vp = vae_lib.init_params(vae, jax.random.key(1))
  stats = (np.linspace(-0.5, 0.5, vae.z_dim), np.linspace(0.5, 1.5, vae.z_dim))
  ex.export_vae(str(root / "vae"), vae, vp, *stats)
  tiny = TinyDecoderConfig.from_config(cfg.vae)
  tp = tiny_lib.init_params(tiny, jax.random.key(2))
  ex.export_tiny_decoder(str(root / "tiny_decoder"), tiny, tp)
  base = _base_dit_config(cfg)
  dp = nn.meta.unbox(TeacherTask(base).init_params(jax.random.key(3)))
  dp = jax.tree.map(lambda x: np.asarray(x) + 0.02, dp)  # proj_out and biases nonzero
  ex.export_transformer(str(root / "transformer"), base.model, dp)
  ex.export_text_encoder(str(root / "text_encoder"), base.model, dp)
  return {"root": str(root), "vae": _bf16(vp), "tiny": _bf16(tp), "dit": _bf16(dp),
          "stats": stats}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return micro_workdir(tmp_path_factory, "pre")


def _assert_tree_equal(a, b):
  fa = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_vae_is_used_as_is_and_its_stats_normalise_the_cache(assets, workdir):
  cfg = micro_config()
  cfg.vae.init_from = assets["root"]
  final = vae_train.train_vae(cfg, workdir)
  assert final["trained"] is False and final["tiny"]["trained"] is False
  assert not os.path.exists(os.path.join(workdir, "vae", "metrics.jsonl"))  # no step trained
  _assert_tree_equal(loading.load_vae(cfg, workdir)[1], assets["vae"])
  _assert_tree_equal(loading.load_tiny_decoder(cfg, workdir)[1], assets["tiny"])
  assert np.isfinite(final["eval"]["heldout_psnr"])
  r = vae_train.encode_dataset(cfg, workdir, progress=False)
  np.testing.assert_allclose(r["latent_stats"]["mean"], assets["stats"][0], rtol=1e-6)
  np.testing.assert_allclose(r["latent_stats"]["std"], assets["stats"][1], rtol=1e-6)
  with open(os.path.join(workdir, "vae", "pretrained.json")) as f:
    assert json.load(f)["init_from"] == assets["root"]


def test_none_trains_from_scratch_for_vae_train_steps():
  cfg = micro_config(steps=7)
  for init in ("", "none"):
    cfg.vae.init_from = init
    run = vae_train.stage_config(cfg)
    assert run.train.init_from == "" and run.train.steps == 7
    assert not vae_train.used_as_is(cfg)


def test_teacher_starts_from_the_base_with_zero_additions(assets, tmp_path):
  cfg = dit_config(micro_config())  # actions 13, poses 12, byte captions
  cfg.train.init_from = assets["root"]
  stage = trainer.TaskStage(cfg, str(tmp_path), TeacherTask(cfg))
  params = jax.device_get(stage.init_state().params)
  base = assets["dit"]
  _assert_tree_equal(params["text_encoder"], base["text_encoder"])
  attn = params["blocks"]["self_attn"]
  _assert_tree_equal({k: attn[k] for k in base["blocks"]["self_attn"]},
                     base["blocks"]["self_attn"])
  assert not np.any(attn["pose_q"]["kernel"])  # RELIC's pose projections: zero
  np.testing.assert_array_equal(params["proj_out"]["kernel"], base["proj_out"]["kernel"])
  assert not np.any(params["blocks"]["action_proj"]["kernel"])  # zero: plain base at start
  assert np.any(params["action_encoder"]["fc1"]["kernel"])


def test_another_architecture_is_refused_by_name(assets, tmp_path):
  cfg = dit_config(micro_config())
  cfg.model.num_layers += 1
  cfg.train.init_from = os.path.join(assets["root"], "transformer")
  with pytest.raises(pretrained.PretrainedError, match="num_layers"):
    trainer.TaskStage(cfg, str(tmp_path), TeacherTask(cfg)).init_state()
  v = micro_config()
  v.vae.base_dim = 16
  v.vae.init_from = assets["root"]
  with pytest.raises(pretrained.PretrainedError, match="base_dim 8"):
    vae_train.train_vae(v, str(tmp_path))
  v.vae.init_from = "no/such/dir"
  with pytest.raises(pretrained.PretrainedError, match="does not exist"):
    vae_train.stage_config(v)
