"""tiny: the smallest real run, for tests and the README demo.

A 2-layer, 64-wide DiT (4 latent frames of 8x8x16 per clip). Hardware: any CPU.

`relic pipeline` (README command 1) runs everything on it: 8 ViZDoom episodes of 64x64
frames, the pose estimator, a narrow VAE (150 steps) and its tiny decoder, the latent cache,
the teacher on it (a horizon curriculum of 4, 16 and 25 latent frames), ODE initialisation
(hybrid forcing past the memory window) and distillation of the student (rollouts of 2, 4
and 8 blocks), and the evaluation on the 2 held-out maps: 17.5 min on 2 CPU cores. On its
own, `relic train_teacher` trains the teacher's curriculum on the synthetic latent dataset
instead (~70 s for the three phases, measured on a loaded machine).
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
  # The teacher's horizon curriculum (RELIC's 5 s -> 10 s -> 20 s shape, scaled): 4, 16, then
  # 25 latent frames, the longest sequence it scores (the 8-block rollout); the ODE init's
  # clip (16) is its second phase.
  c.train.horizon_curriculum = ((4, 150), (16, 30), (25, 30))
  # the latent cache holds clips of 25 latent frames (97 video frames), one every 16 frames:
  # 91 clips, ~1.5 min of `relic encode` (every 4 frames: 357 clips, ~4x as long)
  c.data.cache_clip_stride = 16
  # The student, trained with its memory (window 6 latent frames): ODE initialisation on 32
  # teacher trajectories of 5 blocks (16 latent frames) with hybrid forcing, the first 4
  # blocks clean (13 frames of context > the window: frames 0-6 are read from the pooled
  # memory; > 12, so the memory sweep's window_12 still reads memory), the last noised; then
  # distillation with rollouts of 2, 4 and 8 blocks (7, 13, 25 latent frames = 1.6, 3.0 and
  # 5.7 s at 17.5 fps; RELIC's 5/10/20 s shape at 250/150/150 iterations, scaled): 44 steps,
  # 9 generator updates. No CFG (generate.guidance 0: the tiny teacher trains without
  # caption dropout).
  c.ode_init.num_trajectories, c.ode_init.solver_steps = 32, 16
  c.ode_init.blocks, c.ode_init.noisy_blocks = 5, 1
  c.ode_init.train.update({"steps": 100, "batch_size": 8, "lr": 1e-3, "warmup_steps": 10,
                           "checkpoint_every": 50})
  c.distill.rollout_curriculum = ((2, 20), (4, 12), (8, 12))
  c.distill.batch_size = 8
  c.distill.gen_lr, c.distill.critic_lr = 1e-4, 1e-3
  c.distill.ema_decay = 0.9
  c.distill.ema_start_step = 16  # Self-Forcing's 200, scaled to the 44 steps
  c.distill.checkpoint_every = 10
  return c
