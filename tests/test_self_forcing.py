"""Self-forcing DMD (training/self_forcing.py, training/distill.py): replayed back-propagation
equals the naive gradient, each update touches only its own params, the teacher is frozen, and
a sharded step equals one device. (The step's critic:generator schedule is checked by the
stage tests, tests/test_distill_stage.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic_jax.config import get_base_config
from relic_jax.training import distill as dl
from relic_jax.training import self_forcing as sf
from relic_jax.training.teacher import TeacherTask


def _cfg():
  cfg = get_base_config()
  cfg.model.action_dim, cfg.model.pose_dim = 13, 12
  cfg.model.pose_format = "plucker"
  cfg.model.num_layers = 1  # compile time dominates these tests; one layer has every path
  cfg.memory.window = 2  # 3 blocks = 10 frames: frames leave the window and are pooled
  cfg.data.latent_frames = 4
  return cfg


def _perturbed(params, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def models():
  cfg = _cfg()
  base = nn.meta.unbox(TeacherTask(cfg).init_params(jax.random.key(0)))
  # every param non-zero (proj_out is zero-initialised): the student's output depends on all
  return cfg, _perturbed(base, 1), _perturbed(base, 2), _perturbed(base, 3)


def _batch(blocks, b=2, seed=4):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"latent0": jax.random.normal(k[0], (b, 1, 8, 8, 16)),
          "text": jax.random.normal(k[1], (b, 8, 32)),
          "actions": jax.random.uniform(k[2], (b, blocks * 12, 13))}


# (1 block, exit 0 is the hand-built VJP test below)
@pytest.mark.parametrize("blocks,exits,guidance", [(3, (3, 0, 2), 2.0), (2, (1, 1), 1.0)])
def test_replayed_gradient_equals_naive(models, blocks, exits, guidance):
  cfg, gen, teacher, critic = models
  cfg.generate.cfg_convention, cfg.generate.guidance = "standard", guidance
  grads = {}
  for mode in sf.BACKPROP_MODES:
    spec = sf.spec_from_config(cfg, blocks, backprop=mode)
    fn = jax.jit(lambda g, t, c, b, s=spec: sf.generator_grads(g, t, c, s, b, jax.random.key(7),
                                                               exits=exits)[:2])
    grads[mode], metrics = fn(gen, teacher, critic, _batch(blocks))
    assert float(metrics["mean_exit"]) == pytest.approx(np.mean(exits))
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads["naive"]))
  assert scale > 1e-4  # a real gradient, not zeros
  for path, a in jax.tree_util.tree_flatten_with_path(grads["replayed"])[0]:
    b = grads["naive"]
    for k in path:
      b = b[k.key]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 * scale, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_gradient_sees_only_the_exit_step_and_a_detached_context(models):
  """With exit step 0 the block's x_in is pure noise and its context is frame 0's cache: the
  replayed gradient of block 1 equals the plain VJP of one cached forward of that block."""
  cfg, gen, teacher, critic = models
  cfg.generate.cfg_convention, cfg.generate.guidance = "standard", 1.0
  spec = sf.spec_from_config(cfg, 1)
  batch = _batch(1)
  key = jax.random.key(7)
  grads, _, _ = jax.jit(lambda g: sf.generator_grads(g, teacher, critic, spec, batch, key,
                                                     exits=(0,)))(gen)
  # rebuild the same objective by hand
  from relic_jax.inference import camera
  from relic_jax.inference import streaming as st

  @jax.jit
  def by_hand(gen):
    _, k_roll, k_dmd = jax.random.split(key, 3)
    record = sf.rollout(gen, spec, batch["latent0"], batch["text"], batch["actions"],
                        jnp.zeros((1,), jnp.int32), k_roll)
    video, acts, poses = sf.sequence(spec, batch["latent0"], record["x0"], batch["actions"],
                                     record["poses"])
    g, _ = sf.dmd_direction(teacher, critic, spec, video, batch["text"], acts, poses, k_dmd)
    k_start, _ = jax.random.split(k_roll)
    state = st.start(gen, spec.stream, batch["latent0"], batch["text"], k_start)
    pose_in = camera.pose_features(record["poses"][0])

    def x0(p):
      return st.block_output(p, spec.stream, state, record["x_in"][0], 0, batch["actions"],
                             pose_in)
    grads = jax.grad(lambda p: jnp.sum(x0(p) * g[:, 1:]) / g[:, 1:].size)(gen)
    return grads, x0(gen), record["x0"][0]

  want, x0_again, x0_rollout = by_hand(gen)
  np.testing.assert_allclose(np.asarray(x0_again), np.asarray(x0_rollout), atol=1e-6)
  for a_, b_ in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a_), np.asarray(b_), atol=1e-7, rtol=1e-4)


def test_guidance_reads_the_batchs_null_text(models):
  """DMD's unconditional branch gets the batch's null_text (umT5: the empty caption's
  embedding), not zeros: with null_text = the text, guidance changes nothing (the direction
  equals guidance 1's); with zeros it does."""
  cfg, gen, teacher, critic = models
  batch = _batch(2)
  key = jax.random.key(9)
  out = {}
  for name, guidance, extra in (("none", 1.0, {}), ("same", 3.0, {"null_text": batch["text"]}),
                                ("zeros", 3.0, {})):
    cfg.generate.cfg_convention, cfg.generate.guidance = "standard", guidance
    spec = sf.spec_from_config(cfg, 2)
    _, m, _ = jax.jit(lambda g, b, spec=spec: sf.generator_grads(
        g, teacher, critic, spec, b, key, exits=(1, 1)))(gen, {**batch, **extra})
    out[name] = float(m["dmd_loss"])
  assert out["same"] == pytest.approx(out["none"], rel=1e-5)
  assert abs(out["zeros"] - out["none"]) > 1e-3 * out["none"]


def test_updates_touch_only_their_own_params_and_never_the_teacher(models):
  cfg, gen, teacher, critic = models
  cfg.generate.cfg_convention, cfg.generate.guidance = "standard", 1.0
  cfg.distill.critic_ratio = 2
  cfg.distill.gen_lr = cfg.distill.critic_lr = 1e-3
  cfg.distill.ema_decay = 0.5
  spec = sf.spec_from_config(cfg, 1)
  tx_g, tx_c = dl.optimizers(cfg.distill)
  state = dl.DistillState(step=jnp.zeros((), jnp.int32), gen=gen, gen_ema=gen,
                          gen_opt=tx_g.init(gen), critic=critic, critic_opt=tx_c.init(critic))
  teacher_before = jax.tree.map(np.array, teacher)
  batch = _batch(1)
  gen_update = jax.jit(lambda s, t, b: dl.generator_update(s, t, b, spec, tx_g, 0.5,
                                                           jax.random.key(1)))
  critic_update = jax.jit(lambda s, seq, txt: dl.critic_update(s, seq, txt, spec, tx_c,
                                                               jax.random.key(2)))

  def changed(a, b):
    return any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  after_gen, seq, m = gen_update(state, teacher, batch)
  assert changed(after_gen.gen, state.gen) and changed(after_gen.gen_ema, state.gen_ema)
  assert changed(after_gen.gen_opt, state.gen_opt)
  assert not changed(after_gen.critic, state.critic)
  assert not changed(after_gen.critic_opt, state.critic_opt)
  assert float(m["gen_grad_norm"]) > 0
  after_critic, cm = critic_update(state, seq, batch["text"])
  assert changed(after_critic.critic, state.critic) and changed(after_critic.critic_opt,
                                                                 state.critic_opt)
  for f in ("gen", "gen_ema", "gen_opt"):
    assert not changed(getattr(after_critic, f), getattr(state, f)), f
  assert np.isfinite(float(cm["critic_loss"]))
  assert not changed(teacher, teacher_before)


def _sharded_step(cfg, gen, teacher, critic, batch, devices, mesh_shape):
  from relic_jax.parallel import mesh as mesh_lib
  from relic_jax.training.state import with_shardings
  cfg = cfg.copy_and_resolve_references()
  cfg.mesh.shape = mesh_shape
  mesh = mesh_lib.make_mesh(cfg.mesh, devices=devices)
  rules = mesh_lib.rules(cfg.mesh)
  tx_g, tx_c = dl.optimizers(cfg.distill)
  abstract, sh = dl.state_layout(cfg, tx_g, tx_c, mesh, rules)
  state = dl.initial_state(gen, critic, tx_g, tx_c, sh)
  teacher = jax.device_put(teacher, sh.critic)
  bsh = {k: mesh_lib.batch_sharding(mesh, rules, v.ndim) for k, v in batch.items()}
  batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}
  spec = sf.spec_from_config(cfg, 1)
  ssh = jax.tree.map(lambda a: a.sharding, with_shardings(abstract, sh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(dl.make_step(spec, tx_g, tx_c, cfg.distill, seed=0),
                   in_shardings=(ssh, sh.critic, bsh), out_shardings=(ssh, None))
    new, metrics = step(state, teacher, batch)
  return new, metrics


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_sharded_distill_step_equals_single_device(models):
  """fsdp x tensor over 4 faked devices vs one device: the same generator and critic updates
  (the DMD step with its rollout, scores and replayed gradient, then the critic's)."""
  cfg, gen, teacher, critic = models
  cfg.generate.cfg_convention, cfg.generate.guidance = "standard", 1.0
  cfg.distill.gen_lr = cfg.distill.critic_lr = 1e-3
  batch = _batch(1)
  sharded, m4 = _sharded_step(cfg, gen, teacher, critic, batch, jax.devices()[:4],
                              {"data": 1, "fsdp": 2, "context": 1, "tensor": 2})
  single, m1 = _sharded_step(cfg, gen, teacher, critic, batch, jax.devices()[:1],
                             {"data": 1, "fsdp": 1, "context": 1, "tensor": 1})
  assert bool(m4["gen_step"]) and bool(m1["gen_step"])
  split = [x for x in jax.tree.leaves(sharded.gen) if len(x.sharding.device_set) == 4
           and not x.sharding.is_fully_replicated]
  assert split, "no generator param is split over the mesh"
  for k in ("dmd_loss", "critic_loss", "gen_grad_norm"):
    assert float(m4[k]) == pytest.approx(float(m1[k]), rel=1e-4), k
  # AdamW with b1 = 0 moves each param by ~lr (1e-3) whatever its gradient's size, so
  # reduction-order noise in a near-zero gradient shows up as ~1e-6 in the params
  for a, b in zip(jax.tree.leaves((sharded.gen, sharded.critic)),
                  jax.tree.leaves((single.gen, single.critic))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
