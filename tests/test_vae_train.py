"""The VAE stage: training lowers reconstruction error, resume equals uninterrupted, evaluation
writes PSNR/SSIM and a video; `relic encode` fills the latent cache, resumes, and notices a
changed VAE; `relic import-wan-vae` writes params train_vae can start from."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from data_pipeline import generate
from data_pipeline import latent_cache as lc
from data_pipeline.loader import make_clip_iterator
from relic_jax.config.derive import cache_frames, cache_horizons
from relic_jax.inference import loading
from relic_jax.models.vae import VAEConfig
from relic_jax.training import vae_train
from relic_jax.training.trainer import train
from tests.helpers import run_cli
from tests.test_data import small_data_config
from tests.test_latent_cache import short_student


def micro_config(steps=12):
  # 3 episodes of 80 frames at 48x48; clips of 9 frames at 32x32; a one-block student, so the
  # latent cache's clips (its longest horizon) fit in the episodes
  cfg = short_student(small_data_config())
  cfg.data.latent_frames = 2  # 5-frame clips: 1 + 1 latent frames
  v = cfg.vae
  v.base_dim, v.dim_mult, v.num_res_blocks, v.z_dim = 8, (1, 2, 2, 2), 1, 4
  v.eval_clips = 2
  v.tiny_dim, v.tiny_steps = 16, 20
  v.train.update({"steps": steps, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2,
                  "checkpoint_every": 15, "log_every": 1, "keep_checkpoints": 5,
                  "schedule": "constant"})
  cfg.train.progress_bar = False
  cfg.train.async_checkpointing = False
  return cfg


def micro_workdir(tmp_path_factory, name: str) -> str:
  """A new workdir holding micro_config's dataset."""
  work = str(tmp_path_factory.mktemp(name))
  generate.generate(micro_config(), os.path.join(work, "data"), progress=False)
  return work


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return micro_workdir(tmp_path_factory, "vae")


