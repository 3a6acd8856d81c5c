"""Sharded execution (8 faked CPU devices) computes what one device computes.

Each mesh mixes the data / fsdp / context / tensor axes differently. The forward pass and three
full train steps (loss, gradients, AdamW, EMA) must match the single-device result, and the
params must really be split over the devices (so the comparison is not between two copies of
the same replicated program).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training.optimizer import make_optimizer
from relic_jax.training.state import create_sharded_state, state_shardings, with_shardings
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import compile_train_step
from tests.helpers import inputs, tiny_config

MESHES = {
    "fsdp8": {"data": 1, "fsdp": 8, "context": 1, "tensor": 1},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "context": 1, "tensor": 2},
    "fsdp2_tensor4": {"data": 1, "fsdp": 2, "context": 1, "tensor": 4},
    "data2_context2_tensor2": {"data": 2, "context": 2, "fsdp": 1, "tensor": 2},
}
BATCH = 8


def _config(mesh_shape, **model):
  # 4 heads so tensor=4 splits them; everything else tiny.
  c = tiny_config(dim=64, num_heads=4, ffn_dim=128, num_layers=2, **model)
  c.mesh.shape = dict(mesh_shape)
  c.train.batch_size = BATCH
  c.train.lr = 3e-3
  c.train.warmup_steps = 0
  return c


def _single_device_mesh(cfg):
  c = cfg.copy_and_resolve_references()
  c.mesh.shape = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}
  return mesh_lib.make_mesh(c.mesh, devices=jax.devices()[:1])


def _randomize_out(params, seed=7):
  """proj_out is zero-initialised; make it random so every param gets a gradient at step 1."""
  k = params["proj_out"]["kernel"]
  new = 0.1 * jax.random.normal(jax.random.key(seed), k.shape, k.dtype)
  return {**params, "proj_out": {**params["proj_out"], "kernel": new}}


def _assert_sharded(tree):
  """At least one leaf is split: its per-device shard is smaller than the whole array."""
  split = [x for x in jax.tree.leaves(tree)
           if x.addressable_shards[0].data.size < x.size]
  assert split, "no array is actually sharded on this mesh"


def _assert_tree_close(a, b, rtol, atol):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(fa) == len(fb)
  for (path, x), y in zip(fa, fb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("attention_mode", ["bidirectional", "block_causal"])
def test_sharded_forward_equals_single_device(mesh_name, attention_mode):
  cfg = _config(MESHES[mesh_name], attention_mode=attention_mode, block_frames=2)
  task = TeacherTask(cfg)
  x, t, txt = inputs(b=BATCH, t=cfg.data.latent_frames, h=8, w=8, dt=cfg.model.text_dim)
  params = _randomize_out(nn.meta.unbox(task.init_params(jax.random.key(0))))
  ref = jax.jit(lambda p: task.model.apply({"params": p}, x, t, txt))(params)

  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  tx = make_optimizer(cfg.train)
  _, shardings = state_shardings(task.init_params, tx, mesh, rules, jax.random.key(0))
  sharded = jax.device_put(params, shardings.params)
  _assert_sharded(sharded)
  batch = mesh_lib.global_batch(mesh, rules, {"x": np.asarray(x), "t": np.asarray(t),
                                              "txt": np.asarray(txt)})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(lambda p, b: task.model.apply({"params": p}, b["x"], b["t"], b["txt"]))(
        sharded, batch)
  assert out.sharding.mesh.shape == mesh.shape
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=2e-5)


def _run_steps(cfg, mesh, init_state, batches):
  task = TeacherTask(cfg)
  rules = mesh_lib.rules(cfg.mesh)
  tx = make_optimizer(cfg.train)
  abstract, shardings = state_shardings(task.init_params, tx, mesh, rules, jax.random.key(0))
  state = jax.device_put(init_state, shardings)
  gb = [mesh_lib.global_batch(mesh, rules, b) for b in batches]
  abstract_batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                               sharding=a.sharding), gb[0])
  step = compile_train_step(task, tx, cfg, mesh, rules, with_shardings(abstract, shardings),
                            abstract_batch)
  losses, grad_norms = [], []
  for b in gb:
    state, metrics = step(state, b)
    losses.append(float(metrics["loss"]))
    grad_norms.append(float(metrics["grad_norm"]))
  return state, losses, grad_norms


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_train_steps_equal_single_device(mesh_name):
  cfg = _config(MESHES[mesh_name])
  task = TeacherTask(cfg)
  tx = make_optimizer(cfg.train)
  one = _single_device_mesh(cfg)
  rules = mesh_lib.rules(cfg.mesh)
  state0, _, _ = create_sharded_state(task.init_params, tx, one, rules, jax.random.key(0))
  state0 = state0.replace(params=_randomize_out(state0.params),
                          ema_params=_randomize_out(state0.ema_params))
  state0 = jax.device_get(state0)  # host copy: both runs start from the same numbers
  rng = np.random.default_rng(0)
  ex = task.example_batch(BATCH)
  batches = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in ex.items()}
             for _ in range(3)]

  ref_state, ref_losses, ref_gn = _run_steps(cfg, one, state0, batches)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  state, losses, gn = _run_steps(cfg, mesh, state0, batches)

  _assert_sharded(state.params)
  _assert_sharded(state.opt_state)
  assert int(state.step) == 3
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(gn, ref_gn, rtol=1e-4)
  # the params moved, and moved identically
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state0.params)))
  assert moved > 1e-3
  # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise (different on each
  # mesh) changes that element's update by up to ~1e-5 per step, against moves of up to ~1e-2
  # (lr 3e-3 x 3 steps). The gradients themselves are compared tightly below.
  _assert_tree_close(state.params, ref_state.params, rtol=1e-4, atol=1e-4)
  _assert_tree_close(state.ema_params, ref_state.ema_params, rtol=1e-4, atol=1e-4)
  _assert_tree_close(state.opt_state, ref_state.opt_state, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("mesh_name", ["fsdp2_tensor4", "data2_context2_tensor2"])
def test_sharded_gradients_equal_single_device(mesh_name):
  cfg = _config(MESHES[mesh_name])
  task = TeacherTask(cfg)
  rules = mesh_lib.rules(cfg.mesh)
  params = _randomize_out(nn.meta.unbox(task.init_params(jax.random.key(0))))
  rng = np.random.default_rng(1)
  batch = {k: rng.standard_normal(v.shape).astype(v.dtype)
           for k, v in task.example_batch(BATCH).items()}
  grad_fn = jax.value_and_grad(task.loss_fn)
  ref_loss, ref_grads = jax.jit(grad_fn)(params, batch, jax.random.key(3))

  mesh = mesh_lib.make_mesh(cfg.mesh)
  _, sh = state_shardings(task.init_params, make_optimizer(cfg.train), mesh, rules,
                          jax.random.key(0))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    loss, grads = jax.jit(grad_fn, out_shardings=(mesh_lib.replicated(mesh), sh.params))(
        jax.device_put(params, sh.params), mesh_lib.global_batch(mesh, rules, batch),
        jax.random.key(3))
  _assert_sharded(grads)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
  _assert_tree_close(grads, ref_grads, rtol=1e-4, atol=1e-5 * scale)


def test_logical_rules_place_params_as_configured():
  """embed -> fsdp and heads/mlp -> tensor: the q kernel [embed, heads, head_dim] is split over
  fsdp on dim 0 and tensor on dim 1."""
  cfg = _config(MESHES["fsdp2_tensor4"])
  task = TeacherTask(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  _, sh = state_shardings(task.init_params, make_optimizer(cfg.train), mesh, rules,
                          jax.random.key(0))
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(sh.params)[0]}
  q = [s for k, s in flat.items() if "self_attn" in k and k.endswith("['q']['kernel']")]
  assert q, sorted(flat)
  spec = tuple(q[0].spec)
  assert "fsdp" in str(spec) and "tensor" in str(spec), spec
