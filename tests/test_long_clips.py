"""Long clips in the latent cache, read in prefixes: the horizons the stages read, the VAE's
causality that makes a prefix of the latents the encoding of the prefix video, a prefix read
equal to a cache built at the shorter length, the time-reverse augmentation that survives
encoding once (triangle-wave palindromes drawn per horizon), and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import clips, generate, loader
from data_pipeline import latent_cache as lc
from data_pipeline.episode import DataError
from relic_jax.config.derive import cache_frames, cache_horizons, phase_config
from relic_jax.models import vae as vae_lib
from relic_jax.models.vae import VAEConfig
from tests.test_data import small_data_config
from tests.test_latent_cache import pool_encoder, short_student

# a VAE small enough to encode every clip of the test dataset in seconds (real strides 4x8x8)
VAE = VAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1, z_dim=4)


def _turns(order) -> int:
  """Direction changes of a frame order (0: forward, 1: RELIC's palindrome, >1: more)."""
  step = np.diff(np.asarray(order))
  return int(np.sum(step[1:] != step[:-1]))


def test_cache_horizons_cover_every_stage_and_survive_phase_configs():
  cfg = small_data_config()
  cfg.data.latent_frames = 4
  cfg.train.horizon_curriculum = ((5, 10), (9, 10))
  cfg.ode_init.blocks = 3               # 1 + 3 * 3 = 10 latent frames
  cfg.distill.rollout_curriculum = ((2, 5), (4, 5))  # 7 and 13
  assert cache_horizons(cfg) == [5, 7, 9, 10, 13] and cache_frames(cfg) == 13
  # data.latent_frames (4) is no horizon with a curriculum: phase_config rewrites it, and every
  # phase's config must find the cache as encode left it
  for i in range(2):
    assert cache_horizons(phase_config(cfg, i)) == cache_horizons(cfg)
  cfg.train.horizon_curriculum = ()
  assert cache_horizons(cfg) == [4, 7, 10, 13]


def test_palindrome_indices_is_a_triangle_wave_and_relic_s_palindrome_for_long_turns():
  for n in range(2, 30):
    for turn in range((n + 1) // 2, n):  # RELIC's t* ~ U[n/2, n): the old formula
      back = n - turn - 1
      old = np.concatenate([np.arange(turn + 1), np.arange(turn - 1, turn - 1 - back, -1)])
      np.testing.assert_array_equal(clips.palindrome_indices(n, turn), old)
  np.testing.assert_array_equal(clips.palindrome_indices(13, 3),
                                [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0])
  with pytest.raises(ValueError, match="turn must be >= 1"):
    clips.palindrome_indices(5, 0)


def test_cached_turns_make_every_horizon_a_forward_clip_or_a_palindrome():
  """Turns drawn for horizons of (5, 9, 13) latent frames on clips of 13: the turn is drawn
  for each horizon about equally often, a clip drawn for horizon h is RELIC's palindrome at h
  (one turn), a longer prefix of it turns more than once, and a shorter one plays forward;
  the single-horizon draw is the clip loader's, draw for draw."""
  frames = [clips.clip_frames(h) for h in (5, 9, 13)]  # 17, 33, 49 video frames
  aug = clips.ClipAugment(8, 8, palindrome_prob=0.5, crop="center", turn_frames=frames)
  draws = np.array([aug.draw_turn(49, np.random.default_rng([0, i])) for i in range(900)])
  turns = draws[draws >= 0]
  assert 0.45 < len(turns) / len(draws) < 0.55 and turns.min() >= 9 and turns.max() < 49
  for f in frames:
    mine = turns[(turns >= (f + 1) // 2) & (turns < f - 1)]  # t* = f - 1: still forward
    assert len(mine) > 0.2 * len(turns)
    assert {_turns(clips.palindrome_indices(49, int(t))[:f]) for t in mine} == {1}
  short = turns[(turns >= 9) & (turns < 17)]  # drawn for 17 frames
  assert min(_turns(clips.palindrome_indices(49, int(t))) for t in short) >= 2
  assert {_turns(clips.palindrome_indices(49, int(t))[:17]) for t in turns[turns >= 16]} == {0}
  # one horizon: the loader's draw (same generator calls), so the clip loader is unchanged
  one = clips.ClipAugment(8, 8, 0.5, "center", turn_frames=(17,))
  none = clips.ClipAugment(8, 8, 0.5, "center")
  assert ([one.draw_turn(17, np.random.default_rng(i)) for i in range(50)]
          == [none.draw_turn(17, np.random.default_rng(i)) for i in range(50)])


def _vae_encoder(unit=True):
  """The random-param VAE's latent mean of frames: uint8 (unit: mapped to [-1, 1]) or [-1, 1]."""
  params = vae_lib.init_params(VAE, jax.random.key(0))
  encode = jax.jit(lambda f: vae_lib.encode(params, VAE, vae_lib.to_unit(f) if unit else f)[0])
  return lambda frames: np.asarray(encode(jnp.asarray(frames)))


def test_the_vae_is_causal_a_prefix_of_the_latents_encodes_the_prefix_video():
  encode = _vae_encoder(unit=False)
  video = np.asarray(jax.random.uniform(jax.random.key(1), (2, 13, 16, 16, 3), minval=-1.0,
                                        maxval=1.0))
  whole = encode(video)
  assert whole.shape == (2, 4, 2, 2, 4)
  scale = np.abs(whole).max()
  for k in (1, 2):
    np.testing.assert_allclose(encode(video[:, :1 + 4 * k]), whole[:, :1 + k], rtol=1e-5,
                               atol=1e-5 * scale)
  # and the future does change the later latents (the check above could not pass by accident)
  other = video.copy()
  other[:, 9:] = -other[:, 9:]
  changed = encode(other)
  np.testing.assert_allclose(changed[:, :3], whole[:, :3], rtol=1e-5, atol=1e-5 * scale)
  assert np.abs(changed[:, 3:] - whole[:, 3:]).max() > 1e-3 * scale


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  cfg = small_data_config()
  out = str(tmp_path_factory.mktemp("long") / "data")
  generate.generate(cfg, out, progress=False)
  return cfg, out


def _config(cfg, horizon_curriculum, block_frames=3, palindrome_prob=0.0):
  c = short_student(cfg.copy_and_resolve_references())
  c.train.horizon_curriculum = horizon_curriculum
  c.model.block_frames = block_frames
  c.data.palindrome_prob = palindrome_prob
  c.data.normalize_latents = False
  c.data.source = "latents"
  c.model.in_channels = c.model.out_channels = VAE.z_dim
  return c


def test_a_prefix_read_equals_a_cache_built_at_the_shorter_length(dataset, tmp_path):
  cfg, out = dataset
  encode = _vae_encoder()
  # long: the teacher's curriculum reaches 6 latent frames (21 video frames)
  long_cfg = _config(cfg, ((3, 1), (6, 1)))
  assert cache_frames(long_cfg) == 6
  # short: 3 latent frames is the longest anything reads (one-frame student blocks)
  short_cfg = _config(cfg, (), block_frames=1)
  assert cache_horizons(short_cfg) == [2, 3]
  lc.build(long_cfg, out, str(tmp_path / "long"), encode, "v", 4, progress=False)
  lc.build(short_cfg, out, str(tmp_path / "short"), encode, "v", 4, progress=False)
  prefix = loader.CachedLatents(phase_config(long_cfg, 0), str(tmp_path / "long"))
  direct = loader.CachedLatents(short_cfg, str(tmp_path / "short"))
  whole = lc.LatentCacheSource(str(tmp_path / "long"))
  short_src = lc.LatentCacheSource(str(tmp_path / "short"))
  where = {tuple(short_src[j]["clip"][:2]): j for j in range(len(short_src))}
  assert len(prefix) < len(direct)  # longer clips: fewer of them fit in the episodes
  scale = max(np.abs(whole[i]["latents"]).max() for i in range(len(whole)))
  for i in range(len(prefix)):
    a = prefix[i]
    j = where[tuple(whole[i]["clip"][:2])]  # the same (episode, start)
    b = direct[j]
    assert a["latents"].shape == (3, 4, 4, 4) and a["actions"].shape == (9, 13)
    np.testing.assert_allclose(a["latents"], b["latents"], rtol=1e-5, atol=1e-5 * scale)
    for k in ("actions", "poses", "action_scale", "text"):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["action_scale"].dtype == np.float32 and a["action_scale"] > 0
  # the prefix's actions are its own: normalised by the prefix's mean displacement, which
  # differs from the whole clip's (stored in the cache) for some clip
  differs = [not np.isclose(prefix[i]["action_scale"], whole[i]["action_scale"], rtol=1e-4)
             for i in range(len(prefix))]
  assert any(differs)
  # a horizon longer than the cache's is refused with the fix
  too_long = phase_config(long_cfg, 0)
  too_long.data.latent_frames = 7
  with pytest.raises(DataError, match=r"holds clips of 6 latent frames \(horizons \[3, 4, 6\]\), "
                                      r"but 7 are asked for.*Fix: re-run `relic encode` with the "
                                      r"config whose horizons include 7"):
    loader.CachedLatents(too_long, str(tmp_path / "long"))
  # the staleness check keys on the horizons, not on the stage's data.latent_frames
  fresh = lc.cache_description(phase_config(long_cfg, 1), out, "v")
  lc.LatentCacheSource(str(tmp_path / "long"), expected=fresh)
  other = _config(cfg, ((3, 1), (5, 1)))  # another curriculum: other horizons and clips
  with pytest.raises(DataError, match=r"stale: the clip changed"):
    lc.LatentCacheSource(str(tmp_path / "long"), expected=lc.cache_description(other, out, "v"))


def test_palindromes_in_the_cache_are_read_as_prefixes_of_the_bounced_clip(dataset, tmp_path):
  cfg, out = dataset
  c = _config(cfg, ((3, 1), (6, 1)), palindrome_prob=1.0)
  lc.build(c, out, str(tmp_path / "c"), pool_encoder(), "v", 8, progress=False)
  src = clips.make_clip_source(c, out, latent_frames=6)
  prefix = lc.LatentCacheSource(str(tmp_path / "c"), latent_frames=3)
  turns = []
  for i in range(len(prefix)):
    x = prefix[i]
    e, start, turn = (int(v) for v in x["clip"])
    turns.append(turn)
    assert 5 <= turn < 21  # drawn for one of the horizons: 9, 13 or 21 video frames
    order = clips.palindrome_indices(21, turn)[:9]
    camera = src[i]["camera"][order]
    np.testing.assert_array_equal(x["camera"], camera)
    want = clips.clip_inputs(camera)
    for k in ("actions", "poses", "action_scale"):
      np.testing.assert_array_equal(x[k], want[k])
  # some clips turn within the 9-frame prefix (turn < 8), others play it forward
  assert min(turns) < 8 <= max(turns)
