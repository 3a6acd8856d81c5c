"""`relic compile`: a stage's real step compiled ahead of time for a TPU or GPU topology, on any
host (no accelerator needed), and whether it fits.

  relic compile --config=experiments/relic_14b.py --topology=v5p-64 --stage=teacher \
      [--latent_frames=81] [--out=compile.json]

--stage=stream compiles one block of a streaming session (`Session(mesh=...)`: the KV cache
split by head) whose cache holds --latent_frames (config.memory.max_frames).

The step is the one training runs (the teacher's and ODE init's `trainer` step, distillation's
rollout + DMD + critic step), lowered for abstract arguments that carry the shardings the
config's mesh gives them on the topology's devices, then compiled by that platform's compiler:
libtpu for TPUs (`pip install -e .[tpu]`), the CUDA plugin for GPUs (`.[gpu]`; the target
descriptions of the cards ship in relic_jax/bench/gpu_targets/). Nothing is allocated.

The JSON (printed as the last line, and written to --out): the peak bytes per device and its
parts (arguments, outputs, temporaries, minus the donated state they alias), the chip's HBM,
whether it fits, the compile seconds, the analytic model FLOPs of the step (models/flops.py:
XLA's own count sees a scanned layer once and a Pallas kernel as nothing) and the bound on MFU
that rematerialisation sets. TPU compilers refuse a program that does not fit
(RESOURCE_EXHAUSTED), reported as `fits: false` with the compiler's message; GPU compilers do not
check, so the peak is compared with the card here. Either way the advice names the config knobs
that lower the peak.
"""

import dataclasses
import json
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import topologies

from relic_jax.config import ConfigError, validate
from relic_jax.inference import streaming as st
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models import flops as flops_lib
from relic_jax.models import dit as dit_lib
from relic_jax.models.dit import DiTConfig
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.sharding import abstract_params
from relic_jax.training import distill as distill_lib
from relic_jax.training import ode_init as ode_lib
from relic_jax.training import self_forcing as sf
from relic_jax.training.compiled import compile_step, compiled_stats
from relic_jax.training.optimizer import make_optimizer
from relic_jax.training.state import state_shardings, with_shardings
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import make_train_step

GIB = 2 ** 30
TARGETS_DIR = os.path.join(os.path.dirname(__file__), "gpu_targets")


