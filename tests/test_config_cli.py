"""Config validation errors, mesh-shape errors and the `relic` command line.

Every wrong value must fail early with one message that names the field (config.a.b=value),
says why, and says how to fix it; the CLI turns those into `relic: error: ...` and exit code 2.
CLI tests run `python -m relic_jax.cli` in a subprocess (one CPU device unless XLA_FLAGS says
otherwise); the in-process tests see the 8 fake CPU devices of conftest.py.
"""

import glob
import json
import os

import jax
import pytest

from relic_jax.config import DEFAULT_RULES, ConfigError, choices, get_base_config, validate
from relic_jax.config.base import parent_config
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.mesh import make_mesh, resolve_mesh_shape
from tests.helpers import REPO, run_cli, tiny_config

TINY = "--config=experiments/tiny.py"
TINY_PARAMS = 161_536  # experiments/tiny.py: 2 layers, dim 64, FFN 128, 2 heads


def _set(cfg, dotted, value):
  *parents, leaf = dotted.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def _mesh(**axes):
  return {"data": 1, "fsdp": 1, "context": 1, "tensor": 1, **axes}


# (id, overrides on tiny_config(), text the message must start with, text it must contain)
INVALID = [
    # model: sizes
    ("dim_zero", {"model.dim": 0}, "config.model.dim=0", "must be a positive integer"),
    ("dim_negative", {"model.dim": -64}, "config.model.dim=-64", "must be a positive integer"),
    ("dim_float", {"model.dim": 64.0}, "config.model.dim=64.0", "must be a positive integer"),
    ("ffn_dim_zero", {"model.ffn_dim": 0}, "config.model.ffn_dim=0", "positive integer"),
    ("num_heads_zero", {"model.num_heads": 0}, "config.model.num_heads=0", "positive integer"),
    ("num_layers_zero", {"model.num_layers": 0}, "config.model.num_layers=0", "positive integer"),
    ("in_channels_zero", {"model.in_channels": 0}, "config.model.in_channels=0", "positive"),
    ("out_channels_negative", {"model.out_channels": -1}, "config.model.out_channels=-1",
     "positive integer"),
    ("text_dim_zero", {"model.text_dim": 0}, "config.model.text_dim=0", "positive integer"),
    ("freq_dim_zero", {"model.freq_dim": 0}, "config.model.freq_dim=0", "positive integer"),
    ("block_frames_zero", {"model.block_frames": 0}, "config.model.block_frames=0", "positive"),
    ("heads_do_not_divide_dim", {"model.num_heads": 3}, "config.model.num_heads=3",
     "does not divide model.dim=64"),
    ("head_dim_odd", {"model.dim": 14, "model.num_heads": 2}, "config.model.dim=14",
     "head dim 7 cannot be split into even temporal/height/width RoPE parts"),
    ("head_dim_too_small_for_rope", {"model.dim": 8, "model.num_heads": 2}, "config.model.dim=8",
     "head dim 4 cannot be split"),
    ("freq_dim_odd", {"model.freq_dim": 255}, "config.model.freq_dim=255", "must be even"),
    ("yarn_ramp_inverted", {"model.yarn_beta_fast": 1.0}, "config.model.yarn_beta_fast=1.0",
     "needs beta_fast > beta_slow"),
    ("cache_clip_stride_negative", {"data.cache_clip_stride": -16},
     "config.data.cache_clip_stride=-16", "non-negative"),
    ("patch_size_two_entries", {"model.patch_size": (1, 2)}, "config.model.patch_size=(1, 2)",
     "three positive integers"),
    ("patch_size_zero", {"model.patch_size": (1, 0, 2)}, "config.model.patch_size=(1, 0, 2)",
     "three positive integers"),
    # model: choices
    ("attention_mode", {"model.attention_mode": "causal"}, "config.model.attention_mode='causal'",
     "use one of 'bidirectional', 'block_causal'"),
    ("attention_impl", {"model.attention_impl": "flash"}, "config.model.attention_impl='flash'",
     "use one of 'xla', 'cudnn', 'splash'"),
    ("remat_policy", {"model.remat_policy": "sometimes"}, "config.model.remat_policy='sometimes'",
     "'dots_saveable'"),
    ("dtype", {"model.dtype": "float64"}, "config.model.dtype='float64'",
     "use one of 'float32', 'bfloat16', 'float16'"),
    ("param_dtype", {"model.param_dtype": "int8"}, "config.model.param_dtype='int8'",
     "unknown value"),
    ("cudnn_needs_half_precision", {"model.attention_impl": "cudnn"},
     "config.model.attention_impl='cudnn'", "model.dtype='bfloat16'"),
    ("splash_rejects_float16", {"model.attention_impl": "splash", "model.dtype": "float16"},
     "config.model.attention_impl='splash'", "TPUs compute in bfloat16"),
    ("cache_kernel_without_key_mask", {"model.attention_impl": "splash",
                                       "model.dtype": "bfloat16"},
     "config.model.attention_impl='splash'", "is also the KV cache's kernel"),
    ("cache_kernel_splash", {"model.cache_attention_impl": "splash"},
     "config.model.cache_attention_impl='splash'", "needs a kernel that takes a key mask"),
    ("yarn_factor_below_one", {"model.yarn_factor": 0.5}, "config.model.yarn_factor=0.5",
     "can only extend the context"),
    ("yarn_original_frames_zero", {"model.yarn_original_frames": 0},
     "config.model.yarn_original_frames=0", "positive number"),
    ("rope_theta_negative", {"model.rope_theta": -1.0}, "config.model.rope_theta=-1.0",
     "positive number"),
    ("eps_zero", {"model.eps": 0.0}, "config.model.eps=0.0", "positive number"),
    # mesh
    ("mesh_unknown_axis", {"mesh.shape": {"data": 1, "fsdp": -1, "pipeline": 2}},
     "config.mesh.shape=", "unknown mesh axes ['pipeline']"),
    ("mesh_zero_axis", {"mesh.shape.tensor": 0}, "config.mesh.shape.tensor=0",
     "positive integer or -1"),
    ("mesh_negative_axis", {"mesh.shape.data": -2}, "config.mesh.shape.data=-2",
     "positive integer or -1"),
    ("mesh_two_fill_axes", {"mesh.shape.data": -1}, "config.mesh.shape=",
     "more than one axis is -1"),
    ("mesh_rule_unknown_axis", {"mesh.rules": (("batch", "pipeline"),) + DEFAULT_RULES},
     "config.mesh.rules=('batch', 'pipeline')", "mesh axis 'pipeline' does not exist"),
    ("mesh_rule_malformed", {"mesh.rules": (("batch",),)}, "config.mesh.rules=('batch',)",
     "each rule is (logical_axis, mesh_axes)"),
    # data
    ("data_source", {"data.source": "webdataset"}, "config.data.source='webdataset'",
     "use one of 'synthetic'"),
    ("latent_frames_zero", {"data.latent_frames": 0}, "config.data.latent_frames=0",
     "positive number"),
    ("latent_height_negative", {"data.latent_height": -8}, "config.data.latent_height=-8",
     "positive number"),
    ("text_len_zero", {"data.text_len": 0}, "config.data.text_len=0", "positive number"),
    ("num_examples_zero", {"data.num_examples": 0}, "config.data.num_examples=0", "positive"),
    ("latent_width_vs_patch", {"data.latent_width": 7}, "config.data.latent_width=7",
     "not divisible by the patch size 2"),
    ("block_frames_do_not_divide_frames", {"model.attention_mode": "block_causal",
                                           "model.block_frames": 2},
     "config.model.block_frames=2",
     "does not divide the 4 patched latent frames after the first block of 1"),
    ("one_frame_with_clean_first_frame", {"data.latent_frames": 1},
     "config.data.latent_frames=1", "no frame left to denoise"),
    # train
    ("steps_zero", {"train.steps": 0}, "config.train.steps=0", "positive number"),
    ("batch_size_zero", {"train.batch_size": 0}, "config.train.batch_size=0", "positive number"),
    ("checkpoint_every_zero", {"train.checkpoint_every": 0}, "config.train.checkpoint_every=0",
     "positive number"),
    ("log_every_zero", {"train.log_every": 0}, "config.train.log_every=0", "positive number"),
    ("keep_checkpoints_zero", {"train.keep_checkpoints": 0}, "config.train.keep_checkpoints=0",
     "positive number"),
    ("lr_negative", {"train.lr": -1e-3}, "config.train.lr=-0.001", "non-negative number"),
    ("warmup_negative", {"train.warmup_steps": -1}, "config.train.warmup_steps=-1",
     "non-negative number"),
    ("weight_decay_negative", {"train.weight_decay": -0.1}, "config.train.weight_decay=-0.1",
     "non-negative"),
    ("grad_clip_negative", {"train.grad_clip": -1.0}, "config.train.grad_clip=-1.0",
     "non-negative"),
    ("peak_flops_negative", {"train.peak_flops_per_device": -1.0},
     "config.train.peak_flops_per_device=-1.0", "non-negative"),
    ("min_lr_ratio_negative", {"train.min_lr_ratio": -0.1}, "config.train.min_lr_ratio=-0.1",
     "non-negative"),
    ("ema_decay_one", {"train.ema_decay": 1.0}, "config.train.ema_decay=1.0", "must be in [0, 1)"),
    ("adam_beta_above_one", {"train.b2": 1.5}, "config.train.b1/b2=(0.9, 1.5)",
     "Adam betas must be in [0, 1)"),
    ("schedule", {"train.schedule": "linear"}, "config.train.schedule='linear'",
     "use one of 'cosine', 'constant'"),
    ("timestep_sampling", {"train.timestep_sampling": "beta"},
     "config.train.timestep_sampling='beta'", "'uniform', 'logit_normal'"),
    ("timestep_shift_zero", {"train.timestep_shift": 0.0}, "config.train.timestep_shift=0.0",
     "positive number"),
    # the student's recipe (config.ode_init, config.distill, generate.guidance)
    ("rollouts_inside_the_window", {"distill.rollout_curriculum": ((1, 20), (2, 20))},
     "config.distill.rollout_curriculum=((1, 20), (2, 20))",
     "the longest rollout (2 block(s)) never leaves memory.window=6"),
    ("ode_init_clean_context_inside_the_window", {"ode_init.blocks": 1},
     "config.ode_init.blocks=1", "fits in memory.window=6"),
    ("noisy_blocks_above_blocks", {"ode_init.noisy_blocks": 5}, "config.ode_init.noisy_blocks=5",
     "needs 1 <= noisy_blocks <= blocks=4"),
    ("guidance_without_unconditional_branch", {"generate.guidance": 3.0},
     "config.generate.guidance=3.0", "train.text_dropout=0 and no train.init_from"),
    ("guidance_below_none", {"generate.cfg_convention": "standard"},
     "config.generate.guidance=0.0", "below no guidance under generate.cfg_convention"),
    ("ema_start_negative", {"distill.ema_start_step": -1}, "config.distill.ema_start_step=-1",
     "non-negative integer"),
    # even sharding on a fully specified mesh (no -1 axis: checked without knowing the devices)
    ("batch_vs_data_fsdp_axes", {"mesh.shape": _mesh(data=2, fsdp=4), "train.batch_size": 4},
     "config.train.batch_size=4",
     "does not split over the 8 shards of the mesh axes data=2 x fsdp=4"),
    ("ffn_dim_vs_tensor_axis", {"mesh.shape": _mesh(tensor=8), "model.num_heads": 8,
                                "model.ffn_dim": 132},
     "config.model.ffn_dim=132", "FFN hidden dimension ('mlp' axis) has size 132"),
    # vae: the clip curriculum and the evaluated clips
    ("vae_clip_curriculum_pair", {"vae.clip_curriculum": ((9, 100),)},
     "config.vae.clip_curriculum=((9, 100),)", "phase 0 ((9, 100)) is not three positive"),
    ("vae_clip_curriculum_zero_steps", {"vae.clip_curriculum": ((9, 0, 2),)},
     "config.vae.clip_curriculum", "is not three positive integers"),
    ("vae_clip_curriculum_string", {"vae.clip_curriculum": "9,100,2"},
     "config.vae.clip_curriculum", "must be a list of (latent_frames, steps, batch_size)"),
    ("vae_clip_curriculum_as_is", {"vae.clip_curriculum": ((9, 10, 2),),
                                   "vae.init_from": "assets/demo"},
     "config.vae.clip_curriculum", "uses the pretrained VAE as is"),
    ("vae_clip_curriculum_batch_vs_mesh", {"mesh.shape": _mesh(fsdp=8), "train.batch_size": 8,
                                           "vae.clip_curriculum": ((9, 10, 2),)},
     "config.vae.clip_curriculum=((9, 10, 2),)", "phase 0's batch has size 2, which does not "
     "split over the 8 shards"),
    ("vae_eval_latent_frames_negative", {"vae.eval_latent_frames": -1},
     "config.vae.eval_latent_frames=-1", "non-negative integer"),
    ("dim_vs_fsdp_axis", {"mesh.shape": _mesh(fsdp=8), "train.batch_size": 8, "model.dim": 36,
                          "model.num_heads": 3, "model.ffn_dim": 72},
     "config.model.dim=36", "'embed' axis) has size 36, which does not split over the 8 shards"),
    # magnitudes: not finite, or past the documented limits (validation.LIMITS)
    ("lr_inf", {"train.lr": float("inf")}, "config.train.lr=inf", "must be a finite"),
    ("lr_nan", {"train.lr": float("nan")}, "config.train.lr=nan", "must be a finite"),
    ("lr_absurd", {"train.lr": 1e30}, "config.train.lr=1e+30", "above the limit 1"),
    ("warmup_inf", {"train.warmup_steps": float("inf")}, "config.train.warmup_steps=inf",
     "finite non-negative"),
    ("fps_absurd", {"generate.fps": 1e300}, "config.generate.fps=1e+300", "above the limit 240"),
    ("fps_inf", {"generate.fps": float("inf")}, "config.generate.fps=inf", "must be a finite"),
    ("fps_zero", {"generate.fps": 0.0}, "config.generate.fps=0.0", "finite positive"),
    ("action_scale_absurd", {"generate.action_scale": 1e30},
     "config.generate.action_scale=1e+30", "above the limit 10"),
    ("action_scale_nan", {"generate.action_scale": float("nan")},
     "config.generate.action_scale=nan", "must be a finite"),
    ("shift_inf", {"generate.shift": float("inf")}, "config.generate.shift=inf", "finite"),
    # the VAE's architecture
    ("vae_dim_mult_int", {"vae.dim_mult": 3}, "config.vae.dim_mult=3",
     "non-empty tuple of positive integers"),
    ("vae_dim_mult_zero", {"vae.dim_mult": (1, 0, 4, 4)}, "config.vae.dim_mult=(1, 0, 4, 4)",
     "positive integers"),
    ("vae_dim_mult_empty", {"vae.dim_mult": ()}, "config.vae.dim_mult=()", "non-empty"),
    ("vae_temporal_downsample_length", {"vae.temporal_downsample": (True,)},
     "config.vae.temporal_downsample=(True,)", "must be 3 booleans"),
    ("vae_base_dim_zero", {"vae.base_dim": 0}, "config.vae.base_dim=0", "positive integer"),
    ("vae_z_dim_float", {"vae.z_dim": 16.0}, "config.vae.z_dim=16.0", "positive integer"),
    ("vae_train_lr_inf", {"vae.train.lr": float("inf")}, "config.vae.train.lr=inf", "finite"),
    ("vae_train_lr_absurd", {"vae.train.lr": 5.0}, "config.vae.train.lr=5.0", "above the limit"),
    ("vae_kl_weight_negative", {"vae.kl_weight": -1.0}, "config.vae.kl_weight=-1.0",
     "non-negative"),
]


