"""The flow-matching trainer: it learns, resumes exactly after a kill, restores onto another
mesh, and refuses non-finite steps without saving them."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from orbax.checkpoint import type_handlers

from data_pipeline.loader import make_train_iterator
from relic_jax import checkpoint as ckpt_lib
from relic_jax.config.base import parent_config
from relic_jax.inference.loading import load_dit_params
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training.optimizer import make_optimizer
from relic_jax.training.state import state_shardings, with_shardings
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import NonFiniteError, train
from tests.helpers import REPO

STEPS = 10
RUN_FLAGS = ("--config.train.checkpoint_every=2", "--config.train.log_every=1",
             "--config.train.warmup_steps=2")


def _run(workdir, steps, *extra):
  """tests/train_run.py in a fresh single-device process."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "tests.train_run", str(workdir), str(steps),
                         *RUN_FLAGS, *extra], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def _losses(workdir):
  """step -> loss from metrics.jsonl; a step logged twice (before a kill and after the resume)
  keeps its last value."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      out[rec["step"]] = rec["loss"]
  return out


def _config(**train):
  """experiments/tiny.py with the overrides RUN_FLAGS gives the subprocess runs."""
  c = parent_config(os.path.join(REPO, "experiments", "tiny.py"), "tiny")
  c.train.progress_bar = False
  c.train.checkpoint_every = 2
  c.train.log_every = 1
  c.train.warmup_steps = 2
  for k, v in train.items():
    c.train[k] = v
  return c


def _params_npz(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _flat(params):
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def _full_state(cfg, workdir, task):
  """The whole train state (params, EMA, optimizer state, step) of workdir's latest step,
  restored as a resuming run restores it."""
  mesh, rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
  abstract, sh = state_shardings(task.init_params, make_optimizer(cfg.train), mesh, rules,
                                 jax.random.key(cfg.seed))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), 3, async_save=False)
  try:
    state, _ = ckpt.restore(ckpt.latest_step(), with_shardings(abstract, sh),
                            ckpt_lib.describe_model(task.model_config, abstract.params))
  finally:
    ckpt.close()
  return state


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted single-device run of STEPS steps."""
  d = tmp_path_factory.mktemp("reference")
  r = _run(d / "run", STEPS, f"--dump={d / 'params.npz'}")
  assert r.returncode == 0, r.stderr[-3000:]
  return d / "run", _losses(d / "run"), _params_npz(d / "params.npz")


def test_kill_and_resume_equals_uninterrupted(reference_run, tmp_path):
  _, ref_losses, ref_params = reference_run
  work = tmp_path / "run"
  killed = _run(work, STEPS, "--kill_at=5")
  assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
  latest = ckpt_lib.Checkpointer(str(work / "checkpoints"), 3, async_save=False).latest_step()
  assert latest in (2, 4), latest  # step 4's async save may or may not have finished
  before = _losses(work)
  assert 4 <= max(before) < STEPS  # killed mid-run, after step 4 was logged

  resumed = _run(work, STEPS, f"--dump={tmp_path / 'params.npz'}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  losses = _losses(work)
  assert sorted(losses) == list(range(1, STEPS + 1))
  # Same seed, same data order (the grain iterator state is in the checkpoint), same per-step
  # noise (folded from the step): the loss curve and the params are those of the reference.
  np.testing.assert_allclose([losses[s] for s in range(1, STEPS + 1)],
                             [ref_losses[s] for s in range(1, STEPS + 1)], rtol=1e-6)
  params = _params_npz(tmp_path / "params.npz")
  assert params.keys() == ref_params.keys()
  for k in params:
    np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-6, atol=1e-7, err_msg=k)
  final = json.loads((work / "final_metrics.json").read_text())
  assert final["step"] == STEPS


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_restore_and_continue_on_a_different_mesh(reference_run, tmp_path):
  """6 steps on one device, then the remaining 4 steps in this process on an 8-device
  data x fsdp x tensor mesh: same losses and params as the single-device reference."""
  ref_dir, ref_losses, ref_params = reference_run
  work = tmp_path / "run"
  # Same schedule as the reference (steps=STEPS); killed after step 7, so the last
  # (synchronous) checkpoint is step 6.
  r = _run(work, STEPS, "--kill_at=7", "--config.train.async_checkpointing=false")
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert ckpt_lib.Checkpointer(str(work / "checkpoints"), 3, False).latest_step() == 6

  cfg = _config(steps=STEPS)
  cfg.mesh.shape = {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  task = TeacherTask(cfg)
  restored = load_dit_params(cfg, str(ref_dir))  # read the reference's final params too
  assert len(restored["blocks"]["ffn"]["fc1"]["kernel"].sharding.device_set) == 8
  for k, v in _flat(restored).items():
    np.testing.assert_array_equal(v, ref_params[k], err_msg=k)

  final = train(cfg, str(work), task)
  assert final["step"] == STEPS and final["n_devices"] == 8
  losses = _losses(work)
  np.testing.assert_allclose([losses[s] for s in range(1, STEPS + 1)],
                             [ref_losses[s] for s in range(1, STEPS + 1)], rtol=2e-5)
  params = _flat(load_dit_params(cfg, str(work)))
  for k in params:
    np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=2e-5, err_msg=k)


