"""small: a real (if small) model: a proper training run on one GPU, smoke runs on a CPU.

8 layers, dim 384, 6 heads of 64, FFN 1536 (20.4M params); clips of 8 latent frames of 16x16
(= 512 tokens after (1,2,2) patching), text embeddings of 64 tokens x 256.
Hardware/wall-clock: one H100, bf16: a few minutes for the default 2,000 steps (estimated from
the FLOP count, not yet measured); 2 CPU cores:
~12 s/step at batch 16 (use --config.train.steps=20
--config.train.batch_size=2 for a smoke run).
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "small"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 384, 1536, 6, 8
  m.text_dim = 256
  c.data.latent_frames, c.data.latent_height, c.data.latent_width = 8, 16, 16
  c.data.text_len = 64
  # ViZDoom episodes at the model's pixel size (16 latents x 8 = 128), ~34 s each
  c.data.gen.height = c.data.gen.width = 128
  c.data.gen.num_episodes = 64
  c.data.gen.episodes_per_shard = 4
  c.data.gen.frames_per_episode = 600
  c.data.num_examples = 4096
  c.train.steps = 2000
  c.train.batch_size = 16
  c.train.lr = 5e-4
  c.train.warmup_steps = 100
  c.train.checkpoint_every = 500
  c.train.log_every = 50
  c.train.text_dropout = 0.1  # the unconditional branch for classifier-free guidance
  return c