class CompileError(ValueError):
  """`relic compile` cannot compile what was asked (unknown topology, missing compiler, a
  config that does not shard on the topology); the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  platform: str          # "tpu" or "cuda"
  spec: str              # get_topology_desc's topology name (TPU) or "slices x hosts x devices"
  chips: int
  hbm_bytes: int         # per chip (vendors' data sheets)
  peak_flops: float      # dense bf16 FLOP/s per chip (parallel/chips.py)
  target: str = ""       # GPU: the target description file in gpu_targets/


def _tpu(name, spec, chips, hbm_gib, flops):
  return Topology(name, "tpu", spec, chips, int(hbm_gib * GIB), flops)


def _gpu(name, hosts, per_host, target, card_bytes, flops):
  return Topology(name, "cuda", f"1x{hosts}x{per_host}", hosts * per_host,
                  int(card_bytes * GPU_MEM_FRACTION), flops, target)


# The HBM a program may use per chip. TPU: the compiler's own limit, as libtpu reports it when
# it refuses a program ("exceeds available HBM (95.74G)"): v5p 95.74 GiB, v6e 31.25, v5e 15.75.
# GPU: the card's memory (H100 SXM 80 GB: 85,520,809,984 bytes; H200 141 GB: 150,754,820,096)
# times the fraction XLA may take, XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 (set it so on the
# cluster: JAX's default is 0.75). TPU names count TensorCores for v5p (2 per chip) and chips
# for v5e / v6e, as Cloud TPU does.
GPU_MEM_FRACTION = 0.9
TOPOLOGIES = {t.name: t for t in (
    _tpu("v5p-8", "v5:2x2x1", 4, 95.74, 459e12),
    _tpu("v5p-16", "v5:2x2x2", 8, 95.74, 459e12),
    _tpu("v5p-32", "v5:2x2x4", 16, 95.74, 459e12),
    _tpu("v5p-64", "v5:2x4x4", 32, 95.74, 459e12),
    _tpu("v5p-128", "v5:4x4x4", 64, 95.74, 459e12),
    _tpu("v5e-4", "v5e:2x2", 4, 15.75, 197e12),
    _tpu("v5e-16", "v5e:4x4", 16, 15.75, 197e12),
    _tpu("v6e-8", "v6e:2x4", 8, 31.25, 918e12),
    _tpu("v6e-32", "v6e:4x8", 32, 31.25, 918e12),
    _tpu("v6e-256", "v6e:16x16", 256, 31.25, 918e12),
    _gpu("h100x4", 1, 4, "h100_sxm", 85_520_809_984, 989e12),
    _gpu("h100x8", 1, 8, "h100_sxm", 85_520_809_984, 989e12),
    _gpu("h100x32", 4, 8, "h100_sxm", 85_520_809_984, 989e12),
    _gpu("h200x8", 1, 8, "h200_sxm", 150_754_820_096, 989e12),
)}
STAGES = ("teacher", "ode_init", "distill", "stream")


def topology(name: str) -> Topology:
  if name not in TOPOLOGIES:
    raise CompileError(f"--topology={name!r} is not one relic compile knows. Fix: use one of "
                       f"{', '.join(TOPOLOGIES)}.")
  return TOPOLOGIES[name]


def devices(topo: Topology):
  """The topology's devices, from its compiler's compile-only client."""
  if topo.platform == "tpu":
    try:
      import libtpu  # noqa: F401, PLC0415  (the TPU compiler, an optional extra)
    except ImportError as e:
      raise CompileError(f"compiling for {topo.name} needs libtpu, which is not installed. Fix: "
                         "pip install -e '.[tpu]' (it matches jax's version).") from e
    # compile-only: no TPU is opened, so several processes may hold libtpu at once (else
    # the second one fails on libtpu's lockfile)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.spec)
  else:
    try:
      import jax_cuda12_plugin  # noqa: F401, PLC0415  (the GPU compiler, an optional extra)
    except ImportError as e:
      raise CompileError(f"compiling for {topo.name} needs the CUDA plugin, which is not "
                         "installed. Fix: pip install -e '.[gpu]'.") from e
    with open(os.path.join(TARGETS_DIR, f"{topo.target}.txtpb")) as f:
      target = f.read()
    desc = topologies.get_topology_desc(platform="cuda", topology=topo.spec,
                                        target_config=target)
  devs = list(desc.devices)
  if len(devs) != topo.chips:
    raise CompileError(f"{topo.name}: the compiler describes {len(devs)} devices, expected "
                       f"{topo.chips}")
  return devs


# ------------------------------------------------------------------ the stages' steps


def stage_config(cfg: ml_collections.ConfigDict, stage: str,
                 latent_frames: int | None) -> ml_collections.ConfigDict:
  """The config the stage's step runs with; latent_frames sets the teacher's clip or the
  distillation's rollout (its blocks: (latent_frames - first block) / block_frames)."""
  out = cfg.copy_and_resolve_references()
  m = out.model
  with out.unlocked():
    if stage == "teacher" and latent_frames:
      out.data.latent_frames = int(latent_frames)
    elif stage == "ode_init":
      out = ode_lib.stage_config(out)
    elif stage == "stream" and latent_frames:
      out.memory.max_frames = int(latent_frames)
    elif stage == "distill" and latent_frames:
      blocks, rest = divmod(int(latent_frames) - m.first_block_frames, m.block_frames)
      if blocks < 1 or rest:
        raise CompileError(f"--latent_frames={latent_frames}: a rollout is frame 0's block "
                           f"({m.first_block_frames}) + whole blocks of {m.block_frames}. Fix: "
                           f"use {m.first_block_frames} + a multiple of {m.block_frames}.")
      out.distill.rollout_curriculum = ((blocks, 1),)
  return out


def _abstract_batch(example: dict, batch_size: int, mesh, rules) -> dict:
  return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype,
                                  sharding=mesh_lib.batch_sharding(mesh, rules, v.ndim))
          for k, v in example.items()}


