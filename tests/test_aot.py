"""`relic compile`: a stage's step compiled ahead of time for TPU and GPU topologies on this
CPU host (libtpu and the CUDA plugin are the test extras' `tpu` and `gpu`), and the report's
arithmetic checked on the local CPU devices."""

import dataclasses
import importlib.util
import json
import os

import jax
import pytest

from relic_jax.bench import aot
from relic_jax.config.base import parent_config
from relic_jax.models import flops as flops_lib
from relic_jax.models.dit import DiTConfig
from tests.helpers import REPO, run_cli

TINY = os.path.join(REPO, "experiments", "tiny.py")
HAS_TPU_COMPILER = importlib.util.find_spec("libtpu") is not None
HAS_GPU_COMPILER = importlib.util.find_spec("jax_cuda12_plugin") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_TPU_COMPILER, reason="libtpu is not installed (pip install -e '.[tpu]'; "
    "`make test` installs it): no TPU compiler to compile for a TPU topology")
needs_cuda_plugin = pytest.mark.skipif(
    not HAS_GPU_COMPILER, reason="the CUDA plugin is not installed (pip install -e '.[gpu]'; "
    "`make test` installs it): no GPU compiler to compile for a GPU topology")


def _compile(tmp_path, *args, name="report"):
  out = str(tmp_path / f"{name}.json")
  r = run_cli("compile", f"--config={TINY}", *args, f"--out={out}",
              env={"JAX_PLATFORMS": "cpu"})
  report = None
  if os.path.exists(out):
    with open(out) as f:
      report = json.load(f)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == report  # the last line is the JSON
  return r, report


def _tiny():
  return parent_config(TINY, "tiny")


def _check_parts(report):
  p = report["parts"]
  assert report["peak_bytes_per_device"] == (p["argument_bytes"] + p["output_bytes"]
                                             + p["temp_bytes"] - p["alias_bytes"]) > 0


