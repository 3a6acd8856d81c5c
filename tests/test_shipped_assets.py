"""The base assets shipped in assets/demo (`make assets`, docs/assets.md): every file matches
its SHA-256, the folder stays small, the files load through the same import path as real Wan
weights, and they reproduce their recorded held-out figures on the check episode (rendered
again by ViZDoom on a map no asset trained on)."""

import os

import pytest

from relic_jax import assets as assets_lib
from relic_jax.config.base import parent_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "assets", "demo")
MAX_BYTES = 25 * 2**20  # the bound on what the repository carries


def demo_assets_config():
  # the experiments' own loader (how experiments/demo.py reads its parent)
  return parent_config(os.path.join(REPO, "experiments", "demo.py"), "demo_assets")


def test_shipped_assets_match_their_hashes_and_are_small():
  manifest = assets_lib.verify(ROOT)
  assert set(manifest["files"]) >= {
      "vae/diffusion_pytorch_model.safetensors", "vae/config.json",
      "transformer/diffusion_pytorch_model.safetensors", "transformer/config.json",
      "tiny_decoder/model.safetensors", "text_encoder/model.safetensors"}
  total = sum(f["bytes"] for f in manifest["files"].values())
  assert total <= MAX_BYTES, f"assets/demo holds {total / 2**20:.1f} MiB"
  # the figures docs/assets.md quotes are the manifest's, on maps no asset trained on: both
  # decoders above what a flat image of each frame's mean colour scores
  h = manifest["heldout"]
  assert h["episodes"] == len(manifest["produced_by"]["data"]["heldout_episodes"]) == 4, h
  assert min(h["vae_psnr"], h["tiny_psnr"]) > h["flat_colour_psnr"], h


def test_shipped_assets_reproduce_their_recorded_figures():
  r = assets_lib.check_shipped(demo_assets_config(), ROOT)
  for k in ("vae_psnr", "vae_ssim", "tiny_psnr", "dit_fm_loss"):
    assert r["now"][k] == pytest.approx(r["recorded"][k], rel=1e-4), k

def test_the_recorded_commit_is_relic_commit_where_set(monkeypatch):
  # an accelerator machine runs a copy of the working tree whose .git may be stale or absent
  monkeypatch.setenv("RELIC_COMMIT", "0123abcd")
  assert assets_lib._git_commit() == "0123abcd"
  monkeypatch.delenv("RELIC_COMMIT")
  assert assets_lib._git_commit() != "0123abcd"


def test_the_manifest_names_the_config_overrides():
  # the assets record how their config differed from the file (--config.* overrides)
  cfg = assets_lib.parent_config(os.path.join(REPO, "experiments", "demo_assets.py"),
                                 "demo_assets")
  assert assets_lib.config_overrides(cfg, "experiments/demo_assets.py") == {}
  cfg.vae.init_from = "assets/demo"
  cfg.train.batch_size = 64
  assert assets_lib.config_overrides(cfg, "experiments/demo_assets.py") == {
      "train.batch_size": 64, "vae.init_from": "assets/demo"}