def step_and_args(cfg: ml_collections.ConfigDict, stage: str, mesh, rules):
  """(step function, abstract arguments with shardings, model FLOPs of one step, remat
  recompute FLOPs, description) of `stage` under cfg on mesh."""
  if stage in ("teacher", "ode_init"):
    task = TeacherTask(cfg) if stage == "teacher" else ode_lib.ODEInitTask(cfg)
    tx = make_optimizer(cfg.train)
    abstract, shardings = state_shardings(task.init_params, tx, mesh, rules, jax.random.key(0))
    b = cfg.train.batch_size
    example = jax.eval_shape(lambda: task.example_batch(1))
    args = (with_shardings(abstract, shardings), _abstract_batch(example, b, mesh, rules))
    fwd = b * _forward_flops(cfg, stage)
    return (make_train_step(task, tx, cfg.train, cfg.seed), args, 3.0 * fwd,
            _recompute(cfg, fwd), {"batch_size": b, "latent_frames": _frames(cfg, stage)})
  blocks = max(int(n) for n, _ in cfg.distill.rollout_curriculum)
  tx_gen, tx_critic = distill_lib.optimizers(cfg.distill)
  abstract, shardings = distill_lib.state_layout(cfg, tx_gen, tx_critic, mesh, rules)
  task = TeacherTask(distill_lib.data_config(cfg))
  example = jax.eval_shape(
      lambda: distill_lib.to_distill_batch(cfg, task.example_batch(1), blocks))
  b = cfg.distill.batch_size
  args = (with_shardings(abstract, shardings), with_shardings(abstract.critic, shardings.critic),
          _abstract_batch(example, b, mesh, rules))
  spec = sf.spec_from_config(cfg, blocks)
  model, recompute = distill_flops(spec, cfg.data.text_len)
  step = distill_lib.make_step(spec, tx_gen, tx_critic, cfg.distill, cfg.seed)
  return step, args, b * model, b * recompute, {
      "batch_size": b, "latent_frames": spec.latent_frames, "blocks": blocks,
      "backprop": cfg.distill.backprop}


def stream_step(cfg, mesh, rules):
  """(jitted step (state, params, actions) -> (state, latents) with the Session's shardings,
  abstract arguments, model FLOPs of one block, description): one streaming block of a
  session (batch 1) whose cache holds config.memory.max_frames, as `Session(mesh=...)` runs it
  (not donated: a session's earlier states stay usable)."""
  spec = st.spec_from_config(cfg)
  params = abstract_params(dit_lib.init_fn(cfg), mesh, rules)
  d, c = cfg.data, spec.dit
  text = (jax.ShapeDtypeStruct((1, d.text_len), jnp.int32) if c.text_encoder == "bytes" else
          jax.ShapeDtypeStruct((1, d.text_len, c.text_dim), jnp.float32))
  latent0 = jax.ShapeDtypeStruct((1, 1, *spec.latent_hw, c.in_channels), jnp.float32)
  rng = jax.random.key(0)  # concrete, outside the (maybe compile-only) mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.eval_shape(lambda p, l0, t: st.start(p, spec, l0, t, rng), params, latent0, text)
  shardings = st.state_shardings(spec, mesh, rules, 1, len(text.shape))
  state = with_shardings(state, shardings)
  actions = jax.ShapeDtypeStruct((1, spec.video_frames_per_block, st.ACTION_DIM), jnp.float32,
                                 sharding=mesh_lib.replicated(mesh))
  params_sh = jax.tree.map(lambda a: a.sharding, params)

  def step(state, params, actions):
    return st.step(params, spec, state, actions)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jitted = jax.jit(step, in_shardings=(shardings, params_sh, actions.sharding),
                     out_shardings=(shardings, mesh_lib.replicated(mesh)))
  written = cfg.memory.max_frames - spec.block_frames
  flops = (len(spec.sigmas) + 1) * flops_lib.block_forward_flops(
      c, spec.block_frames, spec.cache.tokens_per_frame,
      kv_lib.attended_tokens(spec.cache, written), d.text_len)
  return jitted, (state, params, actions), flops, {
      "batch_size": 1, "latent_frames": int(cfg.memory.max_frames),
      "memory_mode": cfg.memory.mode, "kv_dtype": cfg.memory.kv_dtype,
      "kv_bytes": spec.cache.kv_bytes(), "video_frames_per_block": spec.video_frames_per_block}


def _frames(cfg, stage: str) -> int:
  return ode_lib.clip_frames(cfg) if stage == "ode_init" else int(cfg.data.latent_frames)


def _forward_flops(cfg, stage: str) -> float:
  """Model FLOPs of one example's forward: the bidirectional clip (teacher), or the student's
  blocks over its growing cache (ODE init)."""
  dit = DiTConfig.from_config(cfg.model)
  d = cfg.data
  if stage == "teacher":
    return flops_lib.forward_flops(dit, d.latent_frames, d.latent_height, d.latent_width,
                                   d.text_len)
  spec = st.spec_from_config(cfg, max_frames=ode_lib.clip_frames(cfg))
  return sum(_block_flops(spec, d.text_len, written, frames)
             for written, frames in _student_blocks(spec, cfg.ode_init.blocks))


