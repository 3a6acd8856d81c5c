"""tiny: the smallest real run, for tests and the README demo.

A 2-layer, 64-wide DiT trained by flow matching on the synthetic latent dataset (4 latent
frames of 8x8x16). Hardware: any CPU. Expected wall-clock: ~20 s for 200 steps on 2 CPU
cores (~8 s of it compilation); the loss falls from ~1.4 to ~0.5.
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "tiny"
  c.train.steps = 200
  c.train.batch_size = 8
  c.train.lr = 2e-3
  c.train.warmup_steps = 20
  c.train.checkpoint_every = 50
  c.train.log_every = 10
  # a narrow VAE (strides 4 x 8 x 8 as Wan's): 64x64 frames -> 8x8 latents
  c.vae.base_dim, c.vae.dim_mult, c.vae.num_res_blocks = 16, (1, 2, 2, 2), 1
  c.vae.train.update({"steps": 300, "batch_size": 4, "lr": 1e-3, "warmup_steps": 20,
                      "checkpoint_every": 100, "log_every": 10})
  c.vae.eval_clips = 8
  c.vae.tiny_dim, c.vae.tiny_steps = 32, 200
  return c
