"""The demo's pretrained assets (relic_jax/assets.py): `relic export-assets` writes a micro
asset run as a verifiable diffusers pipeline folder whose check figures are reproduced from the
files alone (the check episode re-rendered by ViZDoom); an altered file is named."""

import os

import numpy as np
import pytest

from data_pipeline import generate
from relic_jax import assets as assets_lib
from relic_jax import stages
from tests.test_vae_train import micro_config

# a micro asset run (data, VAE, cache, teacher, export): ~3 min on 2 cores
pytestmark = pytest.mark.slow


def micro_assets_config():
  cfg = micro_config(steps=2)
  g = cfg.data.gen
  g.heldout_maps, g.heldout_map_episodes = ("freedoom2/MAP05",), 1
  cfg.data.heldout_episodes = 1
  cfg.vae.tiny_steps = 2
  cfg.data.source, cfg.model.text_encoder = "latents", "bytes"
  cfg.model.action_dim = cfg.model.pose_dim = 0
  cfg.data.latent_frames = 4
  cfg.model.in_channels = cfg.model.out_channels = cfg.vae.z_dim
  cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 2, 2, 1
  cfg.train.batch_size = 8  # the test mesh has 8 devices
  return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("asset_run"))
  cfg = micro_assets_config()
  generate.generate(cfg, os.path.join(work, "data"), progress=False)
  for stage in ("train_vae", "encode", "train_teacher"):
    stages.REGISTRY[stage].body(cfg, work)
  out = os.path.join(work, "assets")
  manifest = assets_lib.export_assets(cfg, work, out, clips_per_episode=2)
  return cfg, work, out, manifest


def test_export_writes_hashes_and_figures_the_files_reproduce(exported):
  cfg, work, out, manifest = exported
  assert sorted(os.listdir(out)) == sorted(assets_lib.FOLDERS + (assets_lib.MANIFEST,))
  assert assets_lib.verify(out)["files"] == manifest["files"]
  h = manifest["heldout"]
  assert h["episodes"] == 1 and h["clips"] == 2 and np.isfinite(h["dit_fm_loss"])
  assert manifest["produced_by"]["data"]["heldout_episodes"] == [manifest["check"]["episode"]]
  assert "freedoom2-MAP05" in manifest["check"]["episode"]
  r = assets_lib.check_shipped(cfg, out)  # ViZDoom renders the check episode again
  for k in ("vae_psnr", "vae_ssim", "tiny_psnr", "dit_fm_loss"):
    assert r["now"][k] == pytest.approx(r["recorded"][k], rel=1e-5), k


def test_rendered_check_episode_is_the_stored_one(exported):
  cfg, work, _, _ = exported
  frames, caption = assets_lib.render_check_episode(cfg)
  stored = assets_lib._heldout_episodes(cfg, os.path.join(work, "data"))
  assert len(stored) == 1
  np.testing.assert_array_equal(frames, stored[0][1])
  assert caption == stored[0][2]


def test_an_altered_or_extra_file_is_named(exported, tmp_path):
  import shutil
  _, _, out, _ = exported
  copy = str(tmp_path / "assets")
  shutil.copytree(out, copy)
  path = os.path.join(copy, "transformer", "diffusion_pytorch_model.safetensors")
  with open(path, "r+b") as f:
    f.seek(-1, 2)
    b = f.read(1)
    f.seek(-1, 2)
    f.write(bytes([b[0] ^ 1]))
  with pytest.raises(assets_lib.AssetsError, match="transformer/diffusion_pytorch_model"):
    assets_lib.verify(copy)
  shutil.rmtree(copy)
  shutil.copytree(out, copy)
  open(os.path.join(copy, "vae", "extra.bin"), "w").close()
  with pytest.raises(assets_lib.AssetsError, match="extra.bin is not in"):
    assets_lib.verify(copy)


def test_an_unfinished_teacher_is_not_exported(exported, tmp_path):
  # a run cut during the teacher's last phase keeps a checkpoint of it: exporting that would
  # ship params of a schedule stopped midway under the run's name
  cfg, work, _, _ = exported
  longer = cfg.copy_and_resolve_references()
  longer.train.steps = cfg.train.steps + 2
  with pytest.raises(assets_lib.AssetsError, match=r"stopped at step 2 of 4.*Fix: finish it"):
    assets_lib.export_assets(longer, work, str(tmp_path / "assets"), clips_per_episode=2)
  assert not os.path.exists(tmp_path / "assets")
