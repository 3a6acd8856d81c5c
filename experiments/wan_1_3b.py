"""wan_1_3b: RELIC on the Wan 2.1 T2V 1.3B backbone (dim 1536, FFN 8960, 12 heads, 30 layers,
umT5 text embeddings 4096-d x 512 tokens), with RELIC's 13-d actions and 12-d poses, trained in
bf16 with scanned blocks whose inputs are offloaded to host memory between forward and
backward. Starting from Wan's weights: README "Training RELIC from Wan 2.1" (relic import-wan,
import-wan-vae and import-umt5, then relic pipeline with the three init paths).

Clip: 21 latent frames of 60x104 (5 s at 480x832) = 32,760 tokens. The teacher's horizon
curriculum (train.horizon_curriculum, RELIC's) then trains 10 s (41 latent frames, ~64k tokens)
and 20 s (81, ~126k tokens) clips with YaRN on the temporal RoPE (factors 41/21 and 81/21).
The student: ODE init with hybrid forcing on 22 latent frames, distillation rollouts of 22, 40
and 79 latent frames (RELIC's 5 s -> 10 s -> 20 s), both past the memory window.
Hardware: 8 H100s or a TPU v5p-8 (FSDP over all of them): compiled here for both, every stage
fits (docs/scale.md; the largest, ODE init, 47.3 GiB per H100 and 81.5 GiB per v5p chip); a
step on one H100 fits only with a shorter clip (the train_step benchmark uses
--config.data.latent_frames). Wall-clock: the README's "Training RELIC from Wan 2.1" gives
each stage's bound at peak FLOPs (>= 13 h for the teacher's curriculum on 8 H100s).
"""

from relic_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.name = "wan_1_3b"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 1536, 8960, 12, 30
  # RELIC's conditioning: Wan's umT5-XXL text (4096-d, cached by `relic encode` with the umT5
  # that `relic import-umt5` wrote: --config.model.text_encoder_from=DIR), 13-d actions and
  # 12-d poses (camera-to-first-frame extrinsics) per video frame, from the latent cache
  c.data.source = "latents"
  m.text_encoder = "umt5"
  m.text_dim = 4096
  m.action_dim, m.pose_dim = 13, 12
  m.dtype = "bfloat16"
  # memory-efficient attention on every platform (splash is TPU-only and cuDNN cannot be
  # compiled ahead of time: override them per fleet), block inputs offloaded to host memory
  # between forward and backward, the student's KV cache in bf16: what fits the 20 s clips on
  # a v5p-8 and 8 H100s (docs/scale.md)
  m.attention_impl = "chunked"
  m.cache_attention_impl = "chunked"
  m.remat_policy = "offload_block_input"
  c.memory.kv_dtype = "bfloat16"
  c.data.latent_frames, c.data.latent_height, c.data.latent_width = 21, 60, 104
  c.data.text_len = 512
  # `relic data`'s episodes must hold the latent cache's clips: 81 latent frames = 321 video
  # frames (the teacher's 20 s phase); 600 frames (~34 s at 17.5 fps) leave room for several
  c.data.gen.frames_per_episode = 600
  # and at the model's 480x832: rendered 16:9 (1024x576), centre-cropped and resized (your own
  # posed videos instead: `relic data ingest`, docs/data.md)
  c.data.gen.height, c.data.gen.width, c.data.gen.render_resolution = 480, 832, "1024x576"
  c.train.batch_size = 8
  c.distill.batch_size = 8   # a multiple of the 8 H100s (and of a v5p-8's 4 chips)
  c.train.lr = 1e-5
  c.train.warmup_steps = 100
  c.train.steps = 5000       # without the curriculum; with it, each phase has its own steps
  # RELIC: 5 s (5k iterations) -> 10 s (1k) -> 20 s (4k) at 4 latent frames/s
  c.train.horizon_curriculum = ((21, 5000), (41, 1000), (81, 4000))
  c.train.text_dropout = 0.1  # the unconditional branch for classifier-free guidance
  # The student (RELIC's recipe; window 6 latent frames). ODE init with hybrid forcing on 7
  # blocks (22 latent frames, ~5 s), the first 4 clean (13 frames of context: frames 0-6 read
  # from the pooled memory), the last 3 noised [guess: RELIC does not give the split].
  # Distillation: RELIC's 5 s -> 10 s -> 20 s rollouts for 250/150/150 iterations: 7, 13 and
  # 26 blocks (22, 40 and 79 latent frames; 26 rather than 27 so the teacher's last phase, 81,
  # covers the whole rollout it scores). Self-Forcing's DMD defaults (base): guidance 3 in its
  # convention (= standard CFG 4), shift-then-clamp timesteps, EMA from step 200, one exit step
  # for all blocks.
  c.ode_init.blocks, c.ode_init.noisy_blocks = 7, 3
  c.distill.rollout_curriculum = ((7, 250), (13, 150), (26, 150))
  c.generate.guidance = 3.0
  c.train.checkpoint_every = 500
  c.train.log_every = 10
  return c
