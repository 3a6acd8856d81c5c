"""The shared training loop on a toy stage (a 4-vector pulled towards its batches, two step
kinds): each kind compiles once, a run stopped mid-way resumes to the uninterrupted run's state
and rows, and a non-finite step raises naming the latest good checkpoint, saving nothing."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic_jax import checkpoint as ckpt_lib
from relic_jax.config import get_base_config
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training import loop

STEPS = 6
SWITCH = 3  # steps 0-2 are kind "fast", 3-5 kind "slow"


@flax.struct.dataclass
class ToyState:
  step: jax.Array
  w: jax.Array


class ToyIterator:
  """Batch n is a [2, 4] array filled with n (NaN at poison, 1-based)."""

  def __init__(self, poison: int = -1):
    self.count, self.poison = 0, poison

  def __next__(self):
    self.count += 1
    value = np.nan if self.count == self.poison else float(self.count)
    return {"x": np.full((2, 4), value, np.float32)}

  def get_state(self):
    return {"count": self.count}

  def set_state(self, state):
    self.count = int(state["count"])


class ToyStage(loop.Stage):

  def __init__(self, workdir):
    cfg = get_base_config()
    self.workdir = workdir
    self.mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
    self.rules = mesh_lib.rules(cfg.mesh)
    self.cadence = loop.Cadence(steps=STEPS, log_every=2, checkpoint_every=2, keep_checkpoints=5,
                                async_checkpointing=False, progress_bar=False)
    self.batch_size = 2
    rep = mesh_lib.replicated(self.mesh)
    self.abstract_state = ToyState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
                                   w=jax.ShapeDtypeStruct((4,), jnp.float32, sharding=rep))
    self.meta = ckpt_lib.describe_model({"toy": 1}, {"w": self.abstract_state.w})
    self.compiled_kinds = []

  def init_state(self):
    return ToyState(step=jnp.zeros((), jnp.int32), w=jnp.zeros((4,), jnp.float32))

  def step_kind(self, step):
    return "fast" if step < SWITCH else "slow"

  def train_step(self, kind):
    lr = 0.5 if kind == "fast" else 0.1

    def step(state, batch):
      loss, grad = jax.value_and_grad(lambda w: jnp.mean(jnp.square(w - batch["x"])))(state.w)
      new = ToyState(step=state.step + 1, w=state.w - lr * grad)
      finite = jnp.isfinite(loss)
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      return new, {"loss": loss, "finite": finite}
    return step

  def example_batch(self, kind, batch_size):
    return {"x": np.zeros((batch_size, 4), np.float32)}

  def on_compiled(self, kind, stats):
    self.compiled_kinds.append(kind)

  def final_metrics(self, summary):
    return {"step": summary.step, "compiled": [str(k) for k in summary.compiled],
            "last_loss": summary.history[-1]["loss"] if summary.history else None}


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _saved(workdir):
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), 5, False).all_steps()


def _final_w(workdir):
  stage = ToyStage(str(workdir))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), 5, False)
  state, data = ckpt.restore(STEPS, stage.abstract_state, stage.meta)
  ckpt.close()
  return np.asarray(state.w), data


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("whole"))
  stage = ToyStage(work)
  final = loop.run(stage, ToyIterator())
  return work, stage, final


def test_each_step_kind_compiles_once_and_checkpoints_follow_the_cadence(whole):
  work, stage, final = whole
  assert stage.compiled_kinds == ["fast", "slow"]
  assert final["step"] == STEPS and final["compiled"] == ["fast", "slow"]
  assert sorted(_saved(work)) == [2, 4, 6]
  assert [r["step"] for r in _rows(work)] == [2, 4, 6]
  with open(os.path.join(work, "final_metrics.json")) as f:
    assert json.load(f) == final


def test_a_stopped_run_resumes_to_the_uninterrupted_state(whole, tmp_path):
  work, _, _ = whole

  class Stop(Exception):
    pass

  def stop_at_3(step, scalars):
    del scalars
    if step == 3:
      raise Stop  # after checkpoint 2, before checkpoint 4

  with pytest.raises(Stop):
    loop.run(ToyStage(str(tmp_path)), ToyIterator(), hooks=(stop_at_3,))
  assert _saved(tmp_path) == [2]
  resumed = ToyStage(str(tmp_path))
  loop.run(resumed, ToyIterator())
  assert resumed.compiled_kinds == ["fast", "slow"]  # step 2 is still a "fast" step
  w_a, data_a = _final_w(tmp_path)
  w_b, data_b = _final_w(work)
  np.testing.assert_array_equal(w_a, w_b)
  assert data_a == data_b == {"count": STEPS}
  assert _rows(tmp_path) == _rows(work)


def test_non_finite_step_raises_naming_the_latest_checkpoint(tmp_path):
  with pytest.raises(loop.NonFiniteError, match=r"latest good checkpoint is step 2"):
    loop.run(ToyStage(str(tmp_path)), ToyIterator(poison=4))
  assert _saved(tmp_path) == [2]
