"""Config validation: every wrong value gets one error naming the field and the fix."""

import math
import numbers

import ml_collections

from relic_jax.config.base import MESH_AXES, NO_INIT
from relic_jax.config.choices import (AttentionImpl, AttentionMode, CFGConvention, Choice, Codec,
                                     Crop, DataSource, Decoder, DMDTimestepSampling, Dtype,
                                     KVDtype, LRSchedule, MemoryMode, MemoryPool, Overflow,
                                     PoseEstimatorKind, PoseFormat, RematPolicy, TextEncoder,
                                     TimestepSampling, Wad)


class ConfigError(ValueError):
  """A config value is wrong. The message names the field and how to fix it."""


def _fail(field, value, why, fix):
  raise ConfigError(f"config.{field}={value!r}: {why}. Fix: {fix}.")


def _choice(cfg, field, choice: type[Choice], prefix=None):
  """The field's value must be one of `choice`'s (a `config.choices` Enum). prefix: the dotted
  path of `cfg` in the full config, for the message (e.g. "model")."""
  value = _get(cfg, field)
  valid = choice.values()
  if value not in valid:
    _fail(f"{prefix}.{field}" if prefix else field, value, "unknown value",
          f"use one of {', '.join(map(repr, valid))}")


# Documented upper limits of magnitudes no run means (docs/usage.md "Errors"): past them a
# value is a typo (1e30 for 1e-3) that would train on NaN or integrate the camera to infinity.
LIMITS = {"train.lr": 1.0, "generate.fps": 240.0, "generate.action_scale": 10.0,
          "generate.shift": 100.0}


def _positive(cfg, field, allow_zero=False, prefix=None):
  value = _get(cfg, field)
  name = f"{prefix}.{field}" if prefix else field
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
      value) and (value >= 0 if allow_zero else value > 0)
  if not ok:
    _fail(name, value,
          "must be a finite " + ("non-negative" if allow_zero else "positive") + " number",
          "set a value " + (">= 0" if allow_zero else "> 0"))
  if name in LIMITS and value > LIMITS[name]:
    _fail(name, value, f"is above the limit {LIMITS[name]:g} (relic_jax/config/validation.py "
          "LIMITS)", f"use a value <= {LIMITS[name]:g}")


def _get(cfg, dotted):
  node = cfg
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(
          f"config.{dotted} is missing. Fix: start the experiment config from "
          "relic_jax.config.get_base_config() so every field exists.")
    node = node[part]
  return node


