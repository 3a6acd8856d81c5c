"""`relic pipeline` end to end on a micro config: killed in the middle of a stage, resumed, and
skipped when done; a workdir made with other settings is refused."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from relic_jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every stage at its smallest: 3 episodes of 60 frames (one held out), a few steps each, one
# 7-second script on one held-out map.
MICRO = """
c.train.progress_bar = False
c.data.gen.num_episodes, c.data.gen.frames_per_episode = 3, 60
c.data.gen.episodes_per_shard = 1
c.vae.train.update({"steps": 3, "checkpoint_every": 3})
c.vae.tiny_steps, c.vae.eval_clips = 2, 2
c.train.steps, c.train.checkpoint_every, c.train.batch_size = 6, 2, 4
c.train.horizon_curriculum = ((4, 2), (7, 4))  # the kill lands in the last phase
c.memory.window = 3  # the smallest student recipe that still reads the memory: 7 latent frames
c.ode_init.blocks, c.ode_init.noisy_blocks = 2, 1
c.ode_init.num_trajectories, c.ode_init.solver_steps = 4, 2
c.ode_init.train.update({"steps": 2, "batch_size": 4, "checkpoint_every": 2})
c.distill.rollout_curriculum = ((2, 2),)
c.distill.batch_size, c.distill.critic_ratio = 2, 2
c.evaluate.scripts = ("look_away_and_back",)
c.evaluate.maps = ("freedoom2/MAP05",)
c.evaluate.pose_estimator.update({"steps": 10, "batch_size": 8})
"""


def _config(tmp_path, extra="", name="micro.py"):
  path = tmp_path / name
  path.write_text("import experiments.tiny as tiny\n\n\ndef get_config():\n"
                  "  c = tiny.get_config()\n" + textwrap.indent(MICRO + extra, "  ")
                  + "  return c\n")
  return str(path)


def _cmd(config, work):
  return [sys.executable, "-m", "relic_jax.cli", "pipeline", f"--config={config}",
          f"--workdir={work}"]


def _env():
  return {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "PYTHONPATH": ROOT}


def kill_in_teacher(cmd, work: str, timeout: float = 600, stdout=subprocess.DEVNULL) -> None:
  """Runs `relic pipeline` (cmd) and SIGKILLs it inside train_teacher, once the teacher has
  written a checkpoint; fails if it ends first."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=stdout, stderr=subprocess.STDOUT)
  ckpt = os.path.join(work, "teacher", "checkpoints")
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and proc.poll() is None:
      if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
        break
      time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_pipeline_resumes_after_a_kill_and_skips_what_is_done(tmp_path):
  config, work = _config(tmp_path), str(tmp_path / "run")
  # 1. killed (SIGKILL) inside train_teacher, once it has written a checkpoint
  kill_in_teacher(_cmd(config, work), work, timeout=500)
  markers = os.path.join(work, "pipeline")
  done = sorted(f[:-5] for f in os.listdir(markers))
  assert done == sorted(["data", "pose_estimator", "train_vae", "encode"])  # killed mid-teacher

  # 2. the rerun skips the four finished stages and resumes the rest to the end
  r = subprocess.run(_cmd(config, work), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  for i, stage in enumerate(["data", "pose_estimator", "train_vae", "encode"], 1):
    assert f"[relic] pipeline {i}/8 {stage}: done before" in r.stdout
  assert "[relic] pipeline 5/8 train_teacher ..." in r.stdout
  assert "Results in " in r.stdout
  with open(os.path.join(work, "results", "metrics.json")) as f:
    metrics = json.load(f)
  assert set(metrics) == {"relic", "window", "window_sink", "full", "copy_last", "truth",
                          "static", "flat_colour", "_meta"}
  assert metrics["_meta"]["weights_from"] == "distill" and metrics["_meta"]["distilled"]
  for method in ("relic", "window", "window_sink", "full", "copy_last"):
    for key in ("revisit_psnr", "revisit_ssim", "rpe_rot", "psnr"):
      assert isinstance(metrics[method][key], float), (method, key, metrics[method])
    assert metrics[method]["rpe_trans"] is None  # a pure rotation: no translation to judge
  assert metrics["relic"]["fps"] > 0 and metrics["copy_last"]["fps"] is None
  assert metrics["copy_last"]["consistency_psnr"] is None  # a still video never left the view
  results = os.path.join(work, "results")
  assert os.listdir(os.path.join(results, "videos")) == [
      "look_away_and_back-freedoom2-MAP05-0.mp4"]
  assert {"metrics.png"} <= set(os.listdir(os.path.join(results, "plots")))
  with open(os.path.join(results, "metrics.md")) as f:
    assert "| relic |" in f.read()
  # the teacher's last phase (in <workdir>/teacher) finished its 4 steps
  with open(os.path.join(work, "teacher", "final_metrics.json")) as f:
    assert json.load(f)["step"] == 4

  # 3. a third run only skips; a changed teacher setting is refused with the fix
  r = subprocess.run(_cmd(config, work), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.count(": done before") == 8
  changed = _config(tmp_path, "c.train.lr = 1e-4\n", name="changed.py")
  r = subprocess.run(_cmd(changed, work), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2
  assert "holds stage 'train_teacher' done with a different config (train.lr:" in r.stderr
  assert "Fix: use a new --workdir" in r.stderr

  # 4. a real sweep on this run: its baseline is the finished run (every stage skipped), its
  # variant re-evaluates the same student with a float8 KV cache
  sweep_file = tmp_path / "kv.py"
  sweep_file.write_text(
      "def get_sweep():\n"
      f"  return {{'base': {{'config': {config!r}, 'description': 'float32 KV'}},\n"
      "          'variants': {'fp8': {'overrides': {'memory.kv_dtype': 'float8_e4m3fn'},\n"
      "                               'description': 'float8 KV', 'from_stage': 'evaluate'}}}\n")
  sweep_dir = tmp_path / "sweep"
  sweep_dir.mkdir()
  shutil.copytree(work, sweep_dir / "base", symlinks=True)
  r = subprocess.run([sys.executable, "-m", "relic_jax.cli", "sweep", str(sweep_file),
                      f"--workdir={sweep_dir}"], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.count(": done before") == 8  # the baseline: nothing to redo
  assert "[relic] pipeline 1/1 evaluate ..." in r.stdout  # the variant: evaluation only
  with open(sweep_dir / "comparison.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["variant"] for row in rows] == ["base", "fp8"]
  assert float(rows[0]["revisit_psnr"]) == metrics["relic"]["revisit_psnr"]
  assert os.path.islink(sweep_dir / "fp8" / "distill")  # the student is the baseline's
  assert 0 < float(rows[1]["revisit_psnr"]) < 100


def test_stage_inputs_follow_the_stage_order():
  from relic_jax.config import get_base_config
  cfg = get_base_config()
  assert pipeline.first_stage_of("data.gen.num_episodes") == "data"
  assert pipeline.first_stage_of("data.latent_frames") == "encode"
  assert pipeline.first_stage_of("memory.window") == "ode_init"
  assert pipeline.first_stage_of("memory.max_frames") == "evaluate"
  assert pipeline.first_stage_of("evaluate.pose_estimator.steps") == "pose_estimator"
  assert pipeline.first_stage_of("train.progress_bar") is None
  data = pipeline.stage_inputs(cfg, "data")
  assert "data.gen.num_episodes" in data and "train.lr" not in data
  teacher = pipeline.stage_inputs(cfg, "train_teacher")
  assert {"train.lr", "vae.z_dim", "data.gen.num_episodes"} <= set(teacher)
  assert "distill.gen_lr" not in teacher and "train.checkpoint_every" not in teacher
  with pytest.raises(pipeline.PipelineError, match="unknown pipeline stages"):
    pipeline.run_pipeline(cfg, "unused", stages=["nope"])


def test_dit_config_switches_only_synthetic_configs():
  from relic_jax.config import get_base_config
  cfg = get_base_config()
  out = pipeline.dit_config(cfg)
  assert (out.data.source, out.model.text_encoder, out.model.action_dim,
          out.model.pose_dim) == ("latents", "bytes", 13, 12)
  assert cfg.data.source == "synthetic"  # the input is not changed
  with cfg.unlocked():
    cfg.data.source, cfg.model.action_dim = "latents", 0
  assert pipeline.dit_config(cfg) is cfg  # a latents config (e.g. action off) is kept as is