def test_training_reduces_the_loss_and_writes_its_outputs(tmp_path):
  cfg = _config(steps=120, log_every=10, checkpoint_every=60)
  cfg.mesh.shape = {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  cfg.train.profile_start_step = 5
  cfg.train.profile_num_steps = 2
  final = train(cfg, str(tmp_path), TeacherTask(cfg))
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert final["loss_last10_mean"] < 0.6 * final["first_loss"], final
  assert final["mfu"] is None  # no peak FLOP/s is known for a CPU
  assert final["tokens_per_s"] > 0 and final["peak_bytes"] > 0
  on_disk = json.loads((tmp_path / "final_metrics.json").read_text())
  assert on_disk["step"] == 120
  events = os.listdir(tmp_path / "tensorboard")
  assert any(e.startswith("events.out.tfevents") for e in events), events
  steps = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), 3, async_save=False).all_steps()
  assert sorted(steps) == [60, 120]


class _PoisonedIterator:
  """The real loader, with NaN latents in the batch of one step (1-based)."""

  def __init__(self, cfg, bad_step):
    self._it = make_train_iterator(cfg)
    self._bad = bad_step
    self._n = 0

  def __next__(self):
    batch = next(self._it)
    self._n += 1
    if self._n == self._bad:
      batch = {**batch, "latents": np.full_like(batch["latents"], np.nan)}
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


@pytest.mark.parametrize("bad_step", [3, 4])
def test_non_finite_step_raises_and_saves_nothing(tmp_path, bad_step):
  cfg = _config(steps=8, async_checkpointing=False)
  cfg.mesh.shape = {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  task = TeacherTask(cfg)
  with pytest.raises(NonFiniteError, match=rf"step {bad_step}: loss is nan.*Fix:"):
    train(cfg, str(tmp_path), task, iterator=_PoisonedIterator(cfg, bad_step))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), 3, async_save=False)
  assert ckpt.all_steps() == [2]
  state = _full_state(cfg, str(tmp_path), task)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state)))


def test_params_only_loading_reads_only_the_params_and_equals_the_full_restore(reference_run,
                                                                               monkeypatch):
  """`load_dit_params` restores one sub-tree of the saved train state (partial restore): Orbax
  deserialises that sub-tree's arrays and nothing else, and they are bit-identical (values and
  shardings) to the same sub-tree of a full-state restore. A checkpoint of another model is
  still refused by its metadata."""
  ref_dir = reference_run[0]
  cfg = _config(steps=STEPS)
  cfg.mesh.shape = {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  read = []  # the names of the arrays Orbax deserialises
  for handler in (type_handlers.ArrayHandler, type_handlers.NumpyHandler):
    def spy(self, infos, args=None, _orig=handler.deserialize):
      read.extend(info.name for info in infos)
      return _orig(self, infos, args)
    monkeypatch.setattr(handler, "deserialize", spy)

  full = _full_state(cfg, str(ref_dir), TeacherTask(cfg))
  assert any(n.startswith("opt_state.") for n in read)  # the spy sees what a restore reads
  for key in ("params", "ema_params"):
    read.clear()
    got = load_dit_params(cfg, str(ref_dir), key)
    want = getattr(full, key)
    assert len(read) == len(jax.tree.leaves(want)), read
    assert all(n.startswith(f"{key}.") for n in read), read
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == b.dtype and a.sharding == b.sharding
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # (the two sub-trees differ: a mixed-up key would fail above)
  params, ema = _flat(full.params), _flat(full.ema_params)
  assert any(not np.array_equal(params[k], ema[k]) for k in params)

  other = cfg.copy_and_resolve_references()
  other.model.dim, other.model.num_heads = 32, 2
  with pytest.raises(
      ckpt_lib.CheckpointError,
      match=r"was written by a different model \(param .* in the checkpoint but "
            r".* in this model\)\. Config differences: model\.dim: checkpoint 64, "
            r"config 32\. Fix: use the config that wrote it, or a fresh --workdir\."):
    load_dit_params(other, str(ref_dir))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"holds no checkpoint\. Fix: train first"):
    load_dit_params(cfg, str(ref_dir / "nothing"))
