"""The distillation stage on tiny data: it lowers the DMD objective's proxy, and a run killed
mid-way resumes to exactly the state of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic_jax.config import ConfigError
from relic_jax.inference import loading
from relic_jax.training import distill as dl
from relic_jax.training import self_forcing as sf
from relic_jax.training.data import train_iterator
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny (synthetic source, a teacher of 4 latent frames without its curriculum) with a short
# distillation that still reads the memory: rollouts of 2 blocks with a window of 3 latent
# frames (the second block reads frame 0 from the pooled memory), the EMA from step 2
OVERRIDES = """
c.data.latent_frames = 4
c.train.steps = 80
c.train.horizon_curriculum = ()
c.train.progress_bar = False
c.train.async_checkpointing = False
c.memory.window = 3
c.distill.rollout_curriculum = ((2, 6),)
c.distill.critic_ratio = 2
c.distill.ema_start_step = 2
c.distill.checkpoint_every = 2
c.distill.gen_lr = 3e-4
c.distill.critic_lr = 1e-3
c.distill.batch_size = 8
"""


def _config():
  import experiments.tiny as tiny
  c = tiny.get_config()
  exec(OVERRIDES)  # the same overrides the subprocess's config file applies
  return c


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A workdir with a tiny teacher trained for 80 steps on the synthetic latents."""
  work = str(tmp_path_factory.mktemp("distill"))
  cfg = _config()
  train(cfg, os.path.join(work, "teacher"), TeacherTask(cfg))
  return work, cfg, loading.load_teacher(cfg, work)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_distill_lowers_the_teacher_fit_proxy(teacher_run, tmp_path):
  """The proxy (`self_forcing.teacher_fit`): the frozen teacher's denoising loss on the
  student's rollouts, at fixed noise. A student started off the teacher's distribution (the
  teacher's params, perturbed) moves back towards it under DMD; the same run with the
  generator's learning rate at 0 does not move at all."""
  work, cfg, teacher = teacher_run
  cfg = cfg.copy_and_resolve_references()
  cfg.distill.rollout_curriculum = ((2, 16),)
  cfg.distill.critic_ratio = 1
  cfg.distill.ema_decay = 0.0
  cfg.distill.checkpoint_every = 100
  leaves, tree = jax.tree.flatten(teacher)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  student = tree.unflatten([x + 0.3 * jnp.std(x) * jax.random.normal(k, x.shape)
                            for x, k in zip(leaves, keys)])
  spec = sf.spec_from_config(cfg, 2)
  batch = dl.to_distill_batch(cfg, next(train_iterator(dl.data_config(cfg), work)), 2)
  fit = jax.jit(lambda g: sf.teacher_fit(g, teacher, spec, batch, jax.random.key(123)))
  before = float(fit(student))
  final = dl.distill(cfg, str(tmp_path), teacher=teacher, gen_init=student)
  after = float(fit(loading.load_dit_params(cfg, str(tmp_path / "distill"), "gen")))
  assert final["step"] == 16 and final["generator_from"] == "given"
  assert after < 0.9 * before, (before, after)


def _run(work, config_file, *extra):
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "tests.distill_run", work,
                         f"--config={config_file}", *extra], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_distill_resumes_exactly_after_a_kill(teacher_run, tmp_path):
  work, cfg, _ = teacher_run
  config_file = tmp_path / "cfg.py"
  config_file.write_text("import experiments.tiny as tiny\n\n\ndef get_config():\n"
                         "  c = tiny.get_config()\n" + textwrap.indent(OVERRIDES, "  ")
                         + "  return c\n")
  killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
  for w in (killed, whole):
    shutil.copytree(os.path.join(work, "teacher"), os.path.join(w, "teacher"))
  r = _run(killed, config_file, "--kill_at=3")  # after checkpoint 2, before checkpoint 4
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  steps = sorted(int(x) for x in os.listdir(os.path.join(killed, "distill", "checkpoints"))
                 if x.isdigit())
  assert steps[-1] == 2, steps
  r = _run(killed, config_file)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(whole, config_file)
  assert r.returncode == 0, r.stderr[-3000:]

  def final_state(w):
    tx_g, tx_c = dl.optimizers(cfg.distill)
    from relic_jax.parallel import mesh as mesh_lib
    from relic_jax import checkpoint as ckpt_lib
    from relic_jax.training.state import with_shardings
    mesh, rules = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1]), mesh_lib.rules(cfg.mesh)
    abstract, sh = dl.state_layout(cfg, tx_g, tx_c, mesh, rules)
    ckpt = ckpt_lib.Checkpointer(os.path.join(w, "distill", "checkpoints"), 3, async_save=False)
    state, data = ckpt.restore(6, with_shardings(abstract, sh),
                               ckpt_lib.describe_model(TeacherTask(cfg).model_config,
                                                       abstract.gen))
    ckpt.close()
    return state, data

  a, data_a = final_state(killed)
  b, data_b = final_state(whole)
  # params-only loading (what generation uses) reads the same generator as the full restore
  params, source = loading.load_dit(cfg, killed)
  assert source == "distill" and cfg.distill.ema_decay > 0
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(a.gen_ema)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert data_a == data_b and int(a.step) == int(b.step) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(np.asarray(jax.tree.leaves(a.gen)[0]),
                            np.asarray(jax.tree.leaves(a.gen_ema)[0]))  # it trained
  # critic_ratio = 2: the generator updates at steps 0, 2, 4 (logged as 1, 3, 5) only
  import json
  rows = [json.loads(x) for x in open(os.path.join(whole, "distill", "metrics.jsonl"))]
  assert [r["step"] for r in rows if "dmd_loss" in r] == [1, 3, 5]
  assert all(np.isfinite(r["critic_loss"]) for r in rows)


