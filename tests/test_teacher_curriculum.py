"""The teacher's horizon curriculum (phases in their directories, each from the previous one's
params, YaRN following the horizon, finished phases skipped, unfinished ones resumed, a changed
curriculum refused), caption dropout for classifier-free guidance, and their config errors.

One two-phase run (a module fixture) backs the training tests: each phase compiles a train step
(~10 s on CPU), so the file compiles twice; the resume decision is checked with a stand-in for
the trainer (the trainer's own resume is tests/test_trainer.py's).
"""

import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipeline import generate
from data_pipeline import latent_cache as lc
from data_pipeline.loader import CachedLatents, make_train_iterator
from relic_jax import stages
from relic_jax.config import ConfigError, get_base_config, validate
from relic_jax.config.derive import final_teacher_config, phase_config, yarn_factors
from relic_jax.inference import loading
from relic_jax.training import teacher as teacher_lib
from relic_jax.training import trainer as trainer_lib
from relic_jax.training.teacher import CurriculumError, TeacherTask, drop_text, train_teacher
from tests.test_data import small_data_config
from tests.test_latent_cache import latent_teacher_config, pool_encoder, short_student

# yarn_original_frames = 4 makes the tiny second phase (6 frames) a YaRN phase: factor 1.5
CURRICULUM = ((4, 2), (6, 2))


def _base():
  """The base config's tiny model cut to one unscanned layer: it compiles ~30% faster."""
  c = get_base_config()
  c.model.num_layers, c.model.scan_layers = 1, False
  return c


def _cfg(curriculum=CURRICULUM, **train):
  c = _base()
  c.mesh.shape = {"data": 2, "fsdp": 1, "context": 4, "tensor": 1}  # batch 2 on 8 devices
  c.model.yarn_original_frames = 4
  c.data.num_examples = 8
  # checkpoints only at each phase's end: a save of the sharded state costs ~2 s on CPU
  c.train.update({"batch_size": 2, "warmup_steps": 1, "checkpoint_every": 100, "log_every": 1,
                  "progress_bar": False, "async_checkpointing": False,
                  "horizon_curriculum": curriculum, **train})
  return c


class _Spy:
  """Replaces trainer.train, recording each call's (phase cfg, run dir, task, init_params);
  it runs the real trainer when `real` is set, else returns {} without training."""

  def __init__(self, monkeypatch, real=True):
    self.calls = []
    train_fn = trainer_lib.train

    def train(cfg, workdir, task, iterator=None, hooks=(), init_params=None):
      self.calls.append({"cfg": cfg, "dir": workdir, "task": task, "init": init_params})
      return train_fn(cfg, workdir, task, iterator, hooks, init_params) if real else {}
    monkeypatch.setattr(trainer_lib, "train", train)


