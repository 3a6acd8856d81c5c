"""The latent cache (tensorstore zarr): alignment, resume after interruption, invalidation."""

import numpy as np
import pytest

from data_pipeline import clips, generate, loader
from data_pipeline import latent_cache as lc
from data_pipeline.episode import DataError
from relic_jax.config.derive import cache_frames, cache_horizons
from tests.test_data import small_data_config


def pool_encoder(scale=1.0):
  """A stand-in VAE with the real strides: frame 0 alone, then 4-frame means; 8x8 pooling."""
  def encode(frames):
    f = frames.astype(np.float32) / 127.5 - 1.0
    b, n, h, w, _ = f.shape
    rest = f[:, 1:].reshape(b, (n - 1) // 4, 4, h, w, 3).mean(2)
    x = np.concatenate([f[:, :1], rest], 1).reshape(b, -1, h // 8, 8, w // 8, 8, 3).mean((3, 5))
    return scale * np.concatenate([x, -x, x * x], -1)[..., :8]
  return encode


def short_student(cfg):
  """cfg with the student's recipe cut to one block of 3 (ODE init and rollouts: 1 + 3 latent
  frames) and no teacher curriculum, so that the latent cache's longest horizon (the clips it
  encodes) stays 4 latent frames = 13 video frames, which the test dataset's 80-frame episodes
  hold whatever experiments/tiny.py's recipe is; memory.mode='window', since such a recipe
  never leaves the memory window; and the cache's clips cut every data.clip_stride frames, as
  the clip loader cuts them (data.cache_clip_stride 0), whatever tiny sets."""
  cfg.train.horizon_curriculum = ()
  cfg.data.cache_clip_stride = 0
  cfg.ode_init.blocks, cfg.ode_init.noisy_blocks = 1, 1
  cfg.distill.rollout_curriculum = ((1, 30),)
  cfg.memory.mode = "window"
  return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  cfg = short_student(small_data_config())
  out = str(tmp_path_factory.mktemp("lc") / "data")
  generate.generate(cfg, out, progress=False)
  return cfg, out


def test_cache_holds_every_clip_aligned(data, tmp_path):
  cfg, out = data
  cache = str(tmp_path / "cache")
  sizes = []

  def encode(frames):
    sizes.append(len(frames))
    return pool_encoder()(frames)
  r = lc.build(cfg, out, cache, encode, "vae-a", 8, batch_size=4, progress=False)
  # the last batch is padded to the batch size: one shape, one compile of a jitted encoder
  assert r["num_clips"] % 4 and set(sizes) == {4}
  # the longest horizon any stage reads: the student's clip of 1 + 3 latent frames (one
  # ODE-init block and one-block rollouts), longer than the teacher's 3
  assert cache_horizons(cfg) == [3, 4] and cache_frames(cfg) == 4
  src = clips.make_clip_source(cfg, out, latent_frames=4, stride=cfg.data.clip_stride)
  assert r["num_clips"] == len(src) and r["encoded_now"] == len(src) and not r["rebuilt"]
  cached = lc.LatentCacheSource(cache)
  assert (cached.meta["clip"]["latent_frames"], cached.meta["clip"]["horizons"]) == (4, [3, 4])
  every = np.stack([cached[i]["latents"] for i in range(len(cached))]).reshape(-1, 8)
  stats = cached.meta["latent_stats"]  # every clip (fewer than 256): exact
  np.testing.assert_allclose(stats["mean"], every.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["std"], every.std(0), rtol=1e-4, atol=1e-6)
  augment = clips.ClipAugment(32, 32, cfg.data.palindrome_prob, "center", turn_frames=(9, 13),
                              camera_dtype=np.float64)
  for i in (0, len(src) // 2, len(src) - 1):
    want = augment(src[i], np.random.default_rng([cfg.seed, i]))
    got = cached[i]
    assert got["latents"].shape == (4, 4, 4, 8)  # 13 frames -> 1 + 3 latent frames
    np.testing.assert_allclose(got["latents"], pool_encoder()(want["frames"][None])[0],
                               rtol=1e-6)
    for k in ("actions", "poses", "camera", "action_scale", "text_tokens"):
      np.testing.assert_array_equal(got[k], want[k])
    assert got["camera"].dtype == np.float64 and got["action_scale"] > 0
    assert got["clip"].tolist() == [want["episode"], want["start"], want["turn"]]


def test_interrupted_build_resumes_without_redoing_clips(data, tmp_path):
  cfg, out = data
  cache = str(tmp_path / "cache")
  first = lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, batch_size=2, progress=False,
                   stop_after=2)
  assert first["encoded_now"] == 4
  with pytest.raises(DataError, match=r"incomplete \(4 of .* clips encoded\)"):
    lc.LatentCacheSource(cache)
  calls = []

  def counting(frames):
    calls.append(len(frames))
    return pool_encoder()(frames)
  second = lc.build(cfg, out, cache, counting, "vae-a", 8, batch_size=2, progress=False)
  assert second["skipped"] == 4 and sum(calls) == second["num_clips"] - 4
  assert len(lc.LatentCacheSource(cache)) == second["num_clips"]


def test_a_changed_vae_is_detected_and_rebuilt(data, tmp_path):
  cfg, out = data
  cache = str(tmp_path / "cache")
  lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, progress=False)
  before = lc.LatentCacheSource(cache)[0]["latents"]
  stale = lc.cache_description(cfg, out, "vae-b")
  with pytest.raises(DataError, match=r"stale: the VAE checkpoint changed \(vae-a -> vae-b\)"):
    lc.LatentCacheSource(cache, expected=stale)
  r = lc.build(cfg, out, cache, pool_encoder(2.0), "vae-b", 8, progress=False)
  assert r["rebuilt"] == "the VAE checkpoint changed (vae-a -> vae-b)"
  assert r["encoded_now"] == r["num_clips"]
  np.testing.assert_allclose(lc.LatentCacheSource(cache, expected=stale)[0]["latents"],
                             2.0 * before, rtol=1e-6)
  # another clip definition is detected too
  other = cfg.copy_and_resolve_references()
  other.data.clip_stride = 16
  r = lc.build(other, out, cache, pool_encoder(2.0), "vae-b", 8, progress=False)
  assert r["rebuilt"].startswith("the clip changed")


def test_wrong_latent_shape_is_named(data, tmp_path):
  cfg, out = data
  with pytest.raises(DataError, match="expected .* Fix: use a VAE whose stride matches"):
    lc.build(cfg, out, str(tmp_path / "c"), lambda f: np.zeros((len(f), 2, 2, 2, 8)), "v", 8,
             progress=False)


def latent_teacher_config(cfg, steps):
  """The tiny DiT on the cache of `pool_encoder` (8 channels), with RELIC's conditioning."""
  c = cfg.copy_and_resolve_references()
  c.data.source = "latents"
  c.model.update({"in_channels": 8, "out_channels": 8, "text_encoder": "bytes",
                  "text_encoder_width": 32, "text_encoder_layers": 1,
                  "action_dim": 13, "pose_dim": 12})
  c.data.text_len = cfg.data.text_len
  c.train.update({"steps": steps, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2,
                  "checkpoint_every": steps, "log_every": 1, "progress_bar": False})
  return c


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_teacher_trains_on_the_latent_cache(data, tmp_path):
  """`relic train_teacher` with data.source='latents': normalised latents, caption tokens
  through the built-in text encoder, actions and poses into the DiT; the loss falls and the
  zero-initialised action/pose projections move (the conditioning reaches the loss)."""
  import json

  import jax

  from relic_jax import stages
  from relic_jax.inference.loading import load_dit_params
  cfg, out = data
  cache = str(tmp_path / "latents")
  lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, progress=False)
  c = latent_teacher_config(cfg, steps=40)
  stages.train_teacher(c, str(tmp_path))  # the cache is <workdir>/latents
  teacher = tmp_path / "teacher"
  losses = [json.loads(line)["loss"] for line in (teacher / "metrics.jsonl").open()
            if "loss" in json.loads(line)]
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
  stats = json.loads((teacher / "latent_stats.json").read_text())
  assert stats == lc.LatentCacheSource(cache).meta["latent_stats"]
  # the source hands the trainer normalised latents: ~zero mean, unit std per channel over
  # the whole cached clips (the stats' own sample; the teacher reads 3-frame prefixes of them)
  whole = c.copy_and_resolve_references()
  whole.data.latent_frames = cache_frames(c)
  src = loader.make_source(whole, cache)
  z = np.stack([src[i]["latents"] for i in range(len(src))]).reshape(-1, 8)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
  src = loader.make_source(c, cache)
  assert src[0]["text"].dtype == np.int32 and src[0]["actions"].shape == (9, 13)
  params = jax.device_get(load_dit_params(c, str(teacher)))
  blocks = params["blocks"]
  moved = {name: float(np.abs(node["kernel"]).max()) for name, node in
           (("action_proj", blocks["action_proj"]), ("pose_q", blocks["self_attn"]["pose_q"]),
            ("pose_k", blocks["self_attn"]["pose_k"]))}
  assert all(v > 1e-4 for v in moved.values()), moved
  assert "text_encoder" in params