@needs_libtpu
def test_tiny_teacher_compiles_for_a_tpu_pod_slice_on_this_cpu_host(tmp_path):
  r, report = _compile(tmp_path, "--topology=v5p-8", "--stage=teacher")
  assert r.returncode == 0, r.stderr[-3000:]
  cfg = _tiny()
  assert report["platform"] == "tpu" and report["device_kind"].startswith("TPU v5")
  assert report["devices"] == 4 and report["mesh"]["fsdp"] == 4  # tiny's fsdp=-1 over 4 chips
  assert report["fits"] and report["peak_bytes_per_device"] < report["hbm_bytes_per_device"]
  _check_parts(report)
  d = cfg.data
  fwd = flops_lib.forward_flops(DiTConfig.from_config(cfg.model), d.latent_frames,
                                d.latent_height, d.latent_width, d.text_len)
  assert report["model_flops_per_step"] == pytest.approx(3 * cfg.train.batch_size * fwd)
  assert report["compile_s"] > 0 and "fits" in r.stdout


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
@needs_libtpu
def test_a_step_too_big_for_the_chip_is_refused_with_the_knobs_to_turn(tmp_path):
  r, report = _compile(tmp_path, "--topology=v5e-4", "--stage=teacher", "--latent_frames=64",
                       "--config.train.batch_size=2048")
  assert r.returncode == 4, r.stderr[-3000:]
  assert not report["fits"] and "RESOURCE_EXHAUSTED" in report["error"]
  assert report["compiler_temp_bytes"] > report["hbm_bytes_per_device"]
  assert "remat_policy" in report["advice"] and "fsdp" in report["advice"]
  assert "DOES NOT FIT" in r.stdout


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
@needs_libtpu
@pytest.mark.parametrize("stage", ["ode_init", "distill"])
def test_the_students_steps_compile_for_a_tpu_pod_slice(tmp_path, stage):
  r, report = _compile(tmp_path, "--topology=v5p-8", f"--stage={stage}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert report["fits"] and report["stage"] == stage
  _check_parts(report)
  if stage == "distill":
    # --latent_frames sets the rollout: frame 0 + 4 blocks of 3 (tiny's curriculum ends at 8)
    r, short = _compile(tmp_path, "--topology=v5p-8", "--stage=distill", "--latent_frames=13",
                        name="short")
    assert r.returncode == 0, r.stderr[-3000:]
    assert short["blocks"] == 4 and short["latent_frames"] == 13
    assert short["model_flops_per_step"] < report["model_flops_per_step"]
    assert short["peak_bytes_per_device"] < report["peak_bytes_per_device"]
    assert short["backprop"] == "replayed" and short["mfu_bound"] < 1.0  # replay recomputes


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
@needs_cuda_plugin
def test_tiny_teacher_compiles_for_eight_h100s_without_a_gpu(tmp_path):
  r, report = _compile(tmp_path, "--topology=h100x8", "--stage=teacher")
  assert r.returncode == 0, r.stderr[-3000:]
  assert report["platform"] == "cuda" and "H100" in report["device_kind"]
  assert report["devices"] == 8 and report["fits"]
  assert report["hbm_bytes_per_device"] == int(85_520_809_984 * aot.GPU_MEM_FRACTION)
  _check_parts(report)


# ------------------------------------------------------------------ without a target compiler


def _local(hbm_bytes, chips=8):
  """A topology of this host's (8 faked) CPU devices, with the HBM given."""
  return aot.Topology("cpu-test", "cpu", "", chips, hbm_bytes, 1e12)


def test_a_gpu_compile_without_a_triton_tiling_retries_with_cublas(monkeypatch):
  """The GPU compiler of jax 0.10 finds no Triton tiling for a small bf16 dot of relic_14b's
  distillation step ("Couldn't find output tile sizes"): the step is compiled again with
  Triton GEMMs off and the report says so; any other compiler error is raised as it is."""
  from relic_jax.bench import aot as aot_mod
  real, calls = aot_mod.compile_step, []

  def flaky(step, mesh, rules, args, options=None):
    calls.append(options)
    if options is None:
      raise RuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot")
    return real(step, mesh, rules, args)

  monkeypatch.setattr(aot_mod, "compile_step", flaky)
  gpu = aot.Topology("gpu-test", "cuda", "", 8, 2 ** 40, 1e12)
  r = aot.compile_stage(_tiny(), gpu, "teacher", devs=jax.devices())
  assert calls == [None, aot.GPU_FALLBACK_OPTIONS] and r["fits"]
  assert r["compiler_options"] == {"xla_gpu_enable_triton_gemm": False}
  assert "tile sizes" in r["compiler_note"]
  calls.clear()
  with pytest.raises(RuntimeError, match="tile sizes"):  # not a GPU: no such fallback
    aot.compile_stage(_tiny(), _local(2 ** 40), "teacher", devs=jax.devices())
  assert calls == [None]


def test_the_report_compares_the_peak_with_the_hbm_and_names_the_fixes():
  cfg = _tiny()
  big = aot.compile_stage(cfg, _local(2 ** 40), "teacher", devs=jax.devices())
  assert big["fits"] and "advice" not in big and big["devices"] == 8
  _check_parts(big)
  small = aot.compile_stage(cfg, _local(big["peak_bytes_per_device"] - 1), "teacher",
                            devs=jax.devices())
  assert not small["fits"] and "config.model.remat_policy='full'" in small["advice"]
  assert "DOES NOT FIT" in aot.summary(small) and "fits" in aot.summary(big)
  # full rematerialisation runs the forward twice: 3 model forwards of 4 executed
  cfg.model.remat_policy = "full"
  full = aot.compile_stage(cfg, _local(2 ** 40), "teacher", devs=jax.devices())
  assert full["mfu_bound"] == pytest.approx(0.75) and big["mfu_bound"] == 1.0
  assert full["model_flops_per_step"] == big["model_flops_per_step"]


def test_distillation_flops_count_the_rollout_scores_and_updates():
  from relic_jax.training import self_forcing as sf
  cfg = _tiny()
  spec = sf.spec_from_config(cfg, 2)
  model, recompute = aot.distill_flops(spec, cfg.data.text_len)
  h, w = spec.stream.latent_hw
  seq = flops_lib.forward_flops(spec.teacher, spec.latent_frames, h, w, cfg.data.text_len)
  # at least the critic's update (3 passes) and the fake and real scores (1 + 1) on the sequence
  assert model > 5 * seq and recompute > 0
  naive = dataclasses.replace(spec, backprop="naive")
  assert aot.distill_flops(naive, cfg.data.text_len) == (model, 0.0)
  longer = aot.distill_flops(sf.spec_from_config(cfg, 4), cfg.data.text_len)[0]
  assert longer > 2 * model * 0.9  # grows at least ~linearly with the rollout


def test_bad_requests_are_named_errors():
  with pytest.raises(aot.CompileError, match="v5p-64"):
    aot.topology("v5p-65")
  cfg = _tiny()
  with pytest.raises(aot.CompileError, match="--latent_frames=6"):
    aot.stage_config(cfg, "distill", 6)  # frame 0 + 5: not whole blocks of 3
  with pytest.raises(aot.CompileError, match="--stage='vae'"):
    aot.compile_stage(cfg, _local(2 ** 40), "vae", devs=jax.devices())
  cfg.mesh.shape = {"data": 1, "fsdp": 1, "context": 1, "tensor": 8}
  with pytest.raises(aot.CompileError, match="cpu-test"):  # 8 tensor shards on 4 devices
    aot.compile_stage(cfg, _local(2 ** 40, 4), "teacher", devs=jax.devices()[:4])
  cfg = _tiny()
  cfg.distill.batch_size = 4  # over data x fsdp = 8
  with pytest.raises(aot.CompileError, match="distill.batch_size=4 does not split"):
    aot.compile_stage(cfg, _local(2 ** 40), "distill", devs=jax.devices())
  r = run_cli("compile", f"--config={TINY}", "--topology=h100x9")
  assert r.returncode == 2 and "h100x8" in r.stderr and "Traceback" not in r.stderr


@needs_libtpu
def test_splash_builds_the_tpu_kernel_for_a_tpu_mesh_not_the_hosts_interpreter():
  import numpy as np
  from relic_jax.models import splash
  mesh = jax.sharding.Mesh(np.asarray(aot.devices(aot.topology("v5p-8"))), ("fsdp",))
  with jax.set_mesh(mesh):
    assert splash.target_platform() == "tpu"  # the mesh's compile-only TPU devices
  assert splash.target_platform() == jax.default_backend() == "cpu"  # no mesh: the host's
  cpu_mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("fsdp",))
  with jax.set_mesh(cpu_mesh):
    assert splash.target_platform() == "cpu"


