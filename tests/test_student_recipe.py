"""The student's recipe trains its memory (issue 17): every config's ODE init and longest
rollout read the pooled memory, the memory's settings change the ODE-init loss and the DMD
gradient (and stop changing them once the recipe stays inside the window), the memory sweep's
variants train different students, and Self-Forcing's DMD details (timestep sampling, CFG
convention, one guidance, EMA start, one exit step, per-clip action scale)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import experiments.tiny as tiny
from experiments.sweeps import memory as memory_sweep
from relic_jax.config import ConfigError, derive, parent_config, validate
from relic_jax.config.validation import context_frames, standard_guidance
from relic_jax.training import distill as dl
from relic_jax.training import ode_init as oi
from relic_jax.training import self_forcing as sf
from relic_jax.training.teacher import TeacherTask
from tests.helpers import REPO

CONFIGS = ("tiny", "small", "wan_1_3b", "relic_14b")


def _experiment(name):
  return parent_config(f"{REPO}/experiments/{name}.py", name)


def _perturbed(params, seed, scale=0.02):
  """Every param non-zero (proj_out is zero-initialised), so outputs depend on all of them."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _with(cfg, **overrides):
  out = cfg.copy_and_resolve_references()
  for dotted, v in overrides.items():
    group, field = dotted.split("__")
    out[group][field] = v
  return out


# ------------------------------------------------------------------ the recipe in every config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_the_memory_and_its_teacher_covers_what_it_scores(name):
  cfg = _experiment(name)
  validate(cfg)
  o, d, w = cfg.ode_init, cfg.distill, cfg.memory.window
  assert cfg.memory.mode in ("relic", "full")
  clean = o.blocks - o.noisy_blocks
  assert context_frames(cfg, clean) > w, "ODE init's clean context stays in the window"
  blocks = [b for b, _ in d.rollout_curriculum]
  assert blocks == sorted(blocks) and len(blocks) == 3  # RELIC's 5 s -> 10 s -> 20 s shape
  assert context_frames(cfg, blocks[-1] - 1) > 2 * w, "the longest rollout must go well past"
  longest = max(oi.clip_frames(cfg), dl.rollout_frames(cfg))
  assert max(f for f, _ in derive.phases(cfg)) >= longest, (derive.phases(cfg), longest)
  # Self-Forcing's DMD details are the defaults
  assert d.timestep_sampling == "shift_then_clamp" and d.same_exit_across_blocks
  assert cfg.generate.cfg_convention == "self_forcing"
  if cfg.train.text_dropout > 0:
    assert cfg.generate.guidance == 3.0  # Self-Forcing's 3 = standard CFG 4
  assert 0 < d.ema_start_step < sum(s for _, s in d.rollout_curriculum)


@pytest.mark.parametrize("variant", sorted(memory_sweep.VARIANTS))
def test_memory_sweep_variants_validate(variant):
  cfg = tiny.get_config()
  for dotted, v in memory_sweep.VARIANTS[variant][0].items():
    group, field = dotted.split(".")
    cfg[group][field] = v
  validate(cfg)


# ------------------------------------------------------------------ validation


def test_validate_refuses_a_recipe_inside_the_window_unless_there_is_no_memory():
  cfg = tiny.get_config()
  cfg.distill.rollout_curriculum = ((1, 20), (2, 20))  # 7 latent frames: the old recipe
  with pytest.raises(ConfigError, match=r"config.distill.rollout_curriculum=.*never leaves "
                     r"memory.window=6.*Fix: end the curriculum with rollouts of >= 3 blocks"):
    validate(cfg)
  cfg = tiny.get_config()
  cfg.ode_init.blocks = 2  # 1 clean block: 4 latent frames of context
  with pytest.raises(ConfigError, match=r"config.ode_init.blocks=2: with noisy_blocks=1 the "
                     r"clean context .* = 4 latent frames\) fits in memory.window=6.*Fix: use "
                     r"ode_init.blocks >= 3"):
    validate(cfg)
  cfg.distill.rollout_curriculum = ((1, 20),)
  cfg.memory.mode = "window"  # no memory to train: nothing to refuse
  validate(cfg)


