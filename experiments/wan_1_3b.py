"""wan_1_3b: the Wan 2.1 T2V 1.3B backbone (dim 1536, FFN 8960, 12 heads, 30 layers, umT5
text embeddings 4096-d x 512 tokens), trained in bf16 with scanned, rematerialised blocks.

Clip: 21 latent frames of 60x104 (5 s at 480x832) = 32,760 tokens. Hardware: 8+ H100 / a
TPU v5p-8 or larger with FSDP; a step on one H100 fits only with a shorter clip (the train_step
benchmark uses --config.data.latent_frames). Wall-clock: depends on the fleet; the
train_step benchmark reports step time and MFU.
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "wan_1_3b"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 1536, 8960, 12, 30
  m.text_dim = 4096
  m.dtype = "bfloat16"
  m.remat_policy = "full"
  c.data.latent_frames, c.data.latent_height, c.data.latent_width = 21, 60, 104
  c.data.text_len = 512
  c.train.batch_size = 8
  c.train.lr = 1e-5
  c.train.warmup_steps = 100
  c.train.steps = 5000
  c.train.checkpoint_every = 500
  c.train.log_every = 10
  return c
