"""Analytic FLOP count of the DiT (matmul FLOPs, 2 per multiply-add), as used for MFU.

Per sample with S video tokens, L text tokens, T patched frames, D dim, F ffn dim:
  patch embedding     2 S (pt ph pw C_in) D
  timestep MLP        2 T (freq D + D D + 6 D D)
  text MLP            2 L (D_text D + D D)
  per layer
    self-attn proj    2 S 4 D D
    self-attn core    2 S K D * 2       (QK^T and AV; K = keys each query sees)
    cross-attn proj   2 S 2 D D + 2 L 2 D D
    cross-attn core   2 S L D * 2
    FFN               2 S 2 D F
  head                2 S D (pt ph pw C_out)
K = S for bidirectional attention; for block-causal attention (a first block of f frames, then
blocks of b frames, P tokens per frame) a query sees every frame up to the end of its block.
"""

from relic_jax.config.choices import AttentionMode
from relic_jax.models.dit import DiTConfig


def tokens(cfg: DiTConfig, frames: int, height: int, width: int) -> tuple[int, int, int]:
  pt, ph, pw = cfg.patch_size
  per_frame = (height // ph) * (width // pw)
  return frames // pt, per_frame, (frames // pt) * per_frame


def mean_visible_keys(cfg: DiTConfig, frames: int, tokens_per_frame: int) -> float:
  if cfg.attention_mode == AttentionMode.BIDIRECTIONAL:
    return float(frames * tokens_per_frame)
  f, b = cfg.first_block_frames, cfg.block_frames
  ends = [f] + [f + b * (k + 1) for k in range((frames - f) // b)]
  sizes = [f] + [b] * (len(ends) - 1)
  return tokens_per_frame * sum(n * e for n, e in zip(sizes, ends)) / frames


def forward_flops(cfg: DiTConfig, frames: int, height: int, width: int, text_len: int) -> float:
  """Matmul FLOPs of one forward pass for one sample (frames/height/width in latent units)."""
  t, p, s = tokens(cfg, frames, height, width)
  d, f, l = cfg.dim, cfg.ffn_dim, text_len
  patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
  k = mean_visible_keys(cfg, t, p)
  per_layer = (2 * s * 4 * d * d + 4 * s * k * d
               + 2 * s * 2 * d * d + 2 * l * 2 * d * d + 4 * s * l * d
               + 2 * s * 2 * d * f)
  total = (2 * s * patch * cfg.in_channels * d
           + 2 * t * (cfg.freq_dim * d + d * d + 6 * d * d)
           + 2 * l * (cfg.text_dim * d + d * d)
           + cfg.num_layers * per_layer
           + 2 * s * d * patch * cfg.out_channels)
  return float(total)


def flops_per_token_fwd(cfg: DiTConfig, frames: int, height: int, width: int,
                        text_len: int) -> float:
  return forward_flops(cfg, frames, height, width, text_len) / tokens(cfg, frames, height, width)[2]


def train_step_flops(cfg: DiTConfig, batch: int, frames: int, height: int, width: int,
                     text_len: int) -> float:
  """Model FLOPs of a training step: forward + backward = 3x forward (recompute not counted)."""
  return 3.0 * batch * forward_flops(cfg, frames, height, width, text_len)


def block_forward_flops(cfg: DiTConfig, block_frames: int, tokens_per_frame: int,
                        cached_keys: int, text_len: int) -> float:
  """Matmul FLOPs of one DiT forward of a streaming block (block_frames latent frames of
  tokens_per_frame tokens) attending to `cached_keys` cached tokens plus itself."""
  p = tokens_per_frame
  s, t = block_frames * p, block_frames
  d, f, l = cfg.dim, cfg.ffn_dim, text_len
  patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
  k = cached_keys + s
  per_layer = (2 * s * 4 * d * d + 4 * s * k * d
               + 2 * s * 2 * d * d + 2 * l * 2 * d * d + 4 * s * l * d
               + 2 * s * 2 * d * f)
  return float(2 * s * patch * cfg.in_channels * d
               + 2 * t * (cfg.freq_dim * d + d * d + 6 * d * d)
               + 2 * l * (cfg.text_dim * d + d * d)
               + cfg.num_layers * per_layer
               + 2 * s * d * patch * cfg.out_channels)