def _student_blocks(spec, blocks: int) -> list[tuple[int, int]]:
  """(latent frames already cached, frames in the block) of frame 0's block and each block."""
  bf = spec.block_frames
  return [(0, 1)] + [(1 + j * bf, bf) for j in range(blocks)]


def _block_flops(spec, text_len: int, written: int, frames: int) -> float:
  """One student forward of a block of `frames` latent frames after `written` cached ones,
  attending to the cache's valid tokens (its window and pooled memory) and itself."""
  return flops_lib.block_forward_flops(spec.dit, frames, spec.cache.tokens_per_frame,
                                       kv_lib.attended_tokens(spec.cache, written), text_len)


def distill_flops(spec, text_len: int) -> tuple[float, float]:
  """(model FLOPs, replay's recompute FLOPs) of one example's generator step (the heavier of
  distillation's two step kinds): the rollout (the sampler's steps up to the mean exit step,
  the exit step and the commit of every block, no gradient), the exit steps' backward (2x
  their forward), the teacher's real score (twice with CFG) and the critic's fake score on the
  whole sequence, and the critic's update (3x its forward). `replayed` back-propagation
  recomputes each block's exit step and commit."""
  s = spec.stream
  steps_before_exit = (len(s.sigmas) - 1) / 2.0  # the exit step is uniform over the steps
  blocks = _student_blocks(s, spec.blocks)
  frame0 = _block_flops(s, text_len, *blocks[0])
  per_block = [_block_flops(s, text_len, w, f) for w, f in blocks[1:]]
  rollout = frame0 + sum((steps_before_exit + 2.0) * x for x in per_block)
  backward = 2.0 * sum(per_block)
  h, w = s.latent_hw
  seq = flops_lib.forward_flops(spec.teacher, spec.latent_frames, h, w, text_len)
  scores = (2.0 if spec.guidance != 1.0 else 1.0) * seq + seq
  model = rollout + backward + scores + 3.0 * seq
  recompute = 2.0 * sum(per_block) if spec.backprop == "replayed" else 0.0
  return model, recompute


def _recompute(cfg, forward: float) -> float:
  """FLOPs rematerialisation adds to a step: a second forward with model.remat_policy='full';
  the other policies save the matmuls' outputs (their recompute is elementwise work)."""
  return forward if cfg.model.remat_policy == "full" else 0.0


# ------------------------------------------------------------------ compile and report


def _advice(stage: str) -> str:
  if stage == "stream":
    return ("a larger config.mesh.shape tensor axis (heads, and the KV cache by head, over "
            "more devices); config.memory.kv_dtype='float8_e4m3fn' (half a bf16 cache); "
            "config.model.cache_attention_impl='chunked'; config.model.param_dtype="
            "'bfloat16'; a shorter --latent_frames (config.memory.max_frames)")
  knobs = ["a larger config.mesh.shape fsdp axis (params, gradients and optimizer state per "
           "device fall with it)",
           "config.mesh.shape context > 1 (context parallelism: activations per device fall "
           "with the sequence)",
           "config.model.remat_policy='full' (activations recomputed, not stored)",
           "config.model.attention_impl with a memory-efficient kernel ('splash' on TPU, "
           "'cudnn' on GPU) instead of 'xla'"]
  if stage == "distill":
    knobs += ["config.distill.backprop='replayed' (one block's activations at a time)",
              "a smaller config.distill.batch_size or a shorter --latent_frames"]
  else:
    knobs += ["a smaller config.train.batch_size or a shorter --latent_frames"]
  return "; ".join(knobs)


_GPU_TILING = re.compile(r"Couldn't find output tile sizes")
GPU_FALLBACK_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|exceeds? (the )?(HBM|memory)")


