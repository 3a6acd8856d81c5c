"""demo: the README demo (`make demo`), RELIC's recipe fine-tuning pretrained base models.

RELIC starts from pretrained Wan 2.1 (VAE and DiT) and fine-tunes it with actions, poses, the
long-horizon teacher, ODE initialisation and DMD. The demo does the same at CPU scale from the
base assets in assets/demo (trained once by `make assets` on 240 ViZDoom episodes over 66 maps:
experiments/demo_assets.py), loaded through the same import path as real Wan weights (diffusers
folders: `vae.init_from`, `train.init_from`):

  data (the demo's own 8 episodes, plus 2 on the held-out maps) -> the pretrained VAE and tiny
  decoder (evaluated, not retrained; `--config.vae.init_from=none` trains one from scratch, as
  experiments/tiny.py) -> encode -> the teacher fine-tuned with 13-d actions and 12-d poses
  through its horizon curriculum -> ODE init -> distillation -> evaluation.

Scale: 64x64 frames, VAE strides 4 x 4 x 4 (latent frames of 16x16x16), the DiT's 2x2 patches:
64 tokens per latent frame, which RELIC's memory pools by 2 (16 tokens) and 4 (4 tokens). DiT
128 wide, 4 layers (1.4M params with RELIC's additions). Hardware: 2 CPU cores (README).
"""

from relic_jax.config.base import parent_config


def get_config():
  c = parent_config(__file__, "tiny")
  c.name = "demo"
  d = c.data
  d.latent_height = d.latent_width = 16
  d.spatial_stride = 4
  d.text_len = 96
  d.gen.heldout_map_episodes = 2
  d.heldout_episodes = 2
  # the base assets' architecture (experiments/demo_assets.py); the from-scratch VAE recipe
  # (vae.init_from=none) is tiny's
  v = c.vae
  v.base_dim, v.dim_mult, v.num_res_blocks = 16, (1, 2, 4), 1
  v.temporal_downsample = (True, True)
  v.tiny_dim = 48
  v.init_from = "assets/demo"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 128, 512, 2, 4
  m.yarn_original_frames = 13
  c.train.init_from = "assets/demo"
  c.train.lr = 5e-4
  # Measured with random weights of this architecture on 2 cores (the stage times do not
  # depend on the weights): teacher ((4, 100), (16, 30), (25, 20)) 5 min 2 s, ODE init with 60
  # steps 3 min 50 s, distillation 4 min 31 s (2 min 44 s of it compiling the three rollout
  # lengths), evaluation with the full-history baseline 9 min 17 s (full generates at 15
  # frames/s, relic at 68): 24.5 min in all. Hence the shorter phases below and no `full`
  # (the memory sweep, experiments/sweeps/memory.py, still compares it). From the shipped
  # assets, this recipe's pipeline took 17 min 33 s (teacher 3 min 46 s, ODE init 3 min 3 s,
  # distillation 3 min 59 s, evaluation 5 min 3 s).
  c.train.horizon_curriculum = ((4, 100), (16, 20), (25, 12))
  c.ode_init.train.steps = 40
  c.distill.rollout_curriculum = ((2, 10), (4, 6), (8, 6))
  c.distill.ema_start_step = 8
  c.evaluate.methods = ("relic", "window", "window_sink", "copy_last")
  return c
