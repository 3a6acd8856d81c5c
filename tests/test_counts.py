"""Parameter counts of the Wan 2.1 backbones (abstract shapes, nothing allocated) and the
analytic FLOP formula checked against XLA's own count."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from relic_jax.config.base import parent_config
from relic_jax.models import flops
from relic_jax.models.dit import RELIC_ADDITIONS, DiTConfig, WanDiT
from relic_jax.training.teacher import TeacherTask
from tests.helpers import REPO


def wan_t2v_param_count(D, F, layers, text_dim=4096, freq_dim=256, c_in=16, c_out=16, patch=4):
  """Wan 2.1 T2V parameter count, derived from the architecture (every Linear has a bias):
    patch embedding   Conv3d(16 -> D, kernel 1x2x2):            4*16*D + D
    text embedding    Linear(4096 -> D), GELU-tanh, Linear(D -> D): 4096*D + D + D*D + D
    time embedding    Linear(256 -> D), SiLU, Linear(D -> D):      256*D + D + D*D + D
    time projection   Linear(D -> 6D):                             6*D*D + 6*D
    per block
      self-attn       q, k, v, o: 4*(D*D + D); RMS norm_q, norm_k over all heads: 2*D
      cross-attn      the same: 4*(D*D + D) + 2*D
      norm2           affine LayerNorm: 2*D
      FFN             Linear(D -> F) + Linear(F -> D): D*F + F + F*D + D
      modulation      table of 6*D
    head              modulation table 2*D; Linear(D -> 4*16): D*64 + 64
  """
  attn = 4 * (D * D + D) + 2 * D
  block = 2 * attn + 2 * D + (D * F + F + F * D + D) + 6 * D
  stem = (patch * c_in * D + D) + (text_dim * D + D + D * D + D) + (freq_dim * D + D + D * D + D) \
      + (6 * D * D + 6 * D)
  head = 2 * D + D * patch * c_out + patch * c_out
  return stem + layers * block + head


def relic_additions_count(D, layers, action_dim=13, pose_dim=12, frames_per_latent=4):
  """What RELIC's conditioning adds: an action and a pose encoder (temporal patchify by 4, then
  Linear(4c -> D), SiLU, Linear(D -> D)) and, per block, the zero-initialised projections of
  the action embedding onto the hidden states and of the pose embedding onto Q and K:
  3 * (D*D + D)."""
  enc = lambda c: frames_per_latent * c * D + D + D * D + D  # noqa: E731
  return enc(action_dim) + enc(pose_dim) + layers * 3 * (D * D + D)


def abstract_count(config_file):
  """(all params, backbone params: those not in dit.RELIC_ADDITIONS) of a config's DiT."""
  cfg = _load(config_file)
  task = TeacherTask(cfg)
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  extra = sum(x.size for path, x in leaves
              if any(getattr(k, "key", None) in RELIC_ADDITIONS for k in path))
  total = sum(x.size for _, x in leaves)
  return total, total - extra


def _load(name):
  return parent_config(f"{REPO}/experiments/{name}.py", name)


def test_wan_1_3b_param_count():
  expected = wan_t2v_param_count(D=1536, F=8960, layers=30)
  assert expected == 1_418_996_800  # the figure of the released Wan2.1-T2V-1.3B
  # the flagship config is RELIC: Wan's backbone plus action and pose conditioning
  assert abstract_count("wan_1_3b") == (expected + relic_additions_count(1536, 30), expected)


def test_relic_14b_backbone_param_count():
  expected = wan_t2v_param_count(D=5120, F=13824, layers=40)
  assert expected == 14_288_491_584  # Wan2.1-T2V-14B
  assert abstract_count("relic_14b") == (expected + relic_additions_count(5120, 40), expected)


def _xla_forward_flops(cfg, frames, h, w, text_len):
  model = WanDiT(cfg)
  x = jnp.zeros((1, frames, h, w, cfg.in_channels))
  t = jnp.zeros((1, frames))
  txt = jnp.zeros((1, text_len, cfg.text_dim))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, txt))["params"]
  compiled = jax.jit(lambda p: model.apply({"params": p}, x, t, txt)).lower(params).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"]


@pytest.mark.parametrize("dims", [(128, 512, 2, 2, 64), (96, 256, 3, 3, 32)])
def test_analytic_flops_match_xla(dims):
  d, f, heads, layers, text_dim = dims
  # scan off: XLA's cost analysis counts a while-loop body once, not once per layer
  cfg = DiTConfig(dim=d, ffn_dim=f, num_heads=heads, num_layers=layers, text_dim=text_dim,
                  scan_layers=False)
  analytic = flops.forward_flops(cfg, 4, 16, 16, 16)
  xla = _xla_forward_flops(cfg, 4, 16, 16, 16)
  # XLA also counts elementwise work (norms, softmax, GELU, RoPE): a few percent on top
  assert 0.93 * xla <= analytic <= xla, (analytic, xla)


def test_block_causal_flops_count_visible_keys_only():
  bi = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2)
  causal = dataclasses.replace(bi, attention_mode="block_causal", block_frames=2,
                               first_block_frames=2)
  # 8 frames of 8x8/4 = 16 tokens; 4 blocks of 2 frames: a query in block k sees (k+1)*32 keys
  s, p = 8 * 16, 16
  mean_keys = sum((k + 1) * 2 * p for k in range(4)) / 4
  assert flops.mean_visible_keys(causal, 8, p) == mean_keys
  # frame 0 alone, then blocks [1, 2], [3, 4], [5, 6], and frame 7 would be cut: use 7 frames
  image_first = dataclasses.replace(causal, first_block_frames=1)
  assert flops.mean_visible_keys(image_first, 7, p) == p * (1 * 1 + 2 * 3 + 2 * 5 + 2 * 7) / 7
  diff = flops.forward_flops(bi, 8, 8, 8, 4) - flops.forward_flops(causal, 8, 8, 8, 4)
  assert diff == pytest.approx(2 * 4 * s * (s - mean_keys) * 128)