def test_latent_source_errors_are_clear(data, tmp_path):
  from relic_jax.config.validation import ConfigError, validate
  cfg, out = data
  c = latent_teacher_config(cfg, steps=1)
  with pytest.raises(DataError, match=r"no latent cache at .*Fix: run `relic encode` first"):
    loader.make_source(c, str(tmp_path / "none"))
  cache = str(tmp_path / "latents")
  lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, progress=False)
  other = c.copy_and_resolve_references()
  other.data.latent_frames = 5
  with pytest.raises(DataError, match=r"holds clips of 4 latent frames \(horizons \[3, 4\]\), "
                                      r"but 5 are asked for .*Fix: re-run `relic encode` with "
                                      r"the config whose horizons include 5"):
    loader.make_source(other, cache)
  other = c.copy_and_resolve_references()
  other.model.in_channels = other.model.out_channels = 16
  with pytest.raises(DataError, match=r"has 8 latent channels, but model.in_channels=16"):
    loader.make_source(other, cache)
  other = c.copy_and_resolve_references()
  other.model.text_encoder = "none"
  with pytest.raises(ConfigError, match=r"config.model.text_encoder='none'.*set "
                                        r"model.text_encoder='bytes'"):
    validate(other)
  other = c.copy_and_resolve_references()
  other.model.action_dim = 7
  with pytest.raises(ConfigError, match=r"config.model.action_dim=7.*13-d actions"):
    validate(other)