def test_validate_refuses_guidance_without_an_unconditional_branch():
  cfg = tiny.get_config()
  assert cfg.train.text_dropout == 0 and not cfg.train.init_from
  cfg.generate.guidance = 3.0
  with pytest.raises(ConfigError, match=r"config.generate.guidance=3.0: classifier-free "
                     r"guidance .* never learns one .*Fix: train the teacher with caption "
                     r"dropout"):
    validate(cfg)
  cfg.generate.cfg_convention, cfg.generate.guidance = "standard", 1.0  # none, in standard
  validate(cfg)
  cfg.generate.guidance = 4.0
  with pytest.raises(ConfigError, match="never learns one"):
    validate(cfg)
  cfg.train.text_dropout = 0.1
  validate(cfg)
  cfg.train.text_dropout, cfg.train.init_from = 0.0, "wan_weights"  # pretrained: has one
  validate(cfg)


def test_cfg_conventions_one_formula():
  cfg = tiny.get_config()
  cfg.generate.guidance = 3.0
  assert standard_guidance(cfg) == 4.0  # Self-Forcing's 3 is standard 4
  cfg.generate.cfg_convention = "standard"
  assert standard_guidance(cfg) == 3.0
  # ODE init has no guidance of its own: both stages read generate.guidance
  assert "guidance" not in cfg.ode_init and "guidance" not in cfg.distill
  cfg.train.text_dropout = 0.1
  assert sf.spec_from_config(cfg, 2).guidance == 3.0


def test_ode_trajectories_and_dmd_use_the_same_guidance(monkeypatch, tmp_path):
  cfg = tiny.get_config()
  cfg.train.text_dropout, cfg.generate.guidance = 0.1, 3.0
  cfg.ode_init.num_trajectories, cfg.train.batch_size = 2, 2
  seen = []

  def fake_trajectory(teacher, dit, sigmas, keep, latent0, text, actions, poses, rng, guidance,
                      null=None):
    seen.append(guidance)
    b, t = latent0.shape[0], oi.clip_frames(cfg)
    return (jnp.zeros((b, len(keep), t) + latent0.shape[2:]),  # x0: the null text's mean
            jnp.full((b, t) + latent0.shape[2:], jnp.mean(null)))

  monkeypatch.setattr(oi, "teacher_trajectory", fake_trajectory)
  data = cfg.copy_and_resolve_references()
  data.data.latent_frames = oi.clip_frames(cfg)
  batch = TeacherTask(data).example_batch(2)
  oi.write_trajectories(data, str(tmp_path), None, iter([batch]))
  assert seen == [sf.spec_from_config(cfg, 2).guidance] == [4.0]

  def null_mean(work):
    return float(np.load(os.path.join(work, "ode_init", "trajectories", "part_00000.npz"))
                 ["x0"].mean())
  assert null_mean(str(tmp_path)) == 0.0  # byte captions: the null text is zeros
  # umT5 captions: the batch's empty-caption embedding is the unconditional text
  null = np.full_like(batch["text"], 0.5)
  oi.write_trajectories(data, str(tmp_path / "umt5"), None, iter([{**batch, "null_text": null}]))
  assert null_mean(str(tmp_path / "umt5")) == 0.5


# ------------------------------------------------------------------ DMD details


def test_dmd_timesteps_shift_then_clamp_vs_uniform_shifted_range():
  cfg = tiny.get_config()
  p = {}
  for mode in ("shift_then_clamp", "uniform_shifted_range"):
    cfg.distill.timestep_sampling = mode
    spec = sf.spec_from_config(cfg, 2)
    sig = np.asarray(sf.dmd_sigma(spec, jax.random.key(0), (200_000,)))
    assert sig.min() >= spec.min_sigma - 1e-6 and sig.max() <= spec.max_sigma + 1e-6
    p[mode] = float(np.mean(sig > 0.9))
  # Self-Forcing: randint(0, 1000), shift 5, clamp to [20, 980]: P(sigma > 0.9) = 0.357
  assert p["shift_then_clamp"] == pytest.approx(0.357, abs=0.005)
  assert p["uniform_shifted_range"] == pytest.approx(0.106, abs=0.005)
  cfg.distill.timestep_sampling = "shift_then_clamp"
  spec = sf.spec_from_config(cfg, 2)
  assert (spec.min_sigma, spec.max_sigma) == (0.02, 0.98)


