"""The shared base configuration every experiment in `experiments/` starts from.

One `ml_collections.ConfigDict` with these groups:
  model   the video DiT (Wan 2.1 architecture) and how it is computed (dtype, scan, remat,
          attention)
  mesh    device-mesh shape and the logical-axis rules mapping model axes to mesh axes
  data    the clip shape, the synthetic latent source, episode datasets and their generation
  train   optimizer, schedule, flow matching, checkpointing, logging, profiling
  distributed  multi-host initialisation

Experiments override fields; `relic_jax.config.validate` checks the result.
"""

import importlib.util
import os

import ml_collections

# Mesh axes, outermost first. `data` is pure data parallelism, `fsdp` shards params and batch,
# `context` shards the token sequence, `tensor` shards heads and the FFN hidden dimension.
MESH_AXES = ("data", "fsdp", "context", "tensor")

# The values of config.train.init_from / config.vae.init_from that mean "no pretrained weights".
NO_INIT = ("", "none", "None")

# Logical axis -> mesh axes. Model code names only logical axes (see models/layers.py).
# A logical axis may map to a tuple of mesh axes, or None (replicated).
DEFAULT_RULES = (
    # activations
    ("batch", ("data", "fsdp")),
    ("act_len", "context"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_text_len", None),
    # params
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("patch", None),
    ("cond_in", None),
    ("text_embed", None),
    ("freq", None),
    ("modulation", None),
    ("modulation_out", "tensor"),
    ("layers", None),
    ("norm", None),
    ("vocab", None),
    ("text_mlp", None),
    ("text_out", None),
)


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0

  # ---------------------------------------------------------------- model
  m = c.model = ml_collections.ConfigDict()
  m.dim = 64
  m.ffn_dim = 128
  m.num_heads = 2
  m.num_layers = 2
  m.in_channels = 16
  m.out_channels = 16
  m.patch_size = (1, 2, 2)
  m.text_dim = 32          # umT5 gives 4096; tiny configs use a small random embedding
  # "none": text arrives as embeddings [B, L, text_dim] made elsewhere (the synthetic source's
  # random ones); "bytes": as byte tokens [B, L] (our captions), embedded by a small built-in
  # transformer trained with the DiT (models/text_encoder.py); "umt5": as Wan's umT5
  # embeddings (text_dim = its d_model, 4096 for umT5-XXL), which `relic encode` stores in the
  # latent cache and `relic generate` computes for its caption, with the umT5 imported by
  # `relic import-umt5` into text_encoder_from (inference/text.py).
  m.text_encoder = "none"
  m.text_encoder_from = ""
  m.text_encoder_width = 64
  m.text_encoder_layers = 2
  m.freq_dim = 256         # sinusoidal timestep embedding width
  m.eps = 1e-6
  m.qk_norm = True         # RMS norm across heads on q and k (Wan: "rms_norm_across_heads")
  m.cross_attn_norm = True # affine LayerNorm before text cross-attention
  m.rope_theta = 10000.0
  # YaRN extension of the temporal RoPE axis (1.0 = off). Positions up to
  # yarn_original_frames are what the pretrained model saw (21 latent frames = 5 s for Wan).
  m.yarn_factor = 1.0
  m.yarn_original_frames = 21
  # YaRN's ramp, in full periods of a temporal RoPE pair within yarn_original_frames: pairs
  # turning >= beta_fast times keep their frequency, pairs turning <= beta_slow times are
  # divided by yarn_factor, linear between. YaRN's LLM values (32, 1) assume thousands of
  # positions; over Wan's 21 latent frames the fastest temporal pair turns only ~3.3 times, so
  # 32 would interpolate every pair. 2 keeps the pairs that turn at least twice (the two
  # fastest of 22 at head_dim 128); 1 is YaRN's own lower end.
  m.yarn_beta_fast = 2.0
  m.yarn_beta_slow = 1.0
  # "bidirectional" (teacher) or "block_causal" (student: a block of block_frames latent
  # frames sees itself and every earlier block).
  m.attention_mode = "bidirectional"
  m.block_frames = 3
  m.first_block_frames = 1   # frame 0, the clean image latent, is a block of its own
  # Implementation of the attention kernel: "xla" (any backend), "cudnn" (NVIDIA flash
  # attention through cuDNN; bf16/fp16 only), "splash" (TPU Pallas splash attention; runs in
  # the slow Pallas interpreter on other backends, for testing).
  m.attention_impl = "xla"
  # The kernel of attention over the KV cache (the student: generation, ODE init and the
  # distillation rollout), which must take a key mask: "xla" or "chunked" (the cache's empty
  # slots are masked). "": the same as attention_impl. So the bidirectional teacher and critic
  # can run splash (TPU) or cudnn (GPU) while the cached student runs "chunked".
  m.cache_attention_impl = ""
  m.dtype = "float32"        # compute dtype of matmuls
  m.param_dtype = "float32"  # storage dtype of params
  m.scan_layers = True
  # "none", "full", "dots_saveable", "dots_no_batch_saveable", "offload_block_input"
  m.remat_policy = "none"
  # RELIC conditioning, 0 = off (plain Wan). action_dim 13: RELIC's action magnitudes per video
  # frame; pose_dim 12: the flattened 3x4 camera-to-first-frame extrinsics per video frame. Each
  # goes through an encoder (temporal patchify by cond_frames_per_latent, then an MLP); actions
  # are added to the hidden states after self-attention, poses to Q and K, in every block,
  # through zero-initialised projections.
  m.action_dim = 0
  m.pose_dim = 0
  m.cond_frames_per_latent = 4
  # The pose's format inside the model (poses arrive as the 12-d extrinsics either way):
  # "extrinsics" (one embedding per latent frame) or "plucker" (per-token Pluecker rays through
  # the token centres of a pinhole camera of horizontal FOV plucker_fov_deg: ViZDoom's 90
  # degrees at 4:3, centre-cropped to a square, is ~74 degrees).
  m.pose_format = "extrinsics"
  m.plucker_fov_deg = 74.0

  # ---------------------------------------------------------------- mesh
  mesh = c.mesh = ml_collections.ConfigDict()
  mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "context": 1, "tensor": 1})
  mesh.rules = DEFAULT_RULES

  # ---------------------------------------------------------------- data
  d = c.data = ml_collections.ConfigDict()
  d.source = "synthetic"     # "synthetic" (no download) or "latents" (the latent cache)
  d.latent_frames = 4       # T latent frames per clip (the first is the clean image latent)
  d.latent_height = 8
  d.latent_width = 8
  d.text_len = 8
  d.num_examples = 256      # size of the synthetic dataset
  d.shuffle = True
  # Episode datasets (`relic data`): where they live ("" = <workdir>/data) and how clips of
  # 1 + 4 (latent_frames - 1) video frames are cut from them (data_pipeline/loader.py).
  d.dir = ""
  # Your own posed episodes instead of ViZDoom: a source directory in the ingest format
  # (data_pipeline/ingest.py; `relic pipeline --data=ingest:DIR` sets it). `relic data` (and
  # the pipeline's data stage) then ingests it, and every later stage takes the frame rate and
  # action scale from the ingested dataset (stages.dataset_config). "" = generate ViZDoom.
  d.ingest = ""
  d.clip_stride = 4          # video frames between the starts of consecutive clips
  # The latent cache (`relic encode`) holds clips of derive.cache_frames(cfg) latent frames (the
  # longest horizon any stage reads; shorter ones read prefixes), started every
  # cache_clip_stride video frames; 0 = clip_stride. Long clips cost encoding time per clip:
  # a larger stride keeps the cache's total frames (and `relic encode`'s time) bounded.
  d.cache_clip_stride = 0
  # RELIC's time-reverse augmentation: forward to t*, then back. In the latent cache the turn
  # t* is drawn for one of the cached horizons and the clip keeps bouncing between frame 0 and
  # t* (a triangle wave), so every prefix is a forward clip, a palindrome or a multi-turn one.
  d.palindrome_prob = 0.5
  d.crop = "center"          # "center" or "random": crop to the clip's aspect, then resize
  d.spatial_stride = 8       # pixels per latent (the VAE): frames are 8*latent_height high
  d.verify_checksums = True  # SHA-256 of each shard when first opened
  d.heldout_episodes = 1     # the dataset's last episodes, kept out of training (evaluation)
  d.latent_dir = ""          # the latent cache (`relic encode`); "" = <workdir>/latents
  d.normalize_latents = True # source "latents": (z - mean) / std per channel (cache.json stats)
  d.encode_batch_size = 8    # clips per VAE call in `relic encode`
  # ViZDoom generation (`relic data`, data_pipeline/doom.py)
  g = d.gen = ml_collections.ConfigDict()
  g.wads = ("freedoom2",)    # freedoom1 (E1M1..E4M9) and/or freedoom2 (MAP01..MAP32)
  g.maps = ()                # "wad/MAP": only these maps; () = every map of the wads
  g.heldout_maps = ("freedoom2/MAP05", "freedoom2/MAP15")  # kept out, for evaluation
  g.num_episodes = 8         # on the training maps
  # episodes on the held-out maps, after the training ones (data.heldout_episodes must equal
  # it when > 0, so the held-out split is the held-out maps); 0: the held-out split is the
  # last data.heldout_episodes training-map episodes
  g.heldout_map_episodes = 0
  g.episodes_per_shard = 2
  g.frames_per_episode = 300  # at 17.5 fps: ~17 s
  g.height = 64              # stored frame size
  g.width = 64
  g.render_resolution = "256x192"  # ViZDoom's; centre-cropped and resized to height x width
  g.tics_per_frame = 2       # Doom runs at 35 tics/s: 2 -> 17.5 fps
  g.max_pitch_deg = 20.0
  g.spawn = "random"         # "random": a random open spot of the map; "start": the player start
  g.codec = "jpeg"           # "jpeg" or "png" (lossless)
  g.jpeg_quality = 95
  g.workers = 0              # processes; 0 = one per CPU core

  # ---------------------------------------------------------------- memory (student KV cache)
  # relic_jax/memory/kv_cache.py. "relic": a window of the last `window` latent frames plus a
  # memory of every older frame, pooled by schedule[i % len] per side; "full": nothing
  # pooled (full history); "window": no memory; "window_sink": the window plus frame 0 kept
  # whole forever and nothing else (the evaluation's baseline for "is it more than keeping the
  # input image?", StreamingLLM's attention sink in RELIC's terms). max_frames sizes the
  # preallocated buffers (latent frames of a session, frame 0 included: 1 + 3 x 80 = 60 s at
  # 4 latent frames/s).
  mem = c.memory = ml_collections.ConfigDict()
  mem.mode = "relic"
  mem.window = 6
  mem.schedule = (1, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4)  # RELIC's S
  mem.pool = "mean"          # how a patch becomes one token: "mean" or "subsample" (middle token)
  mem.kv_dtype = "float32"   # "float32", "bfloat16" or "float8_e4m3fn" (with a per-token scale)
  mem.max_frames = 241
  mem.overflow = "error"     # past max_frames: "error", or "drop" (stop adding to the memory)

  # ---------------------------------------------------------------- generate (the student)
  gen = c.generate = ml_collections.ConfigDict()
  gen.timesteps = (1000, 750, 500, 250)  # few-step sampler, per block
  gen.shift = 5.0
  gen.action_scale = 0.06    # metres per action unit per video frame, to integrate poses: the
                             # mean displacement per frame of the ViZDoom clips (tiny data: 0.060)
  gen.decoder = "vae"        # "vae" (the full streaming decoder) or "tiny"
  gen.fps = 17.5             # video frames per second (the data's)
  # The one classifier-free guidance of the distribution the student learns: the teacher's ODE
  # trajectories of `relic ode_init` and DMD's real score in `relic distill` both read it, so
  # the ODE-init targets and DMD pull to the same distribution (null text: zeros for byte
  # captions, the empty caption's umT5 embedding: training/teacher.null_text). What the
  # number means is `cfg_convention`'s: "self_forcing" (Self-Forcing's code, the default):
  # v_cond + guidance (v_cond - v_null), so 0 = no guidance and Self-Forcing's 3.0 = standard
  # 4; "standard": v_null + guidance (v_cond - v_null), 1 = no guidance. Any guidance needs a
  # teacher with an unconditional branch (train.text_dropout > 0, or train.init_from
  # pretrained weights): validate() refuses it otherwise. The base teacher has no caption
  # dropout, so the default is no guidance; small, wan_1_3b and relic_14b use Self-Forcing's 3.
  gen.guidance = 0.0
  gen.cfg_convention = "self_forcing"

  # ---------------------------------------------------------------- ode_init (the student's start)
  # `relic ode_init` (training/ode_init.py): the teacher's ODE trajectories from noise for
  # `num_trajectories` clips (an Euler solver of `solver_steps` steps with CFG
  # generate.guidance on the text), stored in <workdir>/ode_init/trajectories; the block-causal
  # student regresses the clean end point from their states at its few-step timesteps
  # (config.generate.timesteps) with hybrid forcing (RELIC): of `blocks` blocks the first
  # blocks - noisy_blocks are clean and reach the noisy ones through the KV cache, pooled
  # exactly as the memory holds them. The clean context (frame 0 + the clean blocks) must be
  # longer than memory.window (validate() checks it when memory.mode is relic or full), so the
  # noisy blocks read pooled memory: 4 blocks of 3 with 1 noisy = 10 clean frames > 6.
  o = c.ode_init = ml_collections.ConfigDict()
  o.num_trajectories = 64
  o.solver_steps = 40
  o.blocks = 4               # clip length: 1 + blocks * model.block_frames latent frames
  o.noisy_blocks = 1         # K: the last K blocks are noised, the others clean context
  # the number of clean blocks drawn per step from 0..blocks - noisy_blocks (True), so every
  # block position is trained, the first after the image too; False: always the longest
  # context (then a session's first blocks are never regressed: measured on the demo, its
  # first latent frame after the image reached 18.5 dB PSNR against 23 for the later ones)
  o.random_context = True
  o.train = ml_collections.ConfigDict({
      "steps": 200, "batch_size": 8, "lr": 1e-4, "warmup_steps": 20, "ema_decay": 0.0,
      "checkpoint_every": 100, "log_every": 10})

  # ---------------------------------------------------------------- distill (self-forcing DMD)
  # `relic distill` (training/self_forcing.py, training/distill.py). Each step rolls the student
  # out over `blocks` blocks with its own KV cache (the inference path, a random sampler exit
  # step), updates the critic (fake score) by flow matching on the rollout, and every
  # critic_ratio-th step the generator by DMD: real score = the frozen teacher with CFG
  # generate.guidance, at a noise level drawn by `timestep_sampling`.
  ds = c.distill = ml_collections.ConfigDict()
  # (blocks, steps), in order: rollout lengths. RELIC: 5 s -> 10 s -> 20 s rollouts for 250,
  # 150 and 150 iterations; each config scales that shape. The longest rollout must read the
  # memory: frame 0 + (blocks - 1) blocks of context > memory.window (validate() checks it
  # when memory.mode is relic or full). Base: 7, 13 and 25 latent frames (4 blocks: 10 frames
  # of context > the window of 6).
  ds.rollout_curriculum = ((2, 20), (4, 12), (8, 12))
  ds.backprop = "replayed"   # "replayed" (block by block, constant memory) or "naive"
  ds.naive_remat = True      # naive: rematerialise each block in the backward pass
  ds.critic_ratio = 5        # critic updates per generator update (Self-Forcing: 5)
  # DMD / critic noise level (choices.DMDTimestepSampling), from t in [min_timestep,
  # max_timestep] of 1000 and generate.shift. "shift_then_clamp" (Self-Forcing's code, the
  # default): t ~ U[0, 1000), shifted, then clamped to [20, 980]: P(sigma > 0.9) ~ 0.36 at
  # shift 5. "uniform_shifted_range" (this project before): sigma uniform between the shifted
  # ends: P(sigma > 0.9) ~ 0.11.
  ds.timestep_sampling = "shift_then_clamp"
  ds.min_timestep = 20.0     # Self-Forcing: 20 and 980 (of 1000)
  ds.max_timestep = 980.0
  # One random sampler exit step shared by all blocks of a rollout (Self-Forcing's default);
  # False: an exit step per block.
  ds.same_exit_across_blocks = True
  ds.gen_lr = 2e-6           # RELIC: generator 2e-6, critic 4e-7, AdamW betas (0, 0.999)
  ds.critic_lr = 4e-7
  ds.b1 = 0.0
  ds.b2 = 0.999
  ds.weight_decay = 0.01
  ds.grad_clip = 10.0
  ds.ema_decay = 0.99        # the generator's EMA (what `relic generate` uses)
  # The EMA starts at this distill step (critic-only steps count; Self-Forcing: 200); before
  # it the EMA equals the generator's params.
  ds.ema_start_step = 200
  ds.batch_size = 4
  ds.checkpoint_every = 20
  ds.keep_checkpoints = 3
  ds.log_every = 5

  # ---------------------------------------------------------------- evaluate
  # `relic evaluate` (relic_jax/evaluation/evaluate.py): the truth is either rendered (on
  # held-out maps, the data source renders each scripted action sequence) or recorded (the
  # held-out episodes of the dataset); the student generates from the truth's frame 0, caption
  # and actions, once per method: "relic" (the configured memory), "window" (no memory),
  # "window_sink" (the window and frame 0 only: what keeping the input image alone gives),
  # "full" (full history), "copy_last" (frame 0 repeated). Scripts are built-in names or files
  # (relic_jax/inference/scripts.py).
  ev = c.evaluate = ml_collections.ConfigDict()
  # Where the truth comes from (relic_jax/evaluation/recorded.py): "doom" (the scripts below
  # on the maps below), "recorded" (the dataset's last data.heldout_episodes episodes, as
  # recorded: only the revisits they happen to hold), or "auto": recorded when the dataset was
  # ingested (`relic data ingest`), doom otherwise.
  ev.truth = "auto"
  # recorded truth only: seconds of each held-out episode evaluated at most, from its frame 0,
  # cut to whole blocks (40 s: as long as the longest default script)
  ev.max_seconds = 40.0
  # every default script has late revisits (views first seen after frame 0, revisited more
  # than a window later): relic_jax/inference/scripts.py; 84 s of video per map in all
  ev.scripts = ("look_around", "room_visit", "tour_20s", "tour_40s")
  ev.maps = ()               # "wad/MAP" names; () = data.gen.heldout_maps
  ev.episodes_per_map = 1    # start points (random open spots) per map and script
  ev.methods = ("relic", "window", "window_sink", "full", "copy_last")
  ev.revisit_distance = 0.3  # metres: a frame revisits an earlier one closer than this ...
  ev.revisit_angle_deg = 10.0  # ... whose viewing direction is within this angle (the same
                             # rule decides "not frame 0's view" for late revisits)
  ev.videos = True           # MP4s (generated | truth) per script and map
  # The pose estimator behind the action-following metrics
  # (relic_jax/evaluation/pose_estimation.py), fitted on the real frames of the training
  # episodes to give the camera motion between frames t and t + stride. kind "similarity"
  # (default): the zoom and shift between the frames, mapped to dolly / pan / tilt by a linear
  # calibration (similarity_pose.py; no training, ~4 s on the tiny data; on the held-out maps'
  # scripts it beats a static camera in translation and rotation); "learned": a small CNN
  # (width, steps, batch_size, lr, seed are its training), which does not generalise there.
  ev.pose_estimator = ml_collections.ConfigDict({
      "kind": "similarity", "stride": 4, "width": 32, "steps": 1000, "batch_size": 32,
      "lr": 1e-3, "seed": 0})

  # ---------------------------------------------------------------- vae
  # The Wan 2.1 causal video VAE (relic_jax/models/vae.py; these defaults are Wan's, 127M
  # params): strides 4 in time and 2 ** (len(dim_mult) - 1) = 8 in space, z_dim channels
  # (= model.in_channels). `relic train_vae` trains it in <workdir>/vae with config.train
  # overridden by vae.train.
  v = c.vae = ml_collections.ConfigDict()
  v.base_dim = 96
  v.z_dim = 16
  v.dim_mult = (1, 2, 4, 4)
  v.num_res_blocks = 2
  v.temporal_downsample = (False, True, True)
  v.dtype = "float32"
  v.param_dtype = "float32"
  v.kl_weight = 1e-6         # KL (mean per latent element) vs L1 (mean per pixel)
  # A pretrained VAE: `relic import-wan-vae --out` params, or a diffusers AutoencoderKLWan
  # folder / pipeline root (Wan 2.1's, or the demo's assets/demo; relic_jax/weights/pretrained.py).
  # "" or "none": trained from scratch for vae.train.steps.
  v.init_from = ""
  # With init_from: steps of further training on this run's data; 0 = used as is (evaluated,
  # not trained; its own latent statistics and tiny decoder too, where the folder has them).
  v.finetune_steps = 0
  # Phases of training on longer clips after vae.train's: ((latent_frames, steps, batch_size),
  # ...), each starting from the previous phase's params (fresh optimizer and schedule), in
  # <workdir>/vae/clips_<i>_<frames>f, the last in <workdir>/vae. A causal VAE trained only on
  # data.latent_frames-long clips has every frame within its temporal receptive field of the
  # clip's zero-padded start, and fails past it: the demo's assets VAE, trained on 9-frame
  # clips, reconstructs them at 29 dB but frames 16-97 of a 97-frame clip at 15-21 dB.
  # Empty: vae.train only. The tiny decoder trains on the last phase's clips.
  v.clip_curriculum = ()
  v.eval_clips = 16          # held-out clips evaluated at the end of the stage
  # Latent frames of the evaluated clips: 0 = the longest clip a DiT stage reads (the latent
  # cache's: data.latent_frames, the teacher's horizons), so the figures cover what `relic
  # encode` writes.
  v.eval_latent_frames = 0
  v.tiny_dim = 64            # the tiny decoder's width (relic_jax/models/tiny_decoder.py)
  v.tiny_steps = 1000        # its training steps after the VAE's (0: no tiny decoder)
  v.train = ml_collections.ConfigDict({
      "steps": 2000, "batch_size": 8, "lr": 1e-4, "warmup_steps": 100, "ema_decay": 0.0,
      "checkpoint_every": 500, "log_every": 50})

  # ---------------------------------------------------------------- train
  t = c.train = ml_collections.ConfigDict()
  t.steps = 100
  t.batch_size = 4          # global batch
  t.lr = 1e-3
  t.warmup_steps = 10
  t.schedule = "cosine"     # "cosine" or "constant" (both after linear warm-up)
  t.min_lr_ratio = 0.1
  t.b1 = 0.9
  t.b2 = 0.999
  t.weight_decay = 0.01
  t.grad_clip = 1.0         # global-norm clipping; 0 disables
  t.ema_decay = 0.999       # 0 disables EMA
  # flow matching
  t.timestep_shift = 5.0
  t.timestep_sampling = "uniform"  # "uniform" or "logit_normal"
  t.clean_first_frame = True       # image conditioning: frame 0 is the clean latent, t=0
  t.per_frame_noise = False        # diffusion forcing: an independent timestep per frame
  # Probability that an example's text is replaced by the null text (all-zero byte tokens;
  # umT5: the empty caption's embedding, the latent cache's null_text), so the teacher also
  # learns the unconditional velocity that classifier-free guidance (ode_init.guidance,
  # distill.guidance) subtracts. 0 = off.
  t.text_dropout = 0.0
  # The teacher's horizon curriculum (training/teacher.py train_teacher): ((latent_frames,
  # steps), ...) phases in order, each starting from the previous phase's params (RELIC: 5 s
  # -> 10 s -> 20 s). Empty: one phase of data.latent_frames for train.steps.
  t.horizon_curriculum = ()
  # With a curriculum: a phase longer than model.yarn_original_frames (and every phase after
  # it) gets model.yarn_factor = latent_frames / yarn_original_frames (the largest so far), unless
  # model.yarn_factor was set (!= 1), which is then kept for every phase.
  t.yarn_auto = True
  # checkpointing and logging
  t.checkpoint_every = 50
  t.keep_checkpoints = 3
  t.async_checkpointing = True
  t.log_every = 10
  t.profile_start_step = -1        # >= 0: trace profile_num_steps steps from this step
  t.profile_num_steps = 3
  t.init_from = ""                 # a new run starts from these params (`relic import-wan --out`)
  t.peak_flops_per_device = 0.0    # 0: look the device kind up in a table (None on CPU)
  t.progress_bar = True

  # ---------------------------------------------------------------- distributed
  dist = c.distributed = ml_collections.ConfigDict()
  dist.initialize = False          # call jax.distributed.initialize (multi-host)
  dist.coordinator_address = ""
  dist.num_processes = 0           # 0: let JAX detect (TPU pods, SLURM)
  dist.process_id = -1
  return c


def parent_config(experiment_file: str, parent: str) -> ml_collections.ConfigDict:
  """The config of the experiment `parent` (a file name without .py) in the directory of
  `experiment_file`: how an experiment starts from its parent and changes what differs, as
  big_vision's configs do. Loaded by path, so it works however the child was loaded (relic's
  --config, a sweep, a test)."""
  path = os.path.join(os.path.dirname(os.path.abspath(experiment_file)), f"{parent}.py")
  spec = importlib.util.spec_from_file_location(f"relic_experiment_{parent}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