def fake_text_encoder(length, dim=6):
  """A stand-in text encoder: each caption's embedding is a fixed random function of it,
  zero past its word count + 1 (as umT5's padding)."""
  def encode(captions):
    out = np.zeros((len(captions), length, dim), np.float32)
    for i, c in enumerate(captions):
      n = min(len(c.split()) + 1, length)
      out[i, :n] = np.random.default_rng(list(c.encode()) or [0]).normal(size=(n, dim))
    return out
  return encode


def test_captions_are_cached_once_each_with_the_empty_caption_first(data, tmp_path):
  """With a text encoder, each distinct caption is encoded once (row 0: the empty caption,
  the null text) and every clip points at its episode's row; the table survives an
  interrupted build, another encoder rebuilds the cache, and the loader serves the embedding
  as "text" with the null text beside it."""
  from data_pipeline import shards
  import ml_dtypes
  bytes_cfg, out = data
  cfg = bytes_cfg.copy_and_resolve_references()
  cfg.model.text_dim = 6
  cache = str(tmp_path / "cache")
  length = cfg.data.text_len
  encode, seen = fake_text_encoder(length), []

  def text_fn(captions):
    seen.append(list(captions))
    return encode(captions)
  first = lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, batch_size=2, progress=False,
                   stop_after=1, text_fn=text_fn, text_fingerprint="fake-1")
  lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, batch_size=2, progress=False,
           text_fn=text_fn, text_fingerprint="fake-1")
  episode_captions = [e["caption"] for _, e in shards.episode_entries(shards.read_manifest(out))]
  assert first["encoded_now"] == 2 and seen == [[""] + sorted(set(episode_captions))]
  src = lc.LatentCacheSource(cache)
  assert src.meta["text"] == "fake-1"
  bf16 = lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
  np.testing.assert_array_equal(src.null_text(), bf16(encode([""])[0]))
  for i in range(len(src)):
    caption = episode_captions[int(src[i]["clip"][0])]
    np.testing.assert_array_equal(src[i]["text_embedding"], bf16(encode([caption])[0]))
  # the DiT's examples: the caption's embedding as "text", the empty caption's as "null_text"
  c = latent_teacher_config(cfg, steps=1)
  c.model.text_encoder, c.model.text_dim = "umt5", 6
  example = loader.make_source(c, cache)[0]
  assert example["text"].shape == (length, 6) and example["text"].dtype == np.float32
  np.testing.assert_array_equal(example["null_text"], src.null_text())
  c.model.text_dim = 4096
  with pytest.raises(DataError, match=r"holds 6-d text embeddings, but model.text_dim=4096"):
    loader.make_source(c, cache)
  # another text encoder rebuilds the cache
  r = lc.build(cfg, out, cache, pool_encoder(), "vae-a", 8, progress=False,
               text_fn=fake_text_encoder(length, dim=6), text_fingerprint="fake-2")
  assert r["rebuilt"] == "the text encoder changed (fake-1 -> fake-2)"
  # a cache of byte captions cannot serve umT5 text
  lc.build(bytes_cfg, out, cache, pool_encoder(), "vae-a", 8, progress=False)
  c.model.text_dim = 6
  with pytest.raises(DataError, match=r"holds byte captions only. Fix: re-run `relic encode`"):
    loader.make_source(c, cache)
  with pytest.raises(DataError, match=r"6-d, but config.model.text_dim=32"):
    lc.build(bytes_cfg, out, str(tmp_path / "c2"), pool_encoder(), "vae-a", 8, progress=False,
             text_fn=encode, text_fingerprint="fake-1")