def test_one_exit_step_for_all_blocks_by_default():
  cfg = tiny.get_config()
  spec = sf.spec_from_config(cfg, 8)
  for seed in range(5):
    e = np.asarray(sf.sample_exits(spec, jax.random.key(seed)))
    assert len(set(e.tolist())) == 1
  cfg.distill.same_exit_across_blocks = False
  spec = sf.spec_from_config(cfg, 8)
  assert any(len(set(np.asarray(sf.sample_exits(spec, jax.random.key(s))).tolist())) > 1
             for s in range(5))


# ------------------------------------------------------------------ a small model


def _small_cfg():
  """tiny's recipe on a one-layer model (compile time dominates these tests)."""
  cfg = tiny.get_config()
  cfg.model.num_layers = 1
  cfg.model.action_dim, cfg.model.pose_dim = 13, 12
  return cfg


@pytest.fixture(scope="module")
def params():
  cfg = _small_cfg()
  base = nn.meta.unbox(TeacherTask(cfg).init_params(jax.random.key(0)))
  # perturbed by 0.1 (about a trained model's spread): near-initial params attend almost
  # uniformly and barely read their context, which would hide what the memory changes
  return _perturbed(base, 1, 0.1), _perturbed(base, 2, 0.1), _perturbed(base, 3, 0.1)


def _distill_batch(cfg, blocks, b=2, seed=4, scale=None):
  k = jax.random.split(jax.random.key(seed), 3)
  f = blocks * cfg.model.block_frames * cfg.model.cond_frames_per_latent
  out = {"latent0": jax.random.normal(k[0], (b, 1, 8, 8, 16)),
         "text": jax.random.normal(k[1], (b, 8, 32)),
         "actions": jax.random.uniform(k[2], (b, f, 13))}
  if scale is not None:
    out["action_scale"] = jnp.asarray(scale, jnp.float32)
  return out


def test_ema_equals_the_generator_before_ema_start_step(params):
  gen, teacher, critic = params
  cfg = _small_cfg()
  cfg.distill.gen_lr = 1e-3
  spec = sf.spec_from_config(cfg, 1)
  tx_g, tx_c = dl.optimizers(cfg.distill)
  batch = _distill_batch(cfg, 1)
  update = jax.jit(lambda s: dl.generator_update(s, teacher, batch, spec, tx_g, 0.9,
                                                 jax.random.key(1), ema_start_step=3))
  state = dl._new_state(gen, critic, tx_g, tx_c)
  ema_before = jax.tree.map(lambda x: x - 0.01, gen)  # an EMA that is not the generator
  for step, follows in ((2, True), (3, False)):
    s = state.replace(step=jnp.asarray(step, jnp.int32), gen_ema=ema_before)
    new, _, _ = update(s)
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(new.gen_ema), jax.tree.leaves(new.gen)))
    assert same == follows, step
    if not follows:  # the EMA mixes: 0.9 old + 0.1 new
      a, b, c = (np.asarray(jax.tree.leaves(t)[0]) for t in (new.gen_ema, ema_before, new.gen))
      np.testing.assert_allclose(a, 0.9 * b + 0.1 * c, atol=1e-6)


def test_rollout_integrates_each_examples_action_scale(params):
  gen = params[0]
  cfg = _small_cfg()
  spec = sf.spec_from_config(cfg, 1)
  batch = _distill_batch(cfg, 1, scale=[0.05, 0.2])
  batch["actions"] = jnp.broadcast_to(batch["actions"][:1], batch["actions"].shape)  # same acts
  rec = jax.jit(lambda: sf.rollout(gen, spec, batch["latent0"], batch["text"], batch["actions"],
                                   jnp.zeros((1,), jnp.int32), jax.random.key(0),
                                   batch["action_scale"]))()
  t = np.asarray(rec["poses"][0, :, :, :3, 3])  # [B, F, 3] positions
  np.testing.assert_allclose(t[1], 4.0 * t[0], rtol=1e-4, atol=1e-7)
  assert np.abs(t[0]).max() > 1e-3
  # the stage's batch: the clip's scale when the data has it, else generate.action_scale
  data = {"latents": np.zeros((2, 4, 8, 8, 16)), "text": np.zeros((2, 8, 32))}
  np.testing.assert_allclose(dl.to_distill_batch(cfg, data, 1)["action_scale"], [0.06, 0.06])
  data["action_scale"] = np.asarray([0.1, 0.3], np.float32)
  np.testing.assert_allclose(dl.to_distill_batch(cfg, data, 1)["action_scale"], [0.1, 0.3])


