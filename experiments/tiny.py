"""tiny: the smallest real run, for tests and the README demo.

A 2-layer, 64-wide DiT (4 latent frames of 8x8x16 per clip). Hardware: any CPU.

`relic pipeline` (README command 1) runs everything on it: 8 ViZDoom episodes of 64x64
frames, the pose estimator, a narrow VAE (150 steps) and its tiny decoder, the latent cache,
the teacher on it (200 steps), ODE initialisation and distillation of the student, and the
evaluation on the 2 held-out maps; 10-15 minutes on 2 CPU cores. On its own, `relic
train_teacher` trains the teacher on the synthetic latent dataset instead: ~20 s for 200 steps
(~8 s of it compilation), the loss falls from ~1.4 to ~0.5.
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
  c.vae.train.update({"steps": 150, "batch_size": 4, "lr": 1e-3, "warmup_steps": 20,
                      "checkpoint_every": 50, "log_every": 10})
  c.vae.eval_clips = 8
  c.vae.tiny_dim, c.vae.tiny_steps = 32, 400
  # generation and evaluation decode with the tiny decoder (RELIC's real-time setting; the
  # full VAE decoder is ~10x slower per block on CPU)
  c.generate.decoder = "tiny"
  # the student (4 latent frames = frame 0 + one block of 3): ODE initialisation on 32 teacher
  # trajectories, then 30 distillation steps (6 generator updates); no CFG (the tiny teacher
  # trains without caption dropout)
  c.ode_init.num_trajectories, c.ode_init.solver_steps = 32, 16
  c.ode_init.guidance = 1.0
  c.ode_init.train.update({"steps": 100, "batch_size": 8, "lr": 1e-3, "warmup_steps": 10,
                           "checkpoint_every": 50})
  c.distill.rollout_curriculum = ((1, 30),)
  c.distill.guidance = 1.0
  c.distill.batch_size = 8
  c.distill.gen_lr, c.distill.critic_lr = 1e-4, 1e-3
  c.distill.ema_decay = 0.9
  c.distill.checkpoint_every = 10
  return c