def compile_stage(cfg: ml_collections.ConfigDict, topo: Topology, stage: str,
                  latent_frames: int | None = None, devs=None) -> dict:
  """Compiles `stage`'s step of cfg for topo (devs: its devices, default from its compiler) ->
  the report (see the module docstring)."""
  if stage not in STAGES:
    raise CompileError(f"--stage={stage!r}: relic compile knows {', '.join(STAGES)}.")
  run = stage_config(cfg, stage, latent_frames)
  devs = devices(topo) if devs is None else devs
  try:
    validate(run, num_devices=len(devs))
    mesh = mesh_lib.make_mesh(run.mesh, devices=devs)
    if stage == "distill":
      distill_lib.validate_distill(run)
      distill_lib.check_batch_split(run.distill, mesh)
  except (ConfigError, distill_lib.DistillError) as e:
    raise CompileError(f"{cfg.name} on {topo.name} ({len(devs)} devices): {e}") from e
  rules = mesh_lib.rules(run.mesh)
  jitted = None
  if stage == "stream":
    jitted, args, model_flops, what = stream_step(run, mesh, rules)
    recompute_flops = 0.0
  else:
    step, args, model_flops, recompute_flops, what = step_and_args(run, stage, mesh, rules)
  report = {"config": cfg.name, "topology": topo.name, "platform": topo.platform,
            "devices": len(devs), "device_kind": devs[0].device_kind, "stage": stage,
            "mesh": {k: int(v) for k, v in mesh.shape.items()},
            "attention_impl": run.model.attention_impl,
            "cache_attention_impl": run.model.cache_attention_impl or run.model.attention_impl,
            "remat_policy": run.model.remat_policy,
            **what, "hbm_bytes_per_device": topo.hbm_bytes,
            "model_flops_per_step": model_flops,
            "peak_flops_per_device": topo.peak_flops}
  executed = (model_flops + recompute_flops) / len(devs)
  report["mfu_bound"] = model_flops / (model_flops + recompute_flops)
  report["min_step_s"] = executed / topo.peak_flops
  if stage == "stream":
    block_s = report["min_step_s"]
    report["max_fps"] = what["video_frames_per_block"] / block_s if block_s else None
  t0 = time.time()

  def build(options):
    if jitted is not None:
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jitted.lower(*args).compile(options)
    return compile_step(step, mesh, rules, args, options)

  try:
    try:
      compiled = build(None)
    except Exception as e:
      if not (topo.platform == "cuda" and _GPU_TILING.search(str(e))):
        raise
      # the GPU compiler (jax 0.10's) finds no Triton tiling for some small bf16 dots (the
      # distillation step's time-embedding backward): compile them with cuBLAS instead
      report["compiler_options"] = GPU_FALLBACK_OPTIONS
      report["compiler_note"] = " ".join(str(e).split())[:300]
      compiled = build(GPU_FALLBACK_OPTIONS)
  except Exception as e:  # the TPU compiler refuses a program that does not fit
    msg = " ".join(str(e).split())
    if not _OOM.search(msg):
      raise
    report.update({"compile_s": time.time() - t0, "fits": False, "error": msg[:2000],
                   "advice": _advice(stage)})
    need = re.search(r"required for HLO temporaries \(([\d.]+)G\)", msg)
    if need:
      report["compiler_temp_bytes"] = int(float(need.group(1)) * GIB)
    return report
  report["compile_s"] = time.time() - t0
  stats = compiled_stats(compiled)
  peak = stats.get("peak_bytes")
  report["peak_bytes_per_device"] = peak
  report["parts"] = {k: stats[k] for k in ("argument_bytes", "output_bytes", "temp_bytes",
                                            "alias_bytes") if k in stats}
  report["xla_flops"] = stats.get("xla_flops")
  report["fits"] = bool(peak is not None and peak <= topo.hbm_bytes)
  if not report["fits"]:
    report["advice"] = _advice(stage)
  return report


def summary(report: dict) -> str:
  """One line for people: the peak against HBM, or why it does not fit."""
  where = (f"{report['config']} {report['stage']} ({report.get('latent_frames')} latent frames, "
           f"batch {report.get('batch_size')}) on {report['topology']}, mesh "
           + " x ".join(f"{k}={v}" for k, v in report["mesh"].items() if v > 1))
  hbm = report["hbm_bytes_per_device"] / GIB
  if report.get("peak_bytes_per_device") is not None:
    peak = report["peak_bytes_per_device"] / GIB
    verdict = "fits" if report["fits"] else "DOES NOT FIT"
    amount = f"{peak:.1f} GiB" if peak >= 0.1 else f"{peak * 1024:.1f} MiB"
    line = f"{where}: peak {amount} per device of {hbm:.2f} GiB HBM: {verdict}"
  else:
    line = f"{where}: DOES NOT FIT in {hbm:.2f} GiB HBM: the compiler refused it"
  if not report["fits"]:
    line += f". Fix: {report['advice']}"
  return line


def write_json(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1, sort_keys=True, default=_json_default)
    f.write("\n")
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  raise TypeError(type(x))