# ------------------------------------------------------------------ the memory is trained


def _ode_batch(cfg, b=2, seed=5):
  t = oi.clip_frames(cfg)
  s = len(cfg.generate.timesteps)
  f = 1 + cfg.model.cond_frames_per_latent * (t - 1)
  k = jax.random.split(jax.random.key(seed), 4)
  return {"states": jax.random.normal(k[0], (b, s, t, 8, 8, 16)),
          "x0": jax.random.normal(k[1], (b, t, 8, 8, 16)),
          "text": jax.random.normal(k[2], (b, 8, 32)),
          "actions": jax.random.uniform(k[3], (b, f, 13)),
          "poses": jnp.broadcast_to(jnp.eye(4)[:3].reshape(12), (b, f, 12))}


def _ode_loss(cfg, params, batch):
  task = oi.ODEInitTask(oi.stage_config(cfg))
  return float(jax.jit(task.loss_fn)(params, batch, jax.random.key(0)))


MEMORY_CHANGES = {"schedule": {"memory__schedule": (4,)}, "mode": {"memory__mode": "full"}}


def test_memory_changes_the_ode_init_loss_and_not_inside_the_window(params):
  gen = params[0]
  cfg = _with(_small_cfg(), ode_init__random_context=False)  # the longest clean context
  batch = _ode_batch(cfg)
  base = _ode_loss(cfg, gen, batch)
  for name, change in MEMORY_CHANGES.items():
    diff = abs(_ode_loss(_with(cfg, **change), gen, batch) - base)
    # measured 2.4e-3 (schedule) and 4.4e-3 (mode) of the loss; float32 rounding is ~1e-7
    assert diff > 5e-4 * base, (name, diff, base)
  # the same changes with a window that holds the whole clean context: no memory is read
  inside = _with(cfg, memory__window=16)
  base = _ode_loss(inside, gen, batch)
  for name, change in MEMORY_CHANGES.items():
    diff = abs(_ode_loss(_with(inside, **change), gen, batch) - base)
    assert diff <= 1e-6 * base, (name, diff, base)


def test_random_context_trains_the_block_after_the_image(params):
  """ode_init.random_context draws the clean context's length per step, so the first block
  (what a session generates with only frame 0 before it) is sometimes the noised one and its
  trajectory states reach the loss; with the fixed split they never do."""
  gen = params[0]
  cfg = _small_cfg()
  batch = _ode_batch(cfg)
  first = slice(1, 1 + cfg.model.block_frames)
  moved = dict(batch, states=batch["states"].at[:, :, first].add(1.0))

  def reads_first_block(c, key):
    loss = jax.jit(oi.ODEInitTask(oi.stage_config(c)).loss_fn)
    return float(loss(gen, moved, jax.random.key(key))) != float(loss(gen, batch,
                                                                      jax.random.key(key)))

  assert any(reads_first_block(cfg, k) for k in range(8))
  fixed = _with(cfg, ode_init__random_context=False)
  assert not any(reads_first_block(fixed, k) for k in range(8))


def _dmd_grads(cfg, params, blocks):
  gen, teacher, critic = params
  spec = sf.spec_from_config(cfg, blocks)
  batch = _distill_batch(cfg, blocks, b=1)
  fn = jax.jit(lambda g: sf.generator_grads(g, teacher, critic, spec, batch,
                                            jax.random.key(7))[0])
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(fn(gen))])


def test_memory_schedule_changes_the_dmd_gradient(params):
  """The default suite's version of the test below: RELIC's schedule vs uniform 4x4 pooling
  on tiny's longest rollout (8 blocks, 25 latent frames)."""
  cfg = _small_cfg()
  blocks = max(b for b, _ in cfg.distill.rollout_curriculum)
  base = _dmd_grads(cfg, params, blocks)
  diff = float(jnp.linalg.norm(_dmd_grads(_with(cfg, memory__schedule=(4,)), params, blocks)
                               - base))
  assert diff > 1e-3 * float(jnp.linalg.norm(base)), diff