# ------------------------------------------------------------------ the device suite

SUITE = os.path.join(REPO, "relic_jax", "bench", "device_suite.sh")
SUITE_PARTS = ("small_train_full", "big_train_full", "big_train_dots", "big_streaming",
               "small_distill_memory")


@pytest.mark.parametrize("script", ["device_suite.sh", "device_assets.sh", "device_dit_sweep.sh",
                                    "device_common.sh"])
def test_the_device_scripts_parse(script):
  import subprocess
  r = subprocess.run(["bash", "-n", os.path.join(REPO, "relic_jax", "bench", script)],
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_the_device_suite_reports_every_part_in_one_json_line(tmp_path):
  """A dry run on this CPU (tiny configs) under a 75 s budget: the parts that fit report
  their benchmark's JSON, a part cut by its limit reports why, the rest are skipped; one
  JSON line either way."""
  import subprocess
  import sys
  env = {**os.environ, "SUITE_DRY": "1", "SUITE_BUDGET_S": "75", "PY": sys.executable,
         "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(["bash", SUITE, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  suite = json.loads(r.stdout.strip().splitlines()[-1])
  with open(tmp_path / "suite.json") as f:
    assert json.load(f) == suite
  assert suite["dry"] and suite["device"] == "cpu" and suite["wall_s"] <= 120
  assert set(SUITE_PARTS) <= set(suite)
  first = suite["small_train_full"]
  assert first.get("loss_finite") or "failed" in first
  assert any("skipped" in suite[p] or "failed" in suite[p] for p in SUITE_PARTS)


def test_a_streaming_block_compiles_with_the_cache_split_by_head():
  cfg = _tiny()
  cfg.mesh.shape = {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  r = aot.compile_stage(cfg, _local(2 ** 40), "stream", latent_frames=40, devs=jax.devices())
  assert r["fits"] and r["batch_size"] == 1 and r["latent_frames"] == 40
  _check_parts(r)
  from relic_jax.inference import streaming as st
  spec = st.spec_from_config(aot.stage_config(cfg, "stream", 40))
  assert r["kv_bytes"] == spec.cache.kv_bytes() and r["max_fps"] > 0
  fp8 = _tiny()
  fp8.mesh.shape = cfg.mesh.shape
  fp8.memory.kv_dtype = "float8_e4m3fn"
  small = aot.compile_stage(fp8, _local(2 ** 40), "stream", latent_frames=40,
                            devs=jax.devices())
  assert small["kv_bytes"] < r["kv_bytes"]
