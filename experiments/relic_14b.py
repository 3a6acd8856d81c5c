"""relic_14b: the Wan 2.1 T2V 14B backbone RELIC fine-tunes (dim 5120, FFN 13824, 40 heads,
40 layers): wan_1_3b's recipe (bf16, full remat, umT5 text, RELIC's curriculum, the student's
ODE init of 7 blocks and rollouts of 7, 13 and 26 blocks) with the 14B dims, FSDP x tensor
parallel.

Clip: 21 latent frames of 60x104 (5 s at 480x832). RELIC's horizon curriculum
(train.horizon_curriculum) extends this to 10 s (41 latent frames) and 20 s (81), with YaRN
on the temporal RoPE (factors 41/21 and 81/21). Hardware: the paper trains on 32 H100s; plan
a v5p-64 / 32+ H100s. On a small machine only abstract shapes run (the model_stats benchmark).
"""

from relic_jax.config import parent_config


def get_config():
  c = parent_config(__file__, "wan_1_3b")  # Wan 2.1's recipe and RELIC's curriculum
  c.name = "relic_14b"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 5120, 13824, 40, 40
  c.mesh.shape = {"data": 1, "fsdp": -1, "context": 1, "tensor": 8}
  c.train.batch_size = 32
  c.train.steps = 10000      # without the curriculum; with it, each phase has its own steps
  c.train.checkpoint_every = 250
  return c