@pytest.mark.slow  # 6 compilations of the 8-block DMD step (~2 min on 2 busy cores)
def test_memory_changes_the_dmd_gradient_and_not_inside_the_window(params):
  cfg = _small_cfg()
  blocks = max(b for b, _ in cfg.distill.rollout_curriculum)  # the longest rollout: 8 blocks
  for window, far in ((cfg.memory.window, True), (context_frames(cfg, blocks), False)):
    c = _with(cfg, memory__window=window)
    base = _dmd_grads(c, params, blocks)
    size = float(jnp.linalg.norm(base))
    assert size > 1e-4
    for name, change in MEMORY_CHANGES.items():
      diff = float(jnp.linalg.norm(_dmd_grads(_with(c, **change), params, blocks) - base))
      if far:
        assert diff > 1e-3 * size, (name, diff, size)  # rounding: ~1e-7 of it
      else:
        assert diff <= 1e-5 * size, (name, diff, size)


def _ode_init_steps(cfg, params, batch, steps=3):
  """A few ODE-init updates (SGD: the step is proportional to the gradient) from the same
  params on the same batch -> the flattened params."""
  task = oi.ODEInitTask(oi.stage_config(cfg))
  tx = optax.sgd(0.05)
  grad = jax.jit(jax.grad(task.loss_fn))
  opt = tx.init(params)
  for i in range(steps):
    updates, opt = tx.update(grad(params, batch, jax.random.key(i)), opt, params)
    params = optax.apply_updates(params, updates)
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)])


def _flat(params):
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)])


@pytest.mark.slow  # one ODE-init compilation per variant (8), ~4 min on 2 busy cores
def test_memory_sweep_variants_train_different_students(params):
  """Each variant of experiments/sweeps/memory.py (and its baseline) trains a different
  student: a few ODE-init steps from the same params on the same batch differ, or, where the
  ODE init cannot tell two variants apart, their DMD gradients on the longest rollout do
  (window_12 vs full: with a window of 12 only frame 0 leaves the 13-frame clean context,
  and S[0] = 1 keeps it unpooled, as full does; the 25-frame rollout pools the rest)."""
  cfg = _small_cfg()
  batch = _ode_batch(cfg)
  start = _flat(params[0])
  configs = {"base": cfg}
  for name, (overrides, _) in memory_sweep.VARIANTS.items():
    configs[name] = _with(cfg, **{k.replace(".", "__"): v for k, v in overrides.items()})
  students = {k: _ode_init_steps(c, params[0], batch) for k, c in configs.items()}
  blocks = max(b for b, _ in cfg.distill.rollout_curriculum)
  dmd = {}
  names = sorted(students)
  for i, a in enumerate(names):
    moved = np.linalg.norm(students[a] - start)
    for b in names[i + 1:]:
      if np.linalg.norm(students[a] - students[b]) > 1e-3 * moved:
        continue
      for k in (a, b):
        if k not in dmd:
          dmd[k] = np.asarray(_dmd_grads(configs[k], params, blocks))
      assert np.linalg.norm(dmd[a] - dmd[b]) > 1e-3 * np.linalg.norm(dmd[a]), (a, b)


def test_two_memory_variants_train_different_students(params):
  """The default suite's version of the sweep test: an ODE-init step under RELIC's schedule
  and under uniform 4x4 pooling gives different students (with a window holding the whole
  clip the loss, hence the step, would not change: the test above). The longest clean context
  (a drawn shorter one may fit in the window, where no memory is read)."""
  cfg = _with(_small_cfg(), ode_init__random_context=False)
  batch = _ode_batch(cfg)
  start = _flat(params[0])
  a = _ode_init_steps(cfg, params[0], batch, steps=1)
  b = _ode_init_steps(_with(cfg, memory__schedule=(4,)), params[0], batch, steps=1)
  moved, diff = np.linalg.norm(a - start), np.linalg.norm(a - b)
  assert diff > 1e-3 * moved, (diff, moved)