@pytest.mark.parametrize("stage", ["ode_init", "distill"])
def test_student_stages_without_a_teacher_say_so(stage, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
  r = subprocess.run([sys.executable, "-m", "relic_jax.cli", stage, "--config=experiments/tiny.py",
                      f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "relic: error: no trained teacher in" in r.stderr
  assert "Fix: run `relic train_teacher` with this --workdir first." in r.stderr


def test_bad_distill_config_names_the_field(tmp_path):
  cfg = _config()
  cfg.distill.rollout_curriculum = ((0, 5),)
  with pytest.raises(ConfigError, match=r"config.distill.rollout_curriculum=\(\(0, 5\),\): "
                     r"must be a non-empty list of \(blocks >= 1, steps >= 1\).*Fix:"):
    dl.distill(cfg, str(tmp_path))
  cfg = _config()
  cfg.distill.rollout_curriculum = ((1, 5),)  # inside the window: trains no memory
  with pytest.raises(ConfigError, match=r"never leaves memory.window=3.*Fix:"):
    dl.distill(cfg, str(tmp_path))
  cfg = _config()
  cfg.distill.backprop = "magic"
  with pytest.raises(dl.DistillError, match=r"config.distill.backprop='magic'.*replayed"):
    dl.distill(cfg, str(tmp_path))


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_ode_init_stores_trajectories_resumes_and_regresses_with_hybrid_forcing(teacher_run,
                                                                                tmp_path):
  from relic_jax.training import ode_init as oi
  work, cfg, teacher = teacher_run
  cfg = cfg.copy_and_resolve_references()
  # 7 latent frames: 1 clean block, 4 frames of context > the window of 3 (OVERRIDES)
  cfg.ode_init.blocks, cfg.ode_init.noisy_blocks = 2, 1
  cfg.ode_init.num_trajectories, cfg.ode_init.solver_steps = 8, 4
  cfg.ode_init.train.update({"steps": 30, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0,
                             "checkpoint_every": 30})
  final = oi.ode_init(cfg, str(tmp_path), teacher=teacher)
  assert final["loss_last10_mean"] < 0.7 * final["first_loss"], final
  parts = sorted((tmp_path / "ode_init" / "trajectories").glob("part_*.npz"))
  assert len(parts) == 1  # 8 trajectories, one part of train.batch_size = 8
  data = dict(np.load(parts[0]))
  assert data["states"].shape == (8, 4, 7, 8, 8, 16) and data["x0"].shape == (8, 7, 8, 8, 16)
  # frame 0 is the clean image latent at every timestep; the first state is pure noise
  np.testing.assert_array_equal(data["states"][:, :, 0], np.repeat(data["x0"][:, None, 0], 4, 1))
  assert abs(float(np.std(data["states"][:, 0, 1:])) - 1.0) < 0.05
  sig, keep = oi.solver_sigmas(cfg)
  assert np.allclose(sig[keep], sf.st.sampler_sigmas(cfg.generate.timesteps, cfg.generate.shift))
  # resume: a lost part is recomputed to the same arrays (the same clips and noise)
  parts[0].unlink()
  oi.write_trajectories(_ode_data_cfg(cfg), str(tmp_path), teacher,
                        train_iterator(_ode_data_cfg(cfg), str(tmp_path)))
  again = dict(np.load(parts[0]))
  for k in data:
    np.testing.assert_array_equal(again[k], data[k], err_msg=k)
  # hybrid forcing: the noised block sees the clean block through the cache
  task = oi.ODEInitTask(oi.stage_config(cfg))
  batch = {k: jnp.asarray(v[:2]) for k, v in data.items()}
  loss = jax.jit(task.loss_fn)
  base = float(loss(teacher, batch, jax.random.key(0)))
  changed = dict(batch, x0=batch["x0"].at[:, 1:4].add(1.0))  # the clean context block only
  assert abs(float(loss(teacher, changed, jax.random.key(0))) - base) > 1e-4 * base


def _ode_data_cfg(cfg):
  from relic_jax.training import ode_init as oi
  c = cfg.copy_and_resolve_references()
  c.data.latent_frames = oi.clip_frames(cfg)
  return c