def head_dim_split(head_dim: int) -> tuple[int, int, int]:
  """Wan 2.1's split of the head dim into (temporal, height, width) RoPE parts: 128 -> 44/42/42."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def validate_model(m: ml_collections.ConfigDict, prefix: str = "model") -> None:
  for f in ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels",
            "text_dim", "freq_dim", "block_frames"):
    v = m[f]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(f"{prefix}.{f}", v, "must be a positive integer", "set a positive integer")
  for f in ("action_dim", "pose_dim"):
    v = m[f]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      _fail(f"{prefix}.{f}", v, "must be a non-negative integer", "use 0 (off) or the vector size")
  _choice(m, "text_encoder", TextEncoder, prefix)
  if not isinstance(m.get("text_encoder_from", ""), str):
    _fail(f"{prefix}.text_encoder_from", m.text_encoder_from, "must be a path (a string)",
          "set it to the --out of `relic import-umt5`, or '' for none")
  _choice(m, "pose_format", PoseFormat, prefix)
  if m.pose_format == PoseFormat.PLUCKER and m.pose_dim not in (0, 12):
    _fail(f"{prefix}.pose_dim", m.pose_dim, "Pluecker rays are computed from the 12-d "
          "extrinsics", "use pose_dim=12")
  if not 0 < m.plucker_fov_deg < 180:
    _fail(f"{prefix}.plucker_fov_deg", m.plucker_fov_deg, "must be in (0, 180)",
          "use the frames' horizontal field of view in degrees")
  if not (isinstance(m.first_block_frames, int) and 1 <= m.first_block_frames <= m.block_frames):
    _fail(f"{prefix}.first_block_frames", m.first_block_frames,
          f"must be in [1, block_frames={m.block_frames}]",
          "use 1 (the image latent alone) or block_frames (equal blocks)")
  for f in ("text_encoder_width", "text_encoder_layers"):
    v = m[f]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(f"{prefix}.{f}", v, "must be a positive integer", "set a positive integer")
  if m.text_encoder_width % 2:
    _fail(f"{prefix}.text_encoder_width", m.text_encoder_width,
          "must be even (the built-in text encoder has 2 heads)", "use an even width")
  v = m.cond_frames_per_latent
  if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
    _fail(f"{prefix}.cond_frames_per_latent", v, "must be a positive integer",
          "use 4, the VAE's temporal stride")
  if m.dim % m.num_heads:
    _fail(f"{prefix}.num_heads", m.num_heads, f"does not divide model.dim={m.dim}",
          "choose num_heads so that dim % num_heads == 0")
  head_dim = m.dim // m.num_heads
  t, h, _ = head_dim_split(head_dim)
  if head_dim % 2 or t <= 0 or h <= 0 or t % 2:
    _fail(f"{prefix}.dim", m.dim, f"head dim {head_dim} cannot be split into even temporal/"
          "height/width RoPE parts", "use a head dim that is even and at least 6 (Wan uses 128)")
  if m.freq_dim % 2:
    _fail(f"{prefix}.freq_dim", m.freq_dim, "must be even", "use an even width such as 256")
  ps = tuple(m.patch_size)
  if len(ps) != 3 or any((not isinstance(p, int)) or p <= 0 for p in ps):
    _fail(f"{prefix}.patch_size", m.patch_size, "must be three positive integers (t, h, w)",
          "use (1, 2, 2) as Wan does")
  _choice(m, "attention_mode", prefix=prefix, choice=AttentionMode)
  _choice(m, "attention_impl", prefix=prefix, choice=AttentionImpl)
  _choice(m, "remat_policy", prefix=prefix, choice=RematPolicy)
  _choice(m, "dtype", prefix=prefix, choice=Dtype)
  _choice(m, "param_dtype", prefix=prefix, choice=Dtype)
  if m.attention_impl == AttentionImpl.CUDNN and m.dtype == Dtype.FLOAT32:
    _fail(f"{prefix}.attention_impl", "cudnn", "cuDNN flash attention needs bf16/fp16 inputs",
          "set model.dtype='bfloat16' or model.attention_impl='xla'")
  if m.attention_impl == AttentionImpl.SPLASH and m.dtype == Dtype.FLOAT16:
    _fail(f"{prefix}.attention_impl", "splash", "the splash kernel is a TPU kernel and TPUs "
          "compute in bfloat16, not float16", "set model.dtype='bfloat16' (or 'float32'), or "
          "model.attention_impl='xla'")
  masked = " or ".join(map(repr, AttentionImpl.with_key_mask()))
  fix = f"set model.cache_attention_impl to {masked} ('chunked': memory-efficient, any backend)"
  own = m.get("cache_attention_impl", "")
  if own and own not in AttentionImpl.with_key_mask():
    _fail(f"{prefix}.cache_attention_impl", own, "attention over the KV cache needs a kernel "
          f"that takes a key mask ({masked})", fix)
  if not own and m.attention_impl not in AttentionImpl.with_key_mask():
    _fail(f"{prefix}.attention_impl", m.attention_impl, "is also the KV cache's kernel "
          f"(model.cache_attention_impl=''), which needs one that takes a key mask ({masked})",
          fix + ", or model.attention_impl to one of them")
  if m.yarn_factor < 1.0:
    _fail(f"{prefix}.yarn_factor", m.yarn_factor, "YaRN can only extend the context",
          "use 1.0 (off) or a factor > 1")
  _positive(m, "yarn_original_frames", prefix=prefix)
  if not m.yarn_beta_fast > m.yarn_beta_slow >= 0:
    _fail(f"{prefix}.yarn_beta_fast", m.yarn_beta_fast, "YaRN's ramp needs beta_fast > "
          f"beta_slow >= 0 (periods within yarn_original_frames; beta_slow={m.yarn_beta_slow})",
          "use e.g. the defaults (2, 1): over 21 latent frames the fastest temporal pair "
          "turns ~3.3 times")
  _positive(m, "rope_theta", prefix=prefix)
  _positive(m, "eps", prefix=prefix)


def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  shape = dict(mesh.shape)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    _fail("mesh.shape", shape, f"unknown mesh axes {sorted(unknown)}",
          f"use only the axes {MESH_AXES}")
  for axis, v in shape.items():
    if not isinstance(v, int) or (v <= 0 and v != -1):
      _fail(f"mesh.shape.{axis}", v, "must be a positive integer or -1 (fill the rest)",
            "use a positive size, or -1 on one axis")
  if sum(v == -1 for v in shape.values()) > 1:
    _fail("mesh.shape", shape, "more than one axis is -1", "let at most one axis fill the rest")
  mesh_axes = set(MESH_AXES)
  for entry in mesh.rules:
    if len(entry) != 2:
      _fail("mesh.rules", entry, "each rule is (logical_axis, mesh_axes)", "fix the rule")
    targets = entry[1] if isinstance(entry[1], (tuple, list)) else (entry[1],)
    for t in targets:
      if t is not None and t not in mesh_axes:
        _fail("mesh.rules", entry, f"mesh axis {t!r} does not exist",
              f"map to one of {MESH_AXES} or None")


def resolve_mesh_shape(shape: dict, num_devices: int) -> dict:
  """The mesh shape over all MESH_AXES (missing axes are 1) with the -1 axis filled in.

  Raises ConfigError, naming the mesh and the device count, for unknown axes, sizes that are
  not positive integers (or -1), more than one -1, or sizes that do not multiply to
  num_devices.
  """
  given = dict(shape)
  where = f"config.mesh.shape={given} over {num_devices} device(s)"
  unknown = sorted(set(given) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"{where}: unknown mesh axes {unknown}. Fix: use only the axes "
                      f"{MESH_AXES}.")
  for axis, v in given.items():
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (v <= 0 and v != -1):
      raise ConfigError(f"{where}: axis {axis!r} has size {v!r}, but sizes must be positive "
                        "integers or -1 (fill the rest). Fix: use a positive size, or -1 on "
                        "one axis.")
  full = {a: int(given.get(a, 1)) for a in MESH_AXES}
  fill = [a for a, v in full.items() if v == -1]
  known = math.prod(v for v in full.values() if v != -1)
  if len(fill) > 1:
    raise ConfigError(f"{where}: more than one axis ({', '.join(fill)}) is -1. Fix: let at "
                      "most one axis fill the rest.")
  if fill:
    if num_devices % known:
      raise ConfigError(
          f"{where}: the fixed axes multiply to {known}, which does not divide the "
          f"{num_devices} devices. Fix: choose axis sizes whose product divides {num_devices}.")
    full[fill[0]] = num_devices // known
  elif known != num_devices:
    raise ConfigError(
        f"{where}: the axes multiply to {known} but there are {num_devices} devices. Fix: make "
        f"the product {num_devices}, or set one axis to -1.")
  return full


def mesh_axes_of(mesh_cfg: ml_collections.ConfigDict, logical: str) -> tuple[str, ...]:
  """The mesh axes a logical axis is sharded over under config.mesh.rules (first rule wins)."""
  for name, target in mesh_cfg.rules:
    if name == logical:
      if target is None:
        return ()
      return tuple(target) if isinstance(target, (tuple, list)) else (target,)
  return ()


def validate_sharding(cfg: ml_collections.ConfigDict, shape: dict, num_processes: int = 1) -> None:
  """Checks that every sharded dimension splits evenly over its mesh axes.

  Params and the batch are arguments of the jitted train step, and JAX refuses an argument
  whose sharded dimension is not a multiple of the number of shards. `shape` is a resolved
  mesh shape (resolve_mesh_shape); num_processes is the number of hosts sharing the batch.
  """
  m, t = cfg.model, cfg.train
  if t.batch_size % num_processes:
    _fail("train.batch_size", t.batch_size, f"does not split over the {num_processes} processes",
          f"use a multiple of {num_processes}")
  pt, ph, pw = m.patch_size
  # (field, its value, what is split, the size of the sharded dimension, logical axis)
  dims = [
      ("train.batch_size", t.batch_size, "the global batch", t.batch_size, "batch"),
      ("model.dim", m.dim, "the model width (params' 'embed' axis)", m.dim, "embed"),
      ("model.dim", m.dim, "the model width (params' 'embed_out' axis)", m.dim, "embed_out"),
      ("model.dim", m.dim, "the attention projections' 'heads' axis", m.dim, "heads"),
      ("model.dim", m.dim, "the norms' 'norm' axis", m.dim, "norm"),
      ("model.dim", m.dim, "the time projection (6 * dim, 'modulation_out' axis)", 6 * m.dim,
       "modulation_out"),
      ("model.ffn_dim", m.ffn_dim, "the FFN hidden dimension ('mlp' axis)", m.ffn_dim, "mlp"),
      ("model.text_dim", m.text_dim, "the text embedding width ('text_embed' axis)", m.text_dim,
       "text_embed"),
      ("model.freq_dim", m.freq_dim, "the timestep embedding width ('freq' axis)", m.freq_dim,
       "freq"),
      ("model.in_channels", m.in_channels, "the patch embedding input ('patch' axis)",
       pt * ph * pw * m.in_channels, "patch"),
      ("model.out_channels", m.out_channels, "the output projection ('patch' axis)",
       pt * ph * pw * m.out_channels, "patch"),
  ]
  if m.scan_layers:
    dims.append(("model.num_layers", m.num_layers, "the stacked layers ('layers' axis)",
                 m.num_layers, "layers"))
  for i, phase in enumerate(cfg.vae.get("clip_curriculum", ())):
    dims.append(("vae.clip_curriculum", cfg.vae.clip_curriculum, f"phase {i}'s batch",
                 phase[2], "batch"))
  for field, value, what, size, logical in dims:
    axes = mesh_axes_of(cfg.mesh, logical)
    n = math.prod(shape[a] for a in axes)
    if size % n:
      split = " x ".join(f"{a}={shape[a]}" for a in axes)
      _fail(field, value, f"{what} has size {size}, which does not split over the {n} shards "
            f"of the mesh axes {split} (mesh {shape})",
            f"make it a multiple of {n}, or change config.mesh.shape so that "
            f"{' * '.join(axes)} divides {size}")


def validate_generation(cfg: ml_collections.ConfigDict) -> None:
  """config.memory (the student's KV cache) and config.generate (the few-step sampler)."""
  mem, gen = cfg.memory, cfg.generate
  _choice(mem, "mode", MemoryMode, prefix="memory")
  _choice(mem, "pool", MemoryPool, prefix="memory")
  _choice(mem, "kv_dtype", KVDtype, prefix="memory")
  _choice(mem, "overflow", Overflow, prefix="memory")
  for f in ("window", "max_frames"):
    v = mem[f]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(f"memory.{f}", v, "must be a positive integer", "set a positive integer")
  sched = tuple(mem.schedule)
  if not sched or any(not isinstance(x, int) or x <= 0 for x in sched):
    _fail("memory.schedule", sched, "must be a non-empty list of positive pooling factors",
          "use e.g. RELIC's (1, 4, 2, 4, ...)")
  if mem.max_frames < 1 + cfg.model.block_frames:
    _fail("memory.max_frames", mem.max_frames, "holds less than frame 0 and one block",
          f"use at least {1 + cfg.model.block_frames}")
  steps = tuple(gen.timesteps)
  if (not steps or any(not 0 < t <= 1000 for t in steps)
      or list(steps) != sorted(steps, reverse=True)):
    _fail("generate.timesteps", steps, "must be decreasing values in (0, 1000]",
          "use e.g. (1000, 750, 500, 250)")
  for f in ("shift", "action_scale", "fps"):
    _positive(gen, f, prefix="generate")
  _choice(gen, "decoder", Decoder, prefix="generate")


def standard_guidance(cfg: ml_collections.ConfigDict) -> float:
  """generate.guidance as a standard CFG scale w (v_null + w (v_cond - v_null); 1 = none):
  under the "self_forcing" convention (v_cond + g (v_cond - v_null)) w = g + 1."""
  g = float(cfg.generate.guidance)
  return g + 1.0 if cfg.generate.cfg_convention == CFGConvention.SELF_FORCING else g


def context_frames(cfg: ml_collections.ConfigDict, blocks: int) -> int:
  """Latent frames in the KV cache before the block after `blocks` blocks: frame 0's block and
  `blocks` blocks. The memory is read only when this exceeds memory.window."""
  return cfg.model.first_block_frames + blocks * cfg.model.block_frames


def _blocks_past_window(cfg: ml_collections.ConfigDict) -> int:
  """The fewest blocks whose context exceeds memory.window."""
  m = cfg.model
  return max(0, (cfg.memory.window - m.first_block_frames) // m.block_frames + 1)


def validate_student(cfg: ml_collections.ConfigDict) -> None:
  """The student's recipe (config.ode_init, config.distill, the guidance in config.generate):

  * the ODE init's clean context (frame 0 + blocks - noisy_blocks clean blocks) and the
    context of the longest distillation rollout's last block (frame 0 + blocks - 1 blocks)
    must be longer than memory.window when memory.mode is relic or full, so that training
    reads the pooled memory (otherwise every memory variant trains the same student);
  * classifier-free guidance needs a teacher with an unconditional branch: caption dropout
    (train.text_dropout > 0) or pretrained weights (train.init_from)."""
  o, d, gen, mem = cfg.ode_init, cfg.distill, cfg.generate, cfg.memory
  _choice(gen, "cfg_convention", CFGConvention, prefix="generate")
  _choice(d, "timestep_sampling", DMDTimestepSampling, prefix="distill")
  g = gen.guidance
  if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
    _fail("generate.guidance", g, "must be a finite number",
          "use 0 for no guidance (self_forcing convention) or e.g. 3.0")
  if standard_guidance(cfg) < 1.0:
    _fail("generate.guidance", g, f"is below no guidance under generate.cfg_convention="
          f"{gen.cfg_convention!r}", "use 0 (self_forcing) or 1 (standard) for none, or more")
  if not _is_int(d.ema_start_step) or d.ema_start_step < 0:
    _fail("distill.ema_start_step", d.ema_start_step, "must be a non-negative integer",
          "use e.g. 200 (Self-Forcing), or 0 to start the EMA at once")
  if not isinstance(d.same_exit_across_blocks, bool):
    _fail("distill.same_exit_across_blocks", d.same_exit_across_blocks,
          "must be True or False", "use True (Self-Forcing) or False")
  if not isinstance(o.random_context, bool):
    _fail("ode_init.random_context", o.random_context, "must be True or False",
          "use True (every block position trained) or False (always the longest context)")
  if not (_is_int(o.blocks) and _is_int(o.noisy_blocks) and 1 <= o.noisy_blocks <= o.blocks):
    _fail("ode_init.noisy_blocks", o.noisy_blocks, f"needs 1 <= noisy_blocks <= blocks="
          f"{o.blocks}", "set them so, e.g. blocks=4, noisy_blocks=1")
  cur = d.rollout_curriculum
  if (isinstance(cur, (str, bytes)) or not isinstance(cur, (tuple, list)) or not cur
      or any(isinstance(p, (str, bytes)) or not isinstance(p, (tuple, list)) or len(p) != 2
             or not _is_int(p[0]) or not _is_int(p[1]) or p[0] < 1 or p[1] < 1 for p in cur)):
    _fail("distill.rollout_curriculum", cur, "must be a non-empty list of (blocks >= 1, "
          "steps >= 1)", "e.g. ((2, 20), (4, 12), (8, 12))")
  if (standard_guidance(cfg) != 1.0 and not cfg.train.text_dropout
      and cfg.train.init_from in NO_INIT):
    _fail("generate.guidance", g, "classifier-free guidance (ODE-init trajectories and DMD's "
          "real score) subtracts the teacher's unconditional velocity, but this teacher never "
          "learns one (train.text_dropout=0 and no train.init_from pretrained weights)",
          "train the teacher with caption dropout (e.g. --config.train.text_dropout=0.1), or "
          "turn guidance off (generate.guidance=0 with cfg_convention 'self_forcing', 1 with "
          "'standard')")
  if mem.mode == MemoryMode.WINDOW:
    return  # no memory to train
  need = _blocks_past_window(cfg)
  clean = o.blocks - o.noisy_blocks
  if context_frames(cfg, clean) <= mem.window:
    _fail("ode_init.blocks", o.blocks, f"with noisy_blocks={o.noisy_blocks} the clean context "
          f"(frame 0 + {clean} block(s) = {context_frames(cfg, clean)} latent frames) fits in "
          f"memory.window={mem.window}, so hybrid forcing never reads the pooled memory "
          f"(memory.mode={mem.mode!r})", f"use ode_init.blocks >= {o.noisy_blocks + need} "
          f"(or memory.mode='window' to train without memory)")
  longest = max(int(p[0]) for p in cur)
  if context_frames(cfg, longest - 1) <= mem.window:
    _fail("distill.rollout_curriculum", cur, f"the longest rollout ({longest} block(s)) never "
          f"leaves memory.window={mem.window}: its last block reads "
          f"{context_frames(cfg, longest - 1)} latent frames of context, all in the window, so "
          f"distillation never reads the pooled memory (memory.mode={mem.mode!r})",
          f"end the curriculum with rollouts of >= {need + 1} blocks, e.g. RELIC's 5 s -> 10 s "
          "-> 20 s shape ((2, a), (4, b), (8, c)), or use memory.mode='window'")


def validate_vae_arch(v: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """The VAE's architecture fields (relic_jax/models/vae.py) and its strides against the
  data's (d: config.data)."""
  for f in ("base_dim", "z_dim", "num_res_blocks"):
    if not _is_int(v[f]) or v[f] <= 0:
      _fail(f"vae.{f}", v[f], "must be a positive integer", "use e.g. Wan's "
            f"{ {'base_dim': 96, 'z_dim': 16, 'num_res_blocks': 2}[f]}")
  mult = v.dim_mult
  if (isinstance(mult, (str, bytes)) or not isinstance(mult, (tuple, list)) or not mult
      or not all(_is_int(x) and x > 0 for x in mult)):
    _fail("vae.dim_mult", mult, "must be a non-empty tuple of positive integers (one channel "
          "multiplier per resolution level)", "use e.g. Wan's (1, 2, 4, 4)")
  if 2 ** (len(mult) - 1) != d.spatial_stride:
    _fail("vae.dim_mult", tuple(mult), f"has {len(mult)} levels, a spatial stride of "
          f"{2 ** (len(mult) - 1)}, but data.spatial_stride={d.spatial_stride}",
          f"use {int(math.log2(d.spatial_stride)) + 1} levels, e.g. Wan's (1, 2, 4, 4) for "
          "a stride of 8, or change data.spatial_stride")
  down = v.temporal_downsample
  if (isinstance(down, (str, bytes)) or not isinstance(down, (tuple, list))
      or len(down) != len(mult) - 1 or not all(isinstance(x, bool) for x in down)):
    _fail("vae.temporal_downsample", down, f"must be {len(mult) - 1} booleans, one per "
          f"downsampling level of vae.dim_mult={tuple(mult)}", "use e.g. (False, True, True) "
          "with dim_mult (1, 2, 4, 4)")
  for f in ("kl_weight", "tiny_steps"):
    _positive(v, f, allow_zero=True, prefix="vae")
  vt = v.train
  for f in ("steps", "batch_size", "checkpoint_every", "log_every"):
    _positive(vt, f, prefix="vae.train")
  for f in ("lr", "warmup_steps", "ema_decay"):
    _positive(vt, f, allow_zero=True, prefix="vae.train")
  if vt.lr > LIMITS["train.lr"]:
    _fail("vae.train.lr", vt.lr, f"is above the limit {LIMITS['train.lr']:g}",
          f"use a value <= {LIMITS['train.lr']:g}")


def validate_vae_init(v: ml_collections.ConfigDict) -> None:
  """vae.init_from / vae.finetune_steps / vae.clip_curriculum / vae.eval_latent_frames."""
  cur = v.get("clip_curriculum", ())
  if isinstance(cur, (str, bytes)) or not isinstance(cur, (list, tuple)):
    _fail("vae.clip_curriculum", cur, "must be a list of (latent_frames, steps, batch_size) "
          "phases", "use e.g. ((9, 300, 4),), or () for none")
  for i, phase in enumerate(cur):
    if (not isinstance(phase, (list, tuple)) or len(phase) != 3
        or not all(_is_int(x) and x > 0 for x in phase)):
      _fail("vae.clip_curriculum", cur, f"phase {i} ({phase!r}) is not three positive "
            "integers (latent_frames, steps, batch_size)", "write each phase as e.g. (9, 300, 4)")
  if cur and v.init_from not in NO_INIT and not v.finetune_steps:
    _fail("vae.clip_curriculum", cur, "trains the VAE further, but vae.init_from with "
          "vae.finetune_steps=0 uses the pretrained VAE as is", "set vae.finetune_steps > 0, "
          "or vae.clip_curriculum=()")
  if not _is_int(v.get("eval_latent_frames", 0)) or v.get("eval_latent_frames", 0) < 0:
    _fail("vae.eval_latent_frames", v.eval_latent_frames, "must be a non-negative integer",
          "use 0 (the longest clip the DiT stages read) or a number of latent frames")
  if not _is_int(v.finetune_steps) or v.finetune_steps < 0:
    _fail("vae.finetune_steps", v.finetune_steps, "must be a non-negative integer",
          "use 0 (a pretrained VAE used as is) or a number of steps")
  if v.finetune_steps and v.init_from in NO_INIT:
    _fail("vae.finetune_steps", v.finetune_steps, "fine-tunes a pretrained VAE, but "
          "vae.init_from is empty", "set vae.init_from, or train from scratch with "
          "vae.train.steps (and vae.finetune_steps=0)")


def validate_data(d: ml_collections.ConfigDict) -> None:
  """The episode-dataset fields: clip cutting and ViZDoom generation."""
  for f in ("clip_stride", "spatial_stride"):
    _positive(d, f, prefix="data")
  _positive(d, "cache_clip_stride", allow_zero=True, prefix="data")  # 0: data.clip_stride
  if not 0.0 <= d.palindrome_prob <= 1.0:
    _fail("data.palindrome_prob", d.palindrome_prob, "is a probability",
          "use a value in [0, 1] (0 turns the augmentation off)")
  _choice(d, "crop", Crop, prefix="data")
  if not isinstance(d.get("ingest", ""), str):
    _fail("data.ingest", d.ingest, "must be a directory path (a string)",
          "set it to the source directory of your episodes, or '' for ViZDoom")
  g = d.gen
  for f in ("num_episodes", "episodes_per_shard", "frames_per_episode", "height", "width",
            "tics_per_frame"):
    _positive(g, f, prefix="data.gen")
    if int(g[f]) != g[f]:
      _fail(f"data.gen.{f}", g[f], "must be an integer", "use a whole number")
  _positive(g, "workers", allow_zero=True, prefix="data.gen")
  _positive(g, "heldout_map_episodes", allow_zero=True, prefix="data.gen")
  if g.heldout_map_episodes:
    if not g.heldout_maps:
      _fail("data.gen.heldout_map_episodes", g.heldout_map_episodes,
            "needs held-out maps to render", "list maps in data.gen.heldout_maps, or set it to 0")
    if d.heldout_episodes != g.heldout_map_episodes:
      _fail("data.heldout_episodes", d.heldout_episodes,
            f"must equal data.gen.heldout_map_episodes ({g.heldout_map_episodes}) so that the "
            "held-out split is exactly the held-out maps' episodes",
            f"set data.heldout_episodes={g.heldout_map_episodes}")
  if not 0.0 <= g.max_pitch_deg <= 45.0:
    _fail("data.gen.max_pitch_deg", g.max_pitch_deg, "must be in [0, 45]",
          "Doom's software renderer shears rather than rotates; keep pitch small, e.g. 20")
  _choice(g, "codec", Codec, prefix="data.gen")
  if not 1 <= g.jpeg_quality <= 100:
    _fail("data.gen.jpeg_quality", g.jpeg_quality, "must be in [1, 100]", "use e.g. 95")
  if g.frames_per_episode < 2:
    _fail("data.gen.frames_per_episode", g.frames_per_episode, "an episode needs 2+ frames",
          "use e.g. 300")
  for f in ("wads", "maps", "heldout_maps"):
    if isinstance(g[f], str):
      _fail(f"data.gen.{f}", g[f], "must be a tuple of names, not one string",
            f"write it as a tuple, e.g. ({g[f]!r},)")
  for w in g.wads:
    if w not in Wad.values():
      _fail("data.gen.wads", tuple(g.wads), f"unknown WAD {w!r}",
            f"use some of {', '.join(map(repr, Wad.values()))}")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def validate_teacher_training(cfg: ml_collections.ConfigDict) -> None:
  """train.text_dropout, train.yarn_auto and train.horizon_curriculum (the teacher's phases).

  Only the curriculum's own structure is checked here: other stages (the VAE, ODE init) reuse
  the train group with the curriculum still in it, and each phase's full config is validated
  again when the trainer starts it."""
  t = cfg.train
  p = _get(cfg, "train.text_dropout")
  if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
    _fail("train.text_dropout", p, "is a probability",
          "use a value in [0, 1], e.g. 0.1 (0 turns caption dropout off)")
  if not isinstance(_get(cfg, "train.yarn_auto"), bool):
    _fail("train.yarn_auto", t.yarn_auto, "must be True or False",
          "use True (YaRN follows the curriculum's horizon) or False")
  cur = _get(cfg, "train.horizon_curriculum")
  example = "e.g. ((21, 5000), (41, 1000), (81, 4000)), or () for one phase"
  if isinstance(cur, (str, bytes)) or not isinstance(cur, (tuple, list)):
    _fail("train.horizon_curriculum", cur, "must be a list of (latent_frames, steps) phases",
          example)
  pt = cfg.model.patch_size[0]
  for i, phase in enumerate(cur):
    if (isinstance(phase, (str, bytes)) or not isinstance(phase, (tuple, list))
        or len(phase) != 2):
      _fail("train.horizon_curriculum", cur, f"phase {i} ({phase!r}) is not a "
            "(latent_frames, steps) pair", example)
    frames, steps = phase
    if not (_is_int(frames) and frames > 0 and _is_int(steps) and steps > 0):
      _fail("train.horizon_curriculum", cur, f"phase {i} ({phase!r}) needs a positive integer "
            "number of latent frames and of steps", example)
    if frames % pt:
      _fail("train.horizon_curriculum", cur, f"phase {i} has {frames} latent frames, not "
            f"divisible by the temporal patch size {pt}",
            f"use multiples of model.patch_size[0]={pt}")
    if t.clean_first_frame and frames < 2:
      _fail("train.horizon_curriculum", cur, f"phase {i} has {frames} latent frame, and with "
            "train.clean_first_frame there is no frame left to denoise",
            "use at least 2 latent frames per phase")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int = 1) -> ml_collections.ConfigDict:
  """Checks a full experiment config; returns it unchanged or raises ConfigError.

  Without num_devices only what the config alone determines is checked (a mesh with a -1 axis
  is then not checked for even sharding). With num_devices (jax.device_count()) the mesh shape
  is resolved against the devices and the batch and params are checked to shard evenly on it.
  """
  for group in ("model", "mesh", "data", "train", "distributed"):
    _get(cfg, group)
  validate_model(cfg.model)
  validate_mesh(cfg.mesh)
  _choice(cfg, "data.source", DataSource)
  for f in ("latent_frames", "latent_height", "latent_width", "text_len", "num_examples"):
    _positive(cfg, f"data.{f}")
  pt, ph, pw = cfg.model.patch_size
  for f, p in (("latent_frames", pt), ("latent_height", ph), ("latent_width", pw)):
    if cfg.data[f] % p:
      _fail(f"data.{f}", cfg.data[f], f"not divisible by the patch size {p}",
            "make the latent size a multiple of model.patch_size")
  m = cfg.model
  if m.attention_mode == AttentionMode.BLOCK_CAUSAL and (
      cfg.data.latent_frames // pt - m.first_block_frames) % m.block_frames:
    _fail("model.block_frames", m.block_frames,
          f"does not divide the {cfg.data.latent_frames // pt} patched latent frames after the "
          f"first block of {m.first_block_frames}",
          "choose latent_frames = first_block_frames + a multiple of block_frames")
  validate_data(cfg.data)
  validate_vae_arch(cfg.vae, cfg.data)
  validate_vae_init(cfg.vae)
  validate_generation(cfg)
  if cfg.data.source == DataSource.LATENTS:
    m = cfg.model
    if m.text_encoder not in (TextEncoder.BYTES, TextEncoder.UMT5):
      _fail("model.text_encoder", m.text_encoder, "the latent cache holds captions as byte "
            "tokens (the built-in text encoder) or umT5 embeddings",
            "set model.text_encoder='bytes', or 'umt5' with model.text_encoder_from")
    if m.action_dim not in (0, 13):
      _fail("model.action_dim", m.action_dim, "the latent cache holds RELIC's 13-d actions",
            "use 13 (or 0 to train without actions)")
    if m.pose_dim not in (0, 12):
      _fail("model.pose_dim", m.pose_dim, "the latent cache holds 12-d poses (flattened 3x4 "
            "camera-to-first-frame extrinsics)", "use 12 (or 0 to train without poses)")
  t = cfg.train
  for f in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
    _positive(cfg, f"train.{f}")
  for f in ("lr", "warmup_steps", "weight_decay", "grad_clip", "peak_flops_per_device",
            "min_lr_ratio"):
    _positive(cfg, f"train.{f}", allow_zero=True)
  if not 0.0 <= t.ema_decay < 1.0:
    _fail("train.ema_decay", t.ema_decay, "must be in [0, 1)", "use 0 (off) or e.g. 0.999")
  if not (0.0 <= t.b1 < 1.0 and 0.0 <= t.b2 < 1.0):
    _fail("train.b1/b2", (t.b1, t.b2), "Adam betas must be in [0, 1)", "use e.g. 0.9, 0.999")
  _choice(cfg, "train.schedule", LRSchedule)
  _choice(cfg, "train.timestep_sampling", TimestepSampling)
  _choice(cfg, "evaluate.pose_estimator.kind", PoseEstimatorKind)
  truths = ("auto", "doom", "recorded")  # evaluation/recorded.py TRUTHS
  if _get(cfg, "evaluate.truth") not in truths:
    _fail("evaluate.truth", cfg.evaluate.truth, "unknown value",
          f"use one of {', '.join(map(repr, truths))}")
  _positive(cfg, "evaluate.max_seconds")
  _positive(cfg, "train.timestep_shift")
  if cfg.train.clean_first_frame and cfg.data.latent_frames < 2:
    _fail("data.latent_frames", cfg.data.latent_frames,
          "with train.clean_first_frame there is no frame left to denoise",
          "use at least 2 latent frames or set train.clean_first_frame=False")
  validate_teacher_training(cfg)
  validate_student(cfg)
  shape = dict(cfg.mesh.shape)
  if num_devices is not None:
    validate_sharding(cfg, resolve_mesh_shape(shape, num_devices), num_processes)
  elif -1 not in shape.values():
    validate_sharding(cfg, {a: shape.get(a, 1) for a in MESH_AXES}, num_processes)
  return cfg
