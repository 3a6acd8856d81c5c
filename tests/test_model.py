"""Behaviour of the DiT: causality, scan == loop, remat invariance, timesteps, RoPE/YaRN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic_jax.config import get_base_config, head_dim_split
from relic_jax.config.choices import RematPolicy
from relic_jax.models import rope as rope_lib
from relic_jax.models.dit import REMAT_POLICIES, stack_blocks, unstack_blocks
from tests.helpers import inputs, make_model, random_params

ATOL = 1e-5


def test_output_shape_and_patch_roundtrip():
  x, t, txt = inputs(t=4, h=8, w=12)
  model = make_model()
  params = random_params(model, x, t, txt)
  y = model.apply({"params": params}, x, t, txt)
  assert y.shape == x.shape
  assert np.all(np.isfinite(y))


def _perturb_frames(x, start):
  noise = jax.random.normal(jax.random.key(99), x[:, start:].shape)
  return x.at[:, start:].add(3.0 * noise)


@pytest.mark.parametrize("scan", [True, False])
def test_block_causal_earlier_blocks_ignore_later_frames(scan):
  # 6 latent frames in blocks of 2: changing frames 4..5 (block 2) must leave frames 0..3 as
  # they were, and must change frames 4..5.
  x, t, txt = inputs(t=6)
  model = make_model(attention_mode="block_causal", block_frames=2, first_block_frames=2,
                     scan_layers=scan)
  params = random_params(model, x, t, txt)
  y0 = model.apply({"params": params}, x, t, txt)
  y1 = model.apply({"params": params}, _perturb_frames(x, 4), t, txt)
  np.testing.assert_allclose(y0[:, :4], y1[:, :4], atol=ATOL)
  assert np.max(np.abs(y0[:, 4:] - y1[:, 4:])) > 1e-2
  # a change inside block 1 (frame 3) reaches frame 2 (same block) but not frames 0..1
  y2 = model.apply({"params": params}, x.at[:, 3].add(3.0), t, txt)
  np.testing.assert_allclose(y0[:, :2], y2[:, :2], atol=ATOL)
  assert np.max(np.abs(y0[:, 2] - y2[:, 2])) > 1e-2


def test_block_causal_image_frame_is_its_own_block():
  # RELIC's layout (first_block_frames=1): [0], [1, 2, 3], [4, 5, 6]
  x, t, txt = inputs(t=7)
  model = make_model(attention_mode="block_causal", block_frames=3)
  params = random_params(model, x, t, txt)
  y0 = model.apply({"params": params}, x, t, txt)
  y1 = model.apply({"params": params}, x.at[:, 1].add(3.0), t, txt)
  np.testing.assert_allclose(y0[:, :1], y1[:, :1], atol=ATOL)
  assert np.max(np.abs(y0[:, 3] - y1[:, 3])) > 1e-2 and np.max(np.abs(y0[:, 4] - y1[:, 4])) > 1e-2
  y2 = model.apply({"params": params}, x.at[:, 4].add(3.0), t, txt)
  np.testing.assert_allclose(y0[:, :4], y2[:, :4], atol=ATOL)
  assert np.max(np.abs(y0[:, 6] - y2[:, 6])) > 1e-2


def test_bidirectional_earlier_frames_see_later_frames():
  x, t, txt = inputs(t=6)
  model = make_model(attention_mode="bidirectional")
  params = random_params(model, x, t, txt)
  y0 = model.apply({"params": params}, x, t, txt)
  y1 = model.apply({"params": params}, _perturb_frames(x, 4), t, txt)
  assert np.max(np.abs(y0[:, :4] - y1[:, :4])) > 1e-2


def test_block_causal_with_one_block_equals_bidirectional():
  x, t, txt = inputs(t=4)
  bi = make_model(attention_mode="bidirectional")
  params = random_params(bi, x, t, txt)
  causal = make_model(attention_mode="block_causal", block_frames=4, first_block_frames=4)
  np.testing.assert_allclose(bi.apply({"params": params}, x, t, txt),
                             causal.apply({"params": params}, x, t, txt), atol=ATOL)


def test_scan_equals_loop_outputs_and_grads():
  x, t, txt = inputs()
  scanned = make_model(scan_layers=True, num_layers=3)
  looped = make_model(scan_layers=False, num_layers=3)
  p_scan = random_params(scanned, x, t, txt)
  p_loop = unstack_blocks(p_scan, 3)
  assert jax.tree.structure(p_loop) == jax.tree.structure(
      nn.meta.unbox(jax.eval_shape(lambda: looped.init(jax.random.key(0), x, t, txt)["params"])))
  np.testing.assert_allclose(scanned.apply({"params": p_scan}, x, t, txt),
                             looped.apply({"params": p_loop}, x, t, txt), atol=ATOL)
  loss = lambda m: (lambda p: jnp.mean(m.apply({"params": p}, x, t, txt) ** 2))
  g_scan = jax.grad(loss(scanned))(p_scan)
  g_loop = stack_blocks(jax.grad(loss(looped))(p_loop), 3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), g_scan, g_loop)
  # stack/unstack are inverse
  jax.tree.map(np.testing.assert_array_equal, stack_blocks(p_loop, 3), p_scan)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("policy", [p.value for p in RematPolicy if p != RematPolicy.NONE])
def test_remat_policies_give_same_outputs_and_grads(scan, policy):
  x, t, txt = inputs()
  ref = make_model(scan_layers=scan, remat_policy="none", attention_mode="block_causal",
                   block_frames=2)
  params = random_params(ref, x, t, txt)
  model = make_model(scan_layers=scan, remat_policy=policy, attention_mode="block_causal",
                     block_frames=2)

  def loss(m):
    return lambda p: jnp.mean(m.apply({"params": p}, x, t, txt) ** 2)

  l_ref, g_ref = jax.jit(jax.value_and_grad(loss(ref)))(params)
  l_new, g_new = jax.jit(jax.value_and_grad(loss(model)))(params)
  np.testing.assert_allclose(l_ref, l_new, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5), g_ref, g_new)


def test_every_remat_policy_has_a_checkpoint_policy():
  assert set(REMAT_POLICIES) == set(RematPolicy) - {RematPolicy.NONE}
  for policy in REMAT_POLICIES.values():
    assert callable(policy())


def test_scalar_timestep_broadcasts_over_frames():
  x, t, txt = inputs()
  model = make_model()
  params = random_params(model, x, t, txt)
  t_b = jnp.array([100.0, 700.0])
  np.testing.assert_allclose(
      model.apply({"params": params}, x, t_b, txt),
      model.apply({"params": params}, x, jnp.broadcast_to(t_b[:, None], (2, 4)), txt), atol=ATOL)


def test_per_frame_timesteps_matter():
  x, t, txt = inputs()
  model = make_model()
  params = random_params(model, x, t, txt)
  t2 = t.at[:, 0].set(0.0)
  y0 = model.apply({"params": params}, x, t, txt)
  y1 = model.apply({"params": params}, x, t2, txt)
  assert np.max(np.abs(y0[:, 0] - y1[:, 0])) > 1e-3


def test_head_dim_split_matches_wan():
  assert head_dim_split(128) == (44, 42, 42)
  assert head_dim_split(64) == (24, 20, 20)  # h = w = 2 * (64 // 6), t takes the rest


def test_rope_rotates_pairs_and_preserves_norm():
  angles = rope_lib.rope_angles(12, (3, 2, 2), 10000.0)
  assert angles.shape == (12, 6)
  x = jax.random.normal(jax.random.key(0), (1, 12, 2, 12))
  y = rope_lib.apply_rope(x, angles)
  np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), jnp.linalg.norm(y, axis=-1), rtol=1e-5)
  # token 0 has all positions zero: unchanged
  np.testing.assert_allclose(x[:, 0], y[:, 0], atol=1e-6)
  # relative property: <R(p)q, R(p')k> depends only on p - p' (temporal axis)
  q = jax.random.normal(jax.random.key(1), (12,))
  k = jax.random.normal(jax.random.key(2), (12,))
  def dot_at(tq, tk):
    a = rope_lib.rope_angles(12, (1, 1, 1), 10000.0, t_offset=tq)
    b = rope_lib.rope_angles(12, (1, 1, 1), 10000.0, t_offset=tk)
    return jnp.vdot(rope_lib.apply_rope(q[None, None, None], a),
                    rope_lib.apply_rope(k[None, None, None], b))
  np.testing.assert_allclose(dot_at(5.0, 2.0), dot_at(13.0, 10.0), rtol=1e-4)


def test_yarn_only_touches_low_temporal_frequencies():
  base = rope_lib.inv_frequencies(44, 10000.0)
  # over 1000 original positions the fastest pair turns ~159 times (> beta_fast): kept; the
  # slowest turns < 1 time (< beta_slow): divided by the factor; between, a ramp.
  ext = rope_lib.yarn_inv_frequencies(base, 4.0, 1000, 32.0, 1.0)
  np.testing.assert_allclose(ext[0], base[0], rtol=1e-6)
  np.testing.assert_allclose(ext[-1], base[-1] / 4.0, rtol=1e-6)
  ratio = base / ext
  assert np.all(np.diff(ratio) >= -1e-6) and np.all((ratio >= 1 - 1e-6) & (ratio <= 4 + 1e-5))
  # over Wan's 21 latent frames even the fastest pair turns only ~3.3 times: mostly interpolated
  short = rope_lib.yarn_inv_frequencies(base, 4.0, 21, 32.0, 1.0)
  assert 1.0 < base[0] / short[0] < 4.0
  np.testing.assert_array_equal(rope_lib.yarn_inv_frequencies(base, 1.0, 21, 32.0, 1.0), base)
  assert rope_lib.yarn_attention_scale(1.0) == 1.0
  assert rope_lib.yarn_attention_scale(4.0) > 1.0
  a0 = rope_lib.rope_angles(128, (30, 2, 2), 10000.0)
  a1 = rope_lib.rope_angles(128, (30, 2, 2), 10000.0, yarn_factor=4.0)
  np.testing.assert_array_equal(a0[:, 22:], a1[:, 22:])  # spatial parts untouched
  assert np.max(np.abs(a0[:, :22] - a1[:, :22])) > 0


def test_yarn_ramp_of_the_config_keeps_the_fastest_temporal_pairs_over_21_frames():
  """Wan's temporal axis (head_dim 128 -> 44 temporal dims, 22 pairs) pretrained on 21 latent
  frames, extended to 81 (RELIC's 20 s): with the config's ramp the pairs that turn at least
  yarn_beta_fast times in 21 frames keep their frequency, those that turn at most
  yarn_beta_slow times are divided by the factor; YaRN's LLM ramp (32, 1) kept none."""
  m = get_base_config().model
  base = np.asarray(rope_lib.inv_frequencies(44, m.rope_theta))
  turns = m.yarn_original_frames * base / (2 * np.pi)
  factor = 81 / 21
  ext = np.asarray(rope_lib.yarn_inv_frequencies(base, factor, m.yarn_original_frames,
                                                 m.yarn_beta_fast, m.yarn_beta_slow))
  kept, divided = turns >= m.yarn_beta_fast, turns <= m.yarn_beta_slow
  assert kept.sum() == 2 and turns[0] == pytest.approx(3.34, abs=0.01)  # ~6.3-frame period
  np.testing.assert_array_equal(ext[kept], base[kept])
  np.testing.assert_allclose(ext[divided], base[divided] / factor, rtol=1e-6)
  between = ~kept & ~divided
  assert between.sum() == 1 and base[between] / factor < ext[between] < base[between]
  # through the angles the DiT uses: the two fastest temporal pairs unchanged at every frame
  a0 = np.asarray(rope_lib.rope_angles(128, (81, 1, 1), m.rope_theta))
  a1 = np.asarray(rope_lib.rope_angles(128, (81, 1, 1), m.rope_theta, yarn_factor=factor,
                                       yarn_original_frames=m.yarn_original_frames,
                                       yarn_beta_fast=m.yarn_beta_fast,
                                       yarn_beta_slow=m.yarn_beta_slow))
  np.testing.assert_array_equal(a1[:, :2], a0[:, :2])
  np.testing.assert_allclose(a1[:, 21], a0[:, 21] / factor, rtol=1e-6)
  # the LLM ramp changes even the fastest pair: the test above would fail with it
  llm = np.asarray(rope_lib.yarn_inv_frequencies(base, factor, 21, 32.0, 1.0))
  assert llm[0] < 0.95 * base[0]


def test_byte_text_encoder_masks_padding_and_reads_the_caption():
  from data_pipeline.loader import tokenize_caption
  from relic_jax.models.text_encoder import ByteTextEncoder
  enc = ByteTextEncoder(width=16, out_dim=8, num_layers=2)
  toks = jnp.asarray(np.stack([tokenize_caption("a red room", 16),
                               tokenize_caption("a blue hall", 16)]))
  params = nn.meta.unbox(enc.init(jax.random.key(0), toks))["params"]
  out = np.asarray(enc.apply({"params": params}, toks))
  assert out.shape == (2, 16, 8)
  pad = np.asarray(toks) == 0
  assert pad.any() and np.all(out[pad] == 0.0) and np.all(np.abs(out[~pad]).sum(-1) > 0)
  assert np.abs(out[0, :2] - out[1, :2]).max() > 1e-3  # "a " then context differs
  # shared prefix, different rest: attention carries the rest back to the prefix
  toks2 = toks.at[0, 5].set(toks[0, 5] + 1)
  out2 = np.asarray(enc.apply({"params": params}, toks2))
  assert np.abs(out2[0, 0] - out[0, 0]).max() > 1e-5


def test_dit_with_byte_text_encoder():
  x, t, _ = inputs(t=2)
  model = make_model(text_encoder="bytes", text_encoder_width=16, text_encoder_layers=1)
  toks = jnp.asarray(np.tile(np.arange(1, 9, dtype=np.int32), (x.shape[0], 1)))
  params = random_params(model, x, t, toks)
  assert "text_encoder" in params
  y = model.apply({"params": params}, x, t, toks)
  assert y.shape == x.shape and np.all(np.isfinite(y))
  with pytest.raises(ValueError, match="takes byte tokens"):
    model.apply({"params": params}, x, t, jnp.zeros((x.shape[0], 8, 32)))
