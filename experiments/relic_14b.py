"""relic_14b: the Wan 2.1 T2V 14B backbone RELIC fine-tunes (dim 5120, FFN 13824, 40 heads,
40 layers), bf16, full remat, FSDP x tensor parallel.

Clip: 21 latent frames of 60x104 (5 s at 480x832). RELIC's horizon curriculum
(train.horizon_curriculum) extends this to 10 s (41 latent frames) and 20 s (81), with YaRN
on the temporal RoPE (factors 41/21 and 81/21). Hardware: the paper trains on 32 H100s; plan
a v5p-64 / 32+ H100s. On a small machine only abstract shapes run (the model_stats benchmark).
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "relic_14b"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 5120, 13824, 40, 40
  m.text_dim = 4096
  m.dtype = "bfloat16"
  m.remat_policy = "full"
  c.mesh.shape = {"data": 1, "fsdp": -1, "context": 1, "tensor": 8}
  c.data.latent_frames, c.data.latent_height, c.data.latent_width = 21, 60, 104
  c.data.text_len = 512
  c.train.batch_size = 32
  c.train.lr = 1e-5
  c.train.warmup_steps = 100
  c.train.steps = 10000      # without the curriculum; with it, each phase has its own steps
  # RELIC: 5 s (5k iterations) -> 10 s (1k) -> 20 s (4k) at 4 latent frames/s
  c.train.horizon_curriculum = ((21, 5000), (41, 1000), (81, 4000))
  c.train.text_dropout = 0.1  # the unconditional branch for classifier-free guidance
  c.train.checkpoint_every = 250
  c.train.log_every = 10
  return c