def _params(cfg, work):
  return loading.load_vae(cfg, work)[1]


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_training_lowers_the_error_and_resume_equals_uninterrupted(workdir, tmp_path):
  cfg = micro_config(steps=30)
  final = vae_train.train_vae(cfg, workdir)
  with open(os.path.join(workdir, "vae", "metrics.jsonl")) as f:
    l1 = [json.loads(line)["l1"] for line in f]
  assert len(l1) == 30
  assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:5]), l1
  ev = final["eval"]
  # evaluated on the latent cache's clips (its longest horizon), not the 5-frame training clips
  assert ev["clip_frames"] == 1 + 4 * (cache_frames(cfg) - 1) == 13
  assert ev["clips"] == 2 and ev["frames"] == 26 and 5.0 < ev["heldout_psnr"] < 60.0
  assert -1.0 <= ev["heldout_ssim"] <= 1.0 and os.path.getsize(ev["video"]) > 0
  with open(os.path.join(workdir, "vae", "eval.json")) as f:
    assert json.load(f)["heldout_psnr"] == ev["heldout_psnr"]
  # the tiny decoder, trained after the VAE on its latent means, learns too
  with open(os.path.join(workdir, "vae_tiny", "metrics.jsonl")) as f:
    tiny_l1 = [json.loads(line)["l1"] for line in f]
  assert len(tiny_l1) == 20 and np.mean(tiny_l1[-3:]) < 0.8 * np.mean(tiny_l1[:3]), tiny_l1
  assert 5.0 < ev["tiny_decoder_psnr"] < 60.0
  # resume: a copy of the run as it was at its step-15 checkpoint (what a kill leaves) trains
  # on to 30 and ends with the uninterrupted run's params
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(workdir, "vae"), os.path.join(resumed, "vae"))
  shutil.rmtree(os.path.join(resumed, "vae", "checkpoints", "30"))
  run_cfg = vae_train.stage_config(cfg)
  train(run_cfg, vae_train.stage_workdir(resumed), vae_train.VAETask(run_cfg),
        vae_train.FramesOnly(make_clip_iterator(run_cfg, os.path.join(workdir, "data"))))
  for x, y in zip(jax.tree.leaves(_params(cfg, resumed)), jax.tree.leaves(_params(cfg, workdir))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_encode_fills_the_cache_resumes_and_notices_a_new_vae(workdir):
  cfg = micro_config(steps=30)
  if not os.path.exists(os.path.join(workdir, "vae", "checkpoints")):
    vae_train.train_vae(cfg, workdir)
  cfg.data.encode_batch_size = 2
  first = vae_train.encode_dataset(cfg, workdir, progress=False, stop_after=1)
  assert first["encoded_now"] == 2 and not first["rebuilt"]  # one batch of 2 clips
  rest = vae_train.encode_dataset(cfg, workdir, progress=False)
  assert rest["skipped"] == 2 and rest["encoded_now"] == rest["num_clips"] - 2
  cache = lc.LatentCacheSource(os.path.join(workdir, "latents"))
  clip = cache[0]
  # clips of the longest horizon a stage reads (the student's 1 + 3 latent frames), not of
  # data.latent_frames = 2; the teacher reads their 2-frame prefixes
  t = cache_frames(cfg)
  assert cache_horizons(cfg) == [2, 4] and clip["latents"].shape == (t, 4, 4, 4)
  # the cached latent is the VAE's mean of that clip
  params = _params(cfg, workdir)
  vae = VAEConfig.from_config(cfg.vae)
  from data_pipeline import loader
  src = loader.make_clip_source(cfg, os.path.join(workdir, "data"), latent_frames=t)
  frames = loader.ClipAugment(32, 32, cfg.data.palindrome_prob, "center", turn_frames=(5, 13))(
      src[0], np.random.default_rng([cfg.seed, 0]))["frames"]
  mean, _ = vae_train.reconstruct_fn(vae)(params, frames[None])
  np.testing.assert_allclose(clip["latents"], np.asarray(mean[0]), rtol=1e-5, atol=1e-6)
  # two more VAE steps: a new checkpoint, so the cache is rebuilt
  vae_train.train_vae(micro_config(steps=32), workdir)
  again = vae_train.encode_dataset(micro_config(steps=32), workdir, progress=False)
  assert again["rebuilt"].startswith("the VAE checkpoint changed")
  assert again["encoded_now"] == again["num_clips"]


def test_import_wan_vae_cli_writes_params_train_vae_can_start_from(tmp_path):
  import torch  # a test dependency (make test installs it)
  from diffusers import AutoencoderKLWan
  torch.manual_seed(0)
  model = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           attn_scales=[], temperal_downsample=[False, True, True])
  src, out = str(tmp_path / "wan_vae"), str(tmp_path / "imported")
  model.save_pretrained(src, safe_serialization=True)
  r = run_cli("import-wan-vae", "--config=experiments/tiny.py", f"--source={src}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert "imported the Wan VAE" in r.stdout
  cfg = micro_config()
  cfg.vae.init_from = out
  run_cfg = vae_train.stage_config(cfg)
  task = vae_train.VAETask(run_cfg)
  from relic_jax import checkpoint as ckpt_lib
  from relic_jax.weights.store import load_params
  abstract = jax.eval_shape(task.init_params, jax.random.key(0))
  params = load_params(out, abstract, ckpt_lib.describe_model(task.model_config, abstract))
  want = model.state_dict()["encoder.conv_in.weight"].numpy()  # [out, in, t, h, w]
  np.testing.assert_allclose(np.asarray(params["encoder"]["conv_in"]["kernel"]),
                             np.transpose(want, (2, 3, 4, 1, 0)), rtol=1e-6)
  bad = run_cli("import-wan-vae", "--config=experiments/tiny.py", f"--source={tmp_path}",
                f"--out={out}2")
  assert bad.returncode == 2 and "relic: error:" in bad.stderr


def test_tiny_decoder_streams_like_a_whole_clip():
  from relic_jax.models import tiny_decoder as tiny_lib
  cfg = tiny_lib.TinyDecoderConfig(z_dim=4, dim=16)
  params = tiny_lib.init_params(cfg, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (2, 4, 3, 5, 4))
  whole = tiny_lib.decode(params, cfg, z)
  assert whole.shape == (2, 13, 24, 40, 3)  # 1 + 4 * 3 frames, 8x the latent size
  parts = [tiny_lib.decode(params, cfg, z[:, :1])]
  for k in range(1, 4):  # one latent frame at a time, each with the one before
    parts.append(tiny_lib.decode(params, cfg, z[:, k:k + 1], prev=z[:, k - 1:k], first=False))
  np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-6)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_clip_curriculum_continues_from_the_previous_phase_on_longer_clips(tmp_path_factory):
  work = micro_workdir(tmp_path_factory, "vae_phases")
  cfg = micro_config(steps=6)
  cfg.vae.clip_curriculum = ((4, 2, 8),)  # two steps on 13-frame clips
  cfg.vae.tiny_steps = 2
  final = vae_train.train_vae(cfg, work)
  first, last = vae_train.phase_dirs(cfg, work)
  assert first == os.path.join(work, "vae", "clips_0_2f") and last == os.path.join(work, "vae")
  with open(os.path.join(last, "curriculum.json")) as f:
    assert json.load(f)["phases"] == [[2, 6, 8], [4, 2, 8]]
  with open(os.path.join(last, "config.json")) as f:
    run = json.load(f)
  assert run["data"]["latent_frames"] == 4 and run["train"]["steps"] == 2
  # phase 2 starts from phase 1's params: its two Adam steps (lr 0, then 1e-3 in the
  # warm-up) move no weight by more than ~1e-3, a third of how far phase 1's six steps moved
  # its weights from their init (a phase 2 from a fresh init would be as far)
  p1 = loading.load_vae(cfg, work, run_dir=first)[1]
  p2 = _params(cfg, work)
  fresh = vae_train.VAETask(vae_train.stage_config(cfg)).init_params(jax.random.key(cfg.seed))
  step = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  far = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(fresh)))
  assert 0 < step < 0.3 * far, (step, far)
  # the tiny decoder trains on the last phase's clips; the evaluation covers the latent
  # cache's clips (its longest horizon), not the 5-frame training clips
  with open(os.path.join(work, "vae_tiny", "config.json")) as f:
    assert json.load(f)["data"]["latent_frames"] == 4
  assert final["eval"]["clip_frames"] == 1 + 4 * (cache_frames(cfg) - 1)
  # a finished run is skipped phase by phase; another curriculum is refused, naming the fix
  again = vae_train.train_vae(cfg, work)
  assert again["step"] == 2
  cfg.vae.clip_curriculum = ((3, 1, 8),)
  with pytest.raises(vae_train.VAECurriculumError, match="clip_curriculum back to"):
    vae_train.train_vae(cfg, work)
  # training the last phase on (it may grow) changes the VAE: the tiny decoder trained on the
  # old one is moved aside and retrained on the new one's latents
  with open(os.path.join(work, "vae_tiny", "vae.json")) as f:
    assert json.load(f)["vae_fingerprint"] == vae_train.params_fingerprint(p2)
  cfg.vae.clip_curriculum = ((4, 3, 8),)
  vae_train.train_vae(cfg, work)
  p3 = _params(cfg, work)
  assert os.path.isdir(os.path.join(work, "vae_tiny.stale", "checkpoints"))
  with open(os.path.join(work, "vae_tiny", "vae.json")) as f:
    assert json.load(f)["vae_fingerprint"] == vae_train.params_fingerprint(p3)
  with open(os.path.join(work, "vae_tiny", "metrics.jsonl")) as f:
    assert len(f.readlines()) == 2  # retrained from scratch
