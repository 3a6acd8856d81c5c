"""Every config field that takes one of a fixed set of strings, declared once as a `str` Enum.

Each Enum is the list of the values its implementation accepts: the implementation imports it
and keys its table (or its branches) by the members, and `config/validation.py` checks the
config against the same Enum, so the two cannot disagree. The declarations live here, in the
config package (layer 0), rather than in the implementation modules, because validation must
not import the models, the memory or the data pipeline (they sit above the config); every
implementation can import this module without a cycle. A value in a `ConfigDict` stays a plain
`str`: members compare, hash and format as their value, so `cfg.model.remat_policy == "full"`,
`RematPolicy.FULL == "full"` and `TABLE[RematPolicy.FULL]` looked up with "full" all work.

  field                          Enum               implementation
  model.attention_impl           AttentionImpl      models/attention.py (dot_product_attention)
  model.cache_attention_impl     AttentionImpl      (or "": model.attention_impl) the cache path
  model.attention_mode           AttentionMode      models/dit.py (the block-causal layout)
  model.remat_policy             RematPolicy        models/dit.py (REMAT_POLICIES)
  model.dtype, model.param_dtype Dtype              models/dit.py (jnp.dtype of the name)
  model.text_encoder             TextEncoder        models/dit.py, inference/text.py (umt5)
  model.pose_format              PoseFormat         models/dit.py (plucker_rays)
  memory.mode                    MemoryMode         memory/kv_cache.py (spec_from_config)
  memory.pool                    MemoryPool         memory/kv_cache.py (_pool)
  memory.kv_dtype                KVDtype            memory/kv_cache.py (storage dtype, fp8 scale)
  memory.overflow                Overflow           memory/kv_cache.py (check_capacity, _evict)
  generate.decoder               Decoder            inference/session.py (the decoder kind)
  data.source                    DataSource         data_pipeline/loader.py (make_source)
  data.crop                      Crop               data_pipeline/clips.py (ClipAugment)
  data.gen.codec                 Codec              data_pipeline/shards.py (CODECS)
  data.gen.wads                  Wad                data_pipeline/doom.py (the WAD files)
  train.schedule                 LRSchedule         training/optimizer.py (make_schedule)
  train.timestep_sampling        TimestepSampling   diffusion/flow_matching.py (sample_sigma)
  generate.cfg_convention        CFGConvention      config/validation.py (standard_guidance)
  distill.timestep_sampling      DMDTimestepSampling  training/self_forcing.py (dmd_sigma)
  evaluate.pose_estimator.kind   PoseEstimatorKind  evaluation/pose_estimation.py
"""

import enum


class Choice(str, enum.Enum):
  """A config field's fixed set of string values (maxtext's `RematPolicy(str, Enum)`)."""

  def __str__(self) -> str:
    return self.value

  @classmethod
  def values(cls) -> tuple[str, ...]:
    """The accepted strings, in declaration order (what error messages list)."""
    return tuple(m.value for m in cls)


class AttentionImpl(Choice):
  XLA = "xla"          # jax.nn.dot_product_attention, any backend
  CUDNN = "cudnn"      # NVIDIA fused flash attention (bf16/fp16)
  SPLASH = "splash"    # TPU Pallas splash attention (interpreted elsewhere: tests only)
  CHUNKED = "chunked"  # memory-efficient online softmax in plain JAX, any backend

  @classmethod
  def with_key_mask(cls) -> tuple[str, ...]:
    """The kernels that take a key validity mask, which attention over the KV cache needs
    (models/attention.py KERNELS[...].key_mask; a test checks they agree)."""
    return (cls.XLA.value, cls.CHUNKED.value)


class AttentionMode(Choice):
  BIDIRECTIONAL = "bidirectional"
  BLOCK_CAUSAL = "block_causal"


class RematPolicy(Choice):
  NONE = "none"
  FULL = "full"
  DOTS_SAVEABLE = "dots_saveable"
  DOTS_NO_BATCH_SAVEABLE = "dots_no_batch_saveable"
  OFFLOAD_BLOCK_INPUT = "offload_block_input"


class Dtype(Choice):
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"
  FLOAT16 = "float16"


class TextEncoder(Choice):
  NONE = "none"    # text arrives as embeddings [B, L, text_dim]
  BYTES = "bytes"  # byte tokens [B, L], embedded by the built-in encoder
  UMT5 = "umt5"    # umT5 embeddings [B, L, text_dim] (inference/text.py), cached by encode


class PoseFormat(Choice):
  EXTRINSICS = "extrinsics"  # one embedding per latent frame from the 12-d extrinsics
  PLUCKER = "plucker"        # per-token Pluecker rays computed from the extrinsics


class MemoryMode(Choice):
  RELIC = "relic"    # window + compressed memory
  FULL = "full"      # window + uncompressed memory (the full-history baseline)
  WINDOW = "window"  # window only: frames leaving it are dropped
  WINDOW_SINK = "window_sink"  # window + frame 0 kept forever, uncompressed; no other memory


class MemoryPool(Choice):
  MEAN = "mean"
  SUBSAMPLE = "subsample"


class KVDtype(Choice):
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"
  FLOAT8_E4M3FN = "float8_e4m3fn"  # with a float32 scale per (token, head)


class Overflow(Choice):
  ERROR = "error"  # the session refuses the step
  DROP = "drop"    # frames that no longer fit are dropped from the memory


class Decoder(Choice):
  VAE = "vae"
  TINY = "tiny"


class DataSource(Choice):
  SYNTHETIC = "synthetic"  # data_pipeline/synthetic.py, no download
  LATENTS = "latents"      # the latent cache (`relic encode`)


class Crop(Choice):
  CENTER = "center"
  RANDOM = "random"


class Codec(Choice):
  JPEG = "jpeg"
  PNG = "png"


class Wad(Choice):
  FREEDOOM1 = "freedoom1"
  FREEDOOM2 = "freedoom2"


class LRSchedule(Choice):
  COSINE = "cosine"
  CONSTANT = "constant"


class TimestepSampling(Choice):
  UNIFORM = "uniform"
  LOGIT_NORMAL = "logit_normal"


class CFGConvention(Choice):
  """What a classifier-free guidance number g means (v_c: conditional, v_u: null-text velocity).
  Self-Forcing's `guidance_scale: 3.0` is SELF_FORCING 3 = STANDARD 4."""
  SELF_FORCING = "self_forcing"  # v_c + g (v_c - v_u): g = 0 is no guidance
  STANDARD = "standard"          # v_u + g (v_c - v_u): g = 1 is no guidance


class DMDTimestepSampling(Choice):
  """How DMD and the critic draw their noise level (u uniform, shift(u) = s u / (1 + (s-1) u),
  lo/hi = distill.min_timestep/max_timestep / 1000)."""
  SHIFT_THEN_CLAMP = "shift_then_clamp"            # clamp(shift(u), lo, hi), u ~ U[0, 1)
  UNIFORM_SHIFTED_RANGE = "uniform_shifted_range"  # U[shift(lo), shift(hi)]


class PoseEstimatorKind(Choice):
  SIMILARITY = "similarity"  # zoom + shift between frames, calibrated (similarity_pose.py)
  LEARNED = "learned"        # the PoseNet CNN trained on the training episodes' frame pairs
