"""demo_assets: the pretrained base models the demo (experiments/tiny.py) fine-tunes from.

RELIC never trains from scratch: it fine-tunes pretrained Wan 2.1 (VAE and DiT). The demo does
the same at CPU scale, from base models trained once by `make assets` on a ViZDoom dataset far
larger than the demo's: 240 episodes (72,000 frames, ~69 min at 17.5 fps) over the 66 training
maps of freedoom1 and freedoom2, and 4 episodes on the 2 held-out maps (freedoom2 MAP05 and
MAP15, never trained on) for the held-out figures.

The scale (chosen for the memory to matter, README "The demo's scale"): 64x64 frames, a VAE
of Wan's architecture with spatial stride 4 (3 stages, dim_mult (1, 2, 4), both downsamplings
temporal as well: strides 4 x 4 x 4), so a latent frame is 16x16x16 and, with the DiT's 2x2
patches, 64 tokens: RELIC's memory pools them by 2 (16 tokens) and 4 (4 tokens), where 8x8
latents (16 tokens) left 4 and 1. The base DiT is Wan's (bidirectional, image + byte-caption
conditioned, no actions or poses yet), 128 wide, 4 layers: 1.4M params.

Stages (`make assets`): data -> train_vae (+ its tiny decoder) -> encode -> train_teacher
(the base DiT, a horizon curriculum of 4, 7 and 13 latent frames), then `relic export-assets`
writes them in Wan's diffusers layout (bf16 safetensors) with their SHA-256 into assets/demo.
Hardware: about 5 hours on 2 CPU cores, 12.5 minutes on one H200 (the shipped assets:
relic_jax/bench/device_assets.sh, docs/assets.md); resumable at every stage.
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "demo_assets"
  d = c.data
  d.source = "latents"
  d.latent_frames = 3              # the VAE trains on clips of 9 frames
  d.latent_height = d.latent_width = 16
  d.spatial_stride = 4
  d.heldout_episodes = 4
  d.cache_clip_stride = 12
  d.text_len = 96                  # the caption's first 96 bytes: light, level and colours
  g = d.gen
  g.wads = ("freedoom1", "freedoom2")
  g.num_episodes = 240
  g.heldout_map_episodes = 4
  g.episodes_per_shard = 8
  # the VAE: Wan's causal 3D-conv architecture, narrower and with 2 downsamplings
  v = c.vae
  v.base_dim, v.dim_mult, v.num_res_blocks = 16, (1, 2, 4), 1
  v.temporal_downsample = (True, True)
  v.train.update({"steps": 1500, "batch_size": 8, "lr": 5e-4, "warmup_steps": 100,
                  "checkpoint_every": 100, "log_every": 25})
  # then 400 steps on clips of 49 frames (the latent cache's), batch 2: a causal VAE trained
  # only on 9-frame clips reconstructs those at 29 dB but frames 16-97 of longer clips at
  # 15-21 dB (every training frame lay within its receptive field of the clip's start)
  v.clip_curriculum = ((13, 400, 2),)
  v.eval_clips = 32
  v.tiny_dim, v.tiny_steps = 48, 1500  # on the last phase's clips
  # the base DiT: Wan's, no actions or poses
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 128, 512, 2, 4
  m.text_encoder = "bytes"
  m.action_dim = m.pose_dim = 0
  m.yarn_original_frames = 13      # the longest horizon it is trained on
  t = c.train
  t.batch_size = 8
  t.lr, t.warmup_steps, t.min_lr_ratio = 5e-4, 200, 0.1
  t.text_dropout = 0.1             # an unconditional branch, for CFG after fine-tuning
  t.ema_decay = 0.999
  t.checkpoint_every, t.log_every = 250, 50
  t.horizon_curriculum = ((4, 6000), (7, 2000), (13, 1000))
  # nothing after the teacher reads more than 13 latent frames
  c.ode_init.blocks = 4
  c.distill.rollout_curriculum = ((2, 1), (4, 1))
  return c