@pytest.mark.parametrize("overrides,starts,contains", [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_validate_names_the_field_and_the_fix(overrides, starts, contains):
  cfg = tiny_config()
  validate(cfg)  # the starting point is valid, so the override alone causes the error
  for k, v in overrides.items():
    _set(cfg, k, v)
  with pytest.raises(ConfigError) as e:
    validate(cfg)
  msg = str(e.value)
  assert msg.startswith(starts), msg
  assert contains in msg, msg
  assert ". Fix: " in msg, msg


# Every string field with a fixed set of values, and the config.choices Enum declaring them.
CHOICE_FIELDS = [
    ("model.attention_impl", choices.AttentionImpl),
    ("model.attention_mode", choices.AttentionMode),
    ("model.remat_policy", choices.RematPolicy), ("model.dtype", choices.Dtype),
    ("model.param_dtype", choices.Dtype), ("model.text_encoder", choices.TextEncoder),
    ("model.pose_format", choices.PoseFormat), ("memory.mode", choices.MemoryMode),
    ("memory.pool", choices.MemoryPool), ("memory.kv_dtype", choices.KVDtype),
    ("memory.overflow", choices.Overflow), ("generate.decoder", choices.Decoder),
    ("data.source", choices.DataSource), ("data.crop", choices.Crop),
    ("data.gen.codec", choices.Codec), ("train.schedule", choices.LRSchedule),
    ("train.timestep_sampling", choices.TimestepSampling),
    ("generate.cfg_convention", choices.CFGConvention),
    ("distill.timestep_sampling", choices.DMDTimestepSampling),
    ("evaluate.pose_estimator.kind", choices.PoseEstimatorKind),
]


@pytest.mark.parametrize("field,choice", CHOICE_FIELDS, ids=[f for f, _ in CHOICE_FIELDS])
def test_validate_reads_each_choice_from_its_declaration(field, choice):
  """A bad value names the field and lists exactly the declared values."""
  cfg = tiny_config()
  _set(cfg, field, "bogus")
  with pytest.raises(ConfigError) as e:
    validate(cfg)
  assert str(e.value) == (f"config.{field}='bogus': unknown value. Fix: use one of "
                          f"{', '.join(map(repr, choice.values()))}.")


def test_validate_reports_a_missing_group():
  cfg = tiny_config()
  del cfg["distributed"]
  with pytest.raises(ConfigError, match=r"config\.distributed is missing\. Fix: start .*"
                                        r"get_base_config\(\)"):
    validate(cfg)


def test_validate_against_devices_checks_the_resolved_mesh():
  cfg = tiny_config()  # batch 4, mesh fsdp=-1
  assert validate(cfg) is cfg  # without devices the -1 axis is unknown: nothing to check
  assert validate(cfg, num_devices=4) is cfg  # fsdp=4 splits a batch of 4
  with pytest.raises(ConfigError) as e:
    validate(cfg, num_devices=8)  # fsdp=8 cannot split a batch of 4
  msg = str(e.value)
  assert msg.startswith("config.train.batch_size=4: the global batch has size 4"), msg
  assert "8 shards of the mesh axes data=1 x fsdp=8" in msg, msg
  assert "Fix: make it a multiple of 8" in msg, msg

  cfg.train.batch_size = 8  # fits fsdp=8, but not 3 hosts
  assert validate(cfg, num_devices=8) is cfg
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size=8: does not split over the "
                                        r"3 processes\. Fix: use a multiple of 3"):
    validate(cfg, num_devices=8, num_processes=3)

  cfg.train.batch_size = 8
  cfg.mesh.shape.tensor = 3
  with pytest.raises(ConfigError) as e:
    validate(cfg, num_devices=8)
  assert "over 8 device(s)" in str(e.value) and "does not divide the 8 devices" in str(e.value)


# ------------------------------------------------------------------------------ mesh shapes

@pytest.mark.parametrize("shape,needle", [
    (_mesh(fsdp=3), "the axes multiply to 3 but there are 8 devices"),
    ({"fsdp": -1, "tensor": 3},
     "the fixed axes multiply to 3, which does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "more than one axis (data, fsdp) is -1"),
    ({"fsdp": -1, "tensor": 0}, "axis 'tensor' has size 0"),
    ({"fsdp": -1, "data": -2}, "axis 'data' has size -2"),
    ({"fsdp": -1, "tensor": "2"}, "axis 'tensor' has size '2'"),
    ({"fsdp": -1, "pipeline": 2}, "unknown mesh axes ['pipeline']"),
], ids=["product_mismatch", "fixed_axes_do_not_divide", "two_fill_axes", "zero", "negative",
        "not_an_int", "unknown_axis"])
def test_resolve_mesh_shape_errors_name_the_mesh_and_device_count(shape, needle):
  with pytest.raises(ConfigError) as e:
    resolve_mesh_shape(shape, 8)
  msg = str(e.value)
  assert msg.startswith(f"config.mesh.shape={shape} over 8 device(s): "), msg
  assert needle in msg and ". Fix: " in msg, msg


def test_resolve_mesh_shape_fills_the_rest():
  assert resolve_mesh_shape({"fsdp": -1, "tensor": 2}, 8) == _mesh(fsdp=4, tensor=2)
  assert resolve_mesh_shape({}, 1) == _mesh()
  assert resolve_mesh_shape(_mesh(data=2, context=2, tensor=2), 8) == _mesh(data=2, context=2,
                                                                            tensor=2)
  assert mesh_lib.resolve_mesh_shape is resolve_mesh_shape


def test_make_mesh_errors_and_success():
  assert jax.device_count() == 8
  cfg = get_base_config()
  cfg.mesh.shape.tensor = 3
  with pytest.raises(ConfigError, match=r"over 8 device\(s\): the fixed axes multiply to 3"):
    make_mesh(cfg.mesh)
  cfg.mesh.shape.tensor = 2
  mesh = make_mesh(cfg.mesh, devices=jax.devices()[:4])
  assert dict(mesh.shape) == _mesh(fsdp=2, tensor=2)
  cfg.mesh.shape = _mesh(fsdp=8)
  with pytest.raises(ConfigError, match=r"over 4 device\(s\): the axes multiply to 8 but there "
                                        r"are 4 devices"):
    make_mesh(cfg.mesh, devices=jax.devices()[:4])


# ------------------------------------------------------------------------------ experiments

EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
                     if not p.endswith("__init__.py"))


def test_experiments_found():
  names = {os.path.basename(p)[:-3] for p in EXPERIMENTS}
  assert {"tiny", "small", "wan_1_3b", "relic_14b"} <= names


SMALL_MESH = {"demo_assets": 2}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.basename(p)[:-3])
def test_every_experiment_config_validates(path):
  name = os.path.basename(path)[:-3]
  cfg = parent_config(path, name)
  assert cfg.name == name
  assert validate(cfg) is cfg
  # and on the 8 test devices: the mesh resolves and batch and params shard evenly (the
  # assets' VAE phase on long clips has a batch of 2, for their 2-core CPU run: 2 devices)
  assert validate(cfg, num_devices=SMALL_MESH.get(name, 8)) is cfg


