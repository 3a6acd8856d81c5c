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
  c.data.cache_clip_stride = 16  # the latent cache's 97-frame clips, one every 16 frames
  c.data.num_examples = 4096
  c.train.steps = 2000
  c.train.batch_size = 16
  c.train.lr = 5e-4
  c.train.warmup_steps = 100
  c.train.checkpoint_every = 500
  c.train.log_every = 50
  c.train.text_dropout = 0.1  # the unconditional branch for classifier-free guidance
  # The teacher's horizon curriculum (RELIC's 5 s -> 10 s -> 20 s shape, scaled, 2,000 steps
  # in all): 8, 16 and 25 latent frames, the last the longest sequence it scores (the 8-block
  # rollout); the ODE init's clip (13) is inside it.
  c.train.horizon_curriculum = ((8, 1000), (16, 400), (25, 600))
  # The student, trained with its memory (window 6): ODE init on 4 blocks (13 latent frames),
  # 3 clean (10 frames of context, frames 0-3 read from the pooled memory), 1 noised; rollouts
  # of 2, 4 and 8 blocks (7, 13, 25 latent frames) for RELIC's 250/150/150 iterations, scaled
  # by 0.4; the EMA from step 80 (Self-Forcing's 200 of its run, scaled alike). Self-Forcing's
  # guidance 3 (= standard CFG 4), which the caption dropout above makes possible.
  c.ode_init.blocks, c.ode_init.noisy_blocks = 4, 1
  c.distill.rollout_curriculum = ((2, 100), (4, 60), (8, 60))
  c.distill.ema_start_step = 80
  c.generate.guidance = 3.0
  return c