def _flat(params):
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(nn.meta.unbox(params)))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def _phase_params(cfg, workdir, i):
  pcfg = phase_config(cfg, i)
  d = teacher_lib.phase_dirs(cfg, workdir)[i]
  return _flat(loading.load_dit_params(pcfg, d))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The curriculum trained into <workdir>/teacher, then run again; the trainer calls of each."""
  workdir = str(tmp_path_factory.mktemp("curriculum"))
  cfg = _cfg()
  with pytest.MonkeyPatch.context() as mp:
    spy = _Spy(mp)
    train_teacher(cfg, workdir, make_train_iterator)
    first, spy.calls = spy.calls, []
    final = train_teacher(cfg, workdir, make_train_iterator)
    rerun = spy.calls
  return {"cfg": cfg, "workdir": workdir, "first": first, "rerun": rerun, "final": final,
          "phase1_params": _phase_params(cfg, workdir, 0)}


def test_phases_run_in_order_in_their_directories_with_their_horizon_and_yarn(run):
  teacher = os.path.join(run["workdir"], "teacher")
  want = [(os.path.join(teacher, "horizon_0_4f"), 4, 2, 1.0), (teacher, 6, 2, 1.5)]
  calls = run["first"]
  assert [(c["dir"], c["cfg"].data.latent_frames, c["cfg"].train.steps,
           c["cfg"].model.yarn_factor) for c in calls] == want
  for c in calls:  # the task the trainer compiled sees the phase's clip and RoPE
    assert c["task"].dit.yarn_factor == c["cfg"].model.yarn_factor
    assert c["task"].example_batch(1)["latents"].shape[1] == c["cfg"].data.latent_frames
  for d, frames, steps, yarn in want:
    with open(os.path.join(d, "config.json")) as f:
      saved = json.load(f)
    assert (saved["data"]["latent_frames"], saved["model"]["yarn_factor"]) == (frames, yarn)
    with open(os.path.join(d, "final_metrics.json")) as f:
      assert json.load(f)["step"] == steps
  with open(os.path.join(teacher, "curriculum.json")) as f:
    record = json.load(f)
  assert [(p["dir"], p["latent_frames"], p["steps"], p["yarn_factor"], p["done"])
          for p in record["phases"]] == [("horizon_0_4f", 4, 2, 1.0, True), (".", 6, 2, 1.5, True)]


@pytest.fixture(scope="module")
def fresh_params():
  """The model's freshly initialised params (seed 0): where a run without a curriculum, or
  phase 1 of one, starts."""
  return nn.meta.unbox(jax.jit(TeacherTask(_base()).init_params)(jax.random.key(0)))


def test_phase_two_starts_from_phase_one_params(run, fresh_params):
  first = run["first"]
  assert first[0]["init"] is None  # phase 1: a fresh init (or train.init_from)
  init = _flat(first[1]["init"])
  trained = run["phase1_params"]
  assert init.keys() == trained.keys()
  for k in trained:
    np.testing.assert_array_equal(init[k], trained[k], err_msg=k)
  # and phase 1 did move them, so a fresh start would have failed the check above
  assert run["cfg"].seed == 0
  fresh = _flat(fresh_params)
  assert any(not np.array_equal(fresh[k], trained[k]) for k in trained)


def test_a_rerun_skips_finished_phases(run):
  assert run["rerun"] == []  # nothing trained, nothing compiled
  with open(os.path.join(run["workdir"], "teacher", "final_metrics.json")) as f:
    assert run["final"] == json.load(f)
  assert run["final"]["step"] == 2


def test_an_unfinished_phase_resumes_without_reloading_the_previous_one(run, tmp_path,
                                                                           monkeypatch):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  # the last phase may grow (like train.steps): its checkpoint at 2 of 3 steps is unfinished
  spy = _Spy(monkeypatch, real=False)
  monkeypatch.setattr(loading, "load_dit_params", lambda *a, **k: pytest.fail("reloaded"))
  train_teacher(_cfg(((4, 2), (6, 3))), workdir, make_train_iterator)
  assert [(c["dir"], c["cfg"].train.steps, c["init"]) for c in spy.calls] == [
      (os.path.join(workdir, "teacher"), 3, None)]  # the trainer resumes it from its checkpoint


def test_a_changed_curriculum_is_refused(run, tmp_path):
  cfg = _cfg(((4, 3), (6, 2)))  # phase 1 longer than what phase 2 started from
  with pytest.raises(CurriculumError, match=re.escape(
      "records the phases (latent_frames, steps, yarn_factor) [(4, 2, 1.0), (6, 2, 1.5)], but "
      "this config asks for [(4, 3, 1.0), (6, 2, 1.5)]. Fix: ")):
    train_teacher(cfg, run["workdir"], make_train_iterator)
  # a teacher trained without a curriculum is not silently resumed as the last phase
  shutil.copytree(os.path.join(run["workdir"], "teacher", "horizon_0_4f", "checkpoints"),
                  tmp_path / "teacher" / "checkpoints")
  with pytest.raises(CurriculumError, match="trained without a horizon curriculum"):
    train_teacher(_cfg(), str(tmp_path), make_train_iterator)


def test_phase_configs_and_yarn_factors():
  c = _cfg(((4, 5), (10, 6), (8, 7)))  # a shorter phase after a longer one keeps its factor
  assert yarn_factors(c) == [1.0, 2.5, 2.5]
  p = phase_config(c, 2)
  assert (p.data.latent_frames, p.train.steps, p.model.yarn_factor) == (8, 7, 2.5)
  assert c.data.latent_frames == 4 and c.model.yarn_factor == 1.0  # cfg itself untouched
  assert final_teacher_config(c).model.yarn_factor == 2.5
  assert final_teacher_config(c).data.latent_frames == 8
  with pytest.raises(IndexError, match="has 3 phase"):
    phase_config(c, 3)
  c.train.yarn_auto = False
  assert yarn_factors(c) == [1.0, 1.0, 1.0]
  c.train.yarn_auto = True
  c.model.yarn_factor = 4.0  # set by the user: kept for every phase
  assert yarn_factors(c) == [4.0, 4.0, 4.0]
  empty = _cfg(())
  assert final_teacher_config(empty) is empty
  p = phase_config(empty, 0)
  assert (p.data.latent_frames, p.train.steps) == (empty.data.latent_frames, empty.train.steps)


@pytest.fixture(scope="module")
def loss_setup(fresh_params):
  """Params whose output projection is random (it starts at zero, which would hide the text),
  a batch and two different texts."""
  k = fresh_params["proj_out"]["kernel"]
  params = {**fresh_params, "proj_out": {
      **fresh_params["proj_out"], "kernel": 0.1 * jax.random.normal(jax.random.key(1), k.shape)}}
  shape = TeacherTask(_base()).example_batch(2)
  latents = jax.random.normal(jax.random.key(2), shape["latents"].shape)
  texts = [jax.random.normal(jax.random.key(i), shape["text"].shape) for i in (10, 11)]
  return params, latents, texts


def test_text_dropout_one_makes_the_loss_text_independent(loss_setup):
  params, latents, (text_a, text_b) = loss_setup

  def losses(p):
    c = _base()
    c.train.text_dropout = p
    fn = jax.jit(TeacherTask(c).loss_fn)
    return [float(fn(params, {"latents": latents, "text": t}, jax.random.key(3)))
            for t in (text_a, text_b, 0 * text_a)]
  a, b, null = losses(0.0)
  assert a != b  # the text matters
  assert losses(1.0) == [null, null, null]  # every example sees the null text (zeros)


def test_dropped_text_is_the_batchs_null_text(loss_setup):
  """With umT5 captions the batch carries the empty caption's embedding ("null_text"): a
  dropped example sees it, not zeros (the loss with every text dropped equals the loss of
  that embedding as the text)."""
  params, latents, (text_a, text_b) = loss_setup
  c = _base()
  c.train.text_dropout = 1.0
  fn = jax.jit(TeacherTask(c).loss_fn)
  dropped = float(fn(params, {"latents": latents, "text": text_a, "null_text": text_b},
                     jax.random.key(3)))
  c.train.text_dropout = 0.0
  as_text = float(jax.jit(TeacherTask(c).loss_fn)(params, {"latents": latents, "text": text_b},
                                                  jax.random.key(3)))
  zeros = float(fn(params, {"latents": latents, "text": text_a}, jax.random.key(3)))
  assert dropped == as_text and dropped != zeros


def test_drop_text_is_per_example():
  tokens = np.arange(1, 1 + 256 * 8, dtype=np.int32).reshape(256, 8)
  out = np.asarray(drop_text(jax.random.key(0), tokens, 0.3))
  dropped = (out == 0).all(1)
  np.testing.assert_array_equal(out[~dropped], tokens[~dropped])  # kept rows untouched
  assert 0.2 < dropped.mean() < 0.4, dropped.mean()
  emb = np.ones((4, 3, 5), np.float32)
  assert np.asarray(drop_text(jax.random.key(0), emb, 1.0)).sum() == 0.0


@pytest.mark.parametrize("field,value,needle", [
    ("horizon_curriculum", "21,5000", "must be a list of (latent_frames, steps) phases"),
    ("horizon_curriculum", ((21, 5000, 1),), "phase 0 ((21, 5000, 1)) is not a"),
    ("horizon_curriculum", ((21, 5000), (41, 0)), "phase 1 ((41, 0)) needs a positive integer"),
    ("horizon_curriculum", ((21.0, 10),), "needs a positive integer"),
    ("horizon_curriculum", ((1, 10),), "no frame left to denoise"),
    ("text_dropout", 1.5, "is a probability"),
    ("text_dropout", -0.1, "is a probability"),
    ("yarn_auto", "yes", "must be True or False"),
])
def test_bad_teacher_training_values_name_the_field_and_the_fix(field, value, needle):
  c = get_base_config()
  with c.train.ignore_type():
    c.train[field] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  msg = str(e.value)
  assert msg.startswith(f"config.train.{field}="), msg
  assert needle in msg and "Fix: " in msg, msg


def test_curriculum_frames_must_fit_the_temporal_patch():
  c = get_base_config()
  c.model.patch_size = (2, 2, 2)
  c.train.horizon_curriculum = ((4, 10), (7, 10))
  with pytest.raises(ConfigError, match=r"phase 1 has 7 latent frames, not divisible by the "
                                        r"temporal patch size 2.*Fix: use multiples"):
    validate(c)


def test_the_curriculum_runs_on_a_real_latent_cache_reading_prefixes(tmp_path, monkeypatch):
  """`relic train_teacher` with data.source='latents' through a (3, 5)-frame curriculum on a
  cache `lc.build` encoded from ViZDoom episodes: the cache holds clips of the longest horizon
  (5 latent frames) and each phase reads its prefix, so phase 2 finds its clips (with clips of
  data.latent_frames = 3 it raised DataError) and both phases train."""
  data_cfg = short_student(small_data_config())  # 3 episodes of 80 frames; data.latent_frames 3
  generate.generate(data_cfg, str(tmp_path / "data"), progress=False)
  cfg = latent_teacher_config(data_cfg, steps=2)
  cfg.model.num_layers, cfg.model.scan_layers = 1, False
  cfg.model.yarn_original_frames = 3
  cfg.train.update({"horizon_curriculum": ((3, 2), (5, 2)), "async_checkpointing": False})
  r = lc.build(cfg, str(tmp_path / "data"), str(tmp_path / "latents"), pool_encoder(), "v", 8,
               progress=False)
  meta = lc.LatentCacheSource(str(tmp_path / "latents")).meta["clip"]
  assert (meta["latent_frames"], meta["horizons"]) == (5, [3, 4, 5]) and r["num_clips"] >= 8
  spy = _Spy(monkeypatch)
  stages.train_teacher(cfg, str(tmp_path))
  assert [(c["cfg"].data.latent_frames, c["cfg"].model.yarn_factor) for c in spy.calls] == [
      (3, 1.0), (5, 5 / 3)]
  with open(tmp_path / "teacher" / "curriculum.json") as f:
    record = json.load(f)["phases"]
  assert [p["done"] for p in record] == [True, True]
  assert all(np.isfinite(p["final_loss"]) for p in record)
  for c, frames in zip(spy.calls, (3, 5)):  # what each phase's trainer read: its prefix
    x = CachedLatents(c["cfg"], str(tmp_path / "latents"))[0]
    assert x["latents"].shape[0] == frames and x["actions"].shape[0] == 1 + 4 * (frames - 1)
    assert c["task"].example_batch(1)["action_scale"].shape == (1,)