# ------------------------------------------------------------------------------ the CLI

STAGE_LIST = ("data, train_vae, encode, train_teacher, ode_init, distill, info, import-wan, "
              "import-wan-vae, import-umt5, export-assets, generate, play, pose_estimator, "
              "evaluate, "
              "pipeline, "
              "compile, sweep")
FAST_CLI_ERRORS = [
    ("unknown_stage", ["nope", TINY],
     ["unknown stage 'nope'.", "Available stages: " + STAGE_LIST + "."]),
    ("misspelt_stage", ["evalute", TINY],
     ["unknown stage 'evalute'. Did you mean 'evaluate'?",
      "Available stages: " + STAGE_LIST + "."]),
    ("pipeline_without_workdir", ["pipeline", TINY], ["stage 'pipeline' needs --workdir=DIR"]),
    ("no_stage", [TINY],
     ["expected exactly one stage", "stages: " + STAGE_LIST]),
    ("missing_config", ["info"], ["--config is required, e.g. --config=experiments/tiny.py"]),
    ("config_file_not_found", ["info", "--config=experiments/nope.py"],
     ["cannot load --config=experiments/nope.py: no such file 'experiments/nope.py'", "Fix: "]),
    ("missing_workdir", ["train_teacher", TINY],
     ["stage 'train_teacher' needs --workdir=DIR"]),
    ("data_without_workdir", ["data", TINY], ["stage 'data' needs --workdir=DIR"]),
    ("unknown_subcommand", ["data", "nope", TINY, "--workdir=/tmp/x"],
     ["stage 'data' has no subcommand 'nope'; it has: generate, ingest, preview."]),
    ("subcommand_of_a_stage_without", ["info", "x", TINY],
     ["stage 'info' has no subcommand 'x'; it takes none."]),
    ("ingest_without_source", ["data", "ingest", TINY, "--workdir=/tmp/x"],
     ["stage 'data ingest' needs --source=..."]),
    ("override_of_missing_field", ["info", TINY, "--config.model.nonexistent=3"],
     ["--config.model.nonexistent: config.model has no field 'nonexistent'.",
      "Fields of config.model: action_dim, attention_impl, ", " num_heads, ", "Fix: "]),
    ("override_typo", ["info", TINY, "--config.model.dimm=3"],
     ["config.model has no field 'dimm'. Did you mean 'dim'?"]),
    ("override_of_missing_group", ["info", TINY, "--config.modle.dim=3"],
     ["config has no field 'modle'. Did you mean 'model'?", "Fields of config: data, "]),
    ("override_below_a_value", ["info", TINY, "--config.model.dim.x=3"],
     ["config.model.dim is not a group of fields (it holds the value 64)"]),
    ("override_wrong_type", ["info", TINY, "--config.model.num_heads=abc"],
     ["--config.model.num_heads=abc: invalid literal for int()"]),
    ("unknown_flag", ["info", TINY, "--workdri=/tmp/x"], ["Unknown command line flag 'workdri'"]),
    ("invalid_value", ["info", TINY, "--config.model.num_heads=7"],
     ["config.model.num_heads=7: does not divide model.dim=64. Fix: choose num_heads"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in FAST_CLI_ERRORS],
                         ids=[c[0] for c in FAST_CLI_ERRORS])
def test_cli_usage_errors(args, needles):
  r = run_cli(*args)
  assert r.returncode == 2, (r.returncode, r.stderr)
  assert r.stderr.startswith("relic: error: "), r.stderr
  assert "Traceback" not in r.stderr, r.stderr
  for n in needles:
    assert n in r.stderr, r.stderr
  assert r.stdout == "", r.stdout


FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


@pytest.mark.parametrize("override,needles", [
    ("--config.mesh.shape.tensor=3",
     ["config.mesh.shape={'context': 1, 'data': 1, 'fsdp': -1, 'tensor': 3} over 4 device(s): "
      "the fixed axes multiply to 3, which does not divide the 4 devices. Fix: "]),
    ("--config.train.batch_size=6",
     ["config.train.batch_size=6: the global batch has size 6, which does not split over the 4 "
      "shards of the mesh axes data=1 x fsdp=4", "Fix: make it a multiple of 4"]),
], ids=["bad_mesh", "batch_vs_mesh"])
def test_cli_errors_that_depend_on_the_devices(override, needles):
  r = run_cli("info", TINY, override, env=FOUR_DEVICES)
  assert r.returncode == 2, (r.returncode, r.stderr)
  assert r.stderr.startswith("relic: error: "), r.stderr
  assert "Traceback" not in r.stderr
  for n in needles:
    assert n in r.stderr, r.stderr


def test_cli_info_prints_mesh_and_param_count():
  r = run_cli("info", TINY, env=FOUR_DEVICES)
  assert r.returncode == 0, r.stderr
  assert "name: tiny" in r.stdout
  assert "mesh: {'data': 1, 'fsdp': 4, 'context': 1, 'tensor': 1} over 4 x cpu" in r.stdout
  assert f"params: {TINY_PARAMS:,}" in r.stdout.splitlines()[-1]


def test_tiny_param_count_constant():
  """TINY_PARAMS (what `relic info` must print) is the real parameter count of tiny."""
  from relic_jax.training.teacher import TeacherTask
  task = TeacherTask(parent_config(os.path.join(REPO, "experiments", "tiny.py"), "tiny"))
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == TINY_PARAMS


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_cli_refuses_a_checkpoint_of_a_different_model(tmp_path):
  workdir = str(tmp_path / "run")
  # one phase of train.steps: without tiny's horizon curriculum
  common = ("train_teacher", TINY, f"--workdir={workdir}", "--config.train.progress_bar=False",
            "--config.train.horizon_curriculum=()")
  r = run_cli(*common, "--config.train.steps=2", "--config.train.checkpoint_every=2")
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.splitlines()[-2])["step"] == 2
  ckpt_dir = os.path.join(workdir, "teacher", "checkpoints")
  assert os.listdir(ckpt_dir) == ["2"]

  r = run_cli(*common, "--config.train.steps=4", "--config.model.dim=32",
              "--config.model.num_heads=2")
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert r.stderr.startswith("relic: error: "), r.stderr
  assert "Traceback" not in r.stderr
  msg = r.stderr
  assert f"{ckpt_dir}/2 was written by a different model" in msg, msg
  # the first param that differs, with both shapes
  assert "in the checkpoint but" in msg and "in this model" in msg, msg
  assert "Config differences: model.dim: checkpoint 64, config 32." in msg, msg  # and only dim
  assert "Fix: use the config that wrote it, or a fresh --workdir." in msg, msg
  assert os.listdir(ckpt_dir) == ["2"]  # nothing written by the refused run
