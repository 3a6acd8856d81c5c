"""Real Wan 2.1 weights: small random diffusers WanTransformer3DModels, saved as safetensors,
imported into our DiT, compute the same function (and so do their parts)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers  # test-only dependency (`pip install -e ".[test]"`)
import torch

from relic_jax.models import rope as rope_lib
from relic_jax.models.dit import DiTConfig, WanBlock, WanDiT
from relic_jax.weights import (SafetensorsError, WanImportError, import_wan_transformer,
                               load_config, load_state_dict, wan_forward)
from relic_jax.weights.safetensors_io import checkpoint_files

TOL = 1e-4  # the bar for float32, bidirectional attention

SHAPES = {
    # heads, head_dim, layers, ffn, text_dim, (T, H, W) latent video, L text tokens
    "2h_2l": dict(heads=2, head_dim=16, layers=2, ffn=64, text_dim=32, video=(3, 10, 6), text=7),
    "4h_3l_odd": dict(heads=4, head_dim=12, layers=3, ffn=96, text_dim=24, video=(5, 14, 6),
                      text=5),
    "3h_1l_wide_ffn": dict(heads=3, head_dim=24, layers=1, ffn=200, text_dim=40,
                           video=(2, 6, 18), text=11),
}


def _diffusers_model(heads, head_dim, layers, ffn, text_dim, seed=0, **_):
  torch.manual_seed(seed)
  m = diffusers.WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
      in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn,
      num_layers=layers, rope_max_seq_len=1024).eval()
  with torch.no_grad():  # biases and norm weights start at 0/1: make every tensor matter
    for p in m.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return m


def _inputs(spec, seed=1):
  g = torch.Generator().manual_seed(seed)
  t, h, w = spec["video"]
  x = torch.randn(2, 16, t, h, w, generator=g)
  ts = torch.tensor([120.0, 870.0])
  txt = torch.randn(2, spec["text"], spec["text_dim"], generator=g)
  return x, ts, txt


@pytest.fixture(scope="module", params=sorted(SHAPES))
def saved(request, tmp_path_factory):
  spec = SHAPES[request.param]
  model = _diffusers_model(**spec)
  d = tmp_path_factory.mktemp(request.param)
  # the first shape is saved as a sharded set with an index file
  kwargs = {"max_shard_size": "40KB"} if request.param == "2h_2l" else {}
  model.save_pretrained(d, safe_serialization=True, **kwargs)
  return spec, model, str(d)


def test_forward_matches_diffusers(saved):
  spec, model, d = saved
  if spec is SHAPES["2h_2l"]:
    assert len(checkpoint_files(d)) > 1  # really a sharded checkpoint
  cfg, params = import_wan_transformer(load_state_dict(d), load_config(d))
  assert (cfg.num_heads, cfg.num_layers, cfg.ffn_dim, cfg.text_dim) == (
      spec["heads"], spec["layers"], spec["ffn"], spec["text_dim"])
  assert cfg.dim == spec["heads"] * spec["head_dim"]
  x, ts, txt = _inputs(spec)
  with torch.no_grad():
    ref = model(x, ts, txt, return_dict=False)[0].numpy()
  ours = np.asarray(wan_forward(cfg, params, x.numpy(), ts.numpy(), txt.numpy()))
  assert ours.shape == ref.shape
  err = float(np.max(np.abs(ours - ref)))
  print(f"\n{spec} max |ours - diffusers| = {err:.2e}")
  assert err <= TOL, err
  assert float(np.max(np.abs(ref))) > 0.1  # a non-trivial output


def test_unscanned_import_matches_scanned(saved):
  spec, _, d = saved
  sd, hf = load_state_dict(d), load_config(d)
  cfg_s, p_s = import_wan_transformer(sd, hf, scan_layers=True)
  cfg_l, p_l = import_wan_transformer(sd, hf, scan_layers=False)
  x, ts, txt = _inputs(spec)
  a = wan_forward(cfg_s, p_s, x.numpy(), ts.numpy(), txt.numpy())
  b = wan_forward(cfg_l, p_l, x.numpy(), ts.numpy(), txt.numpy())
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_rope_tables_match_diffusers():
  from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
  for head_dim, grid in ((128, (3, 4, 5)), (16, (2, 3, 7)), (12, (5, 7, 3))):
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=1024)
    cos, sin = rope(torch.zeros(1, 16, grid[0], 2 * grid[1], 2 * grid[2]))
    angles = np.asarray(rope_lib.rope_angles(head_dim, grid, 10000.0))
    # diffusers stores each pair's angle twice (repeat_interleave)
    np.testing.assert_allclose(np.repeat(np.cos(angles), 2, axis=-1), cos[0, :, 0].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(np.repeat(np.sin(angles), 2, axis=-1), sin[0, :, 0].numpy(),
                               atol=1e-5)


def test_embeddings_and_modulation_match_diffusers(saved):
  spec, model, d = saved
  cfg, params = import_wan_transformer(load_state_dict(d), load_config(d))
  x, ts, txt = _inputs(spec)
  with torch.no_grad():
    temb, proj, ctx, _ = model.condition_embedder(ts, txt, None)
  dit = WanDiT(DiTConfig.from_config(cfg))
  xl = jnp.transpose(jnp.asarray(x.numpy()), (0, 2, 3, 4, 1))
  _, inter = dit.apply({"params": params}, xl, jnp.asarray(ts.numpy()), jnp.asarray(txt.numpy()),
                       capture_intermediates=True)
  inter = inter["intermediates"]
  ours_temb = np.asarray(inter["time_embedding_2"]["__call__"][0])[:, 0]  # frame 0 of [B, T, D]
  ours_proj = np.asarray(inter["time_projection"]["__call__"][0])[:, 0]
  ours_ctx = np.asarray(inter["text_embedding_2"]["__call__"][0])
  np.testing.assert_allclose(ours_temb, temb.numpy(), atol=TOL)
  np.testing.assert_allclose(ours_proj, proj.numpy(), atol=TOL)
  np.testing.assert_allclose(ours_ctx, ctx.numpy(), atol=TOL)


def test_one_block_matches_diffusers(saved):
  spec, model, d = saved
  cfg, params = import_wan_transformer(load_state_dict(d), load_config(d), scan_layers=False)
  t, h, w = spec["video"]
  grid = (t, h // 2, w // 2)
  s = int(np.prod(grid))
  g = torch.Generator().manual_seed(3)
  hs = torch.randn(2, s, cfg.dim, generator=g)
  ctx = torch.randn(2, spec["text"], cfg.dim, generator=g)
  temb = torch.randn(2, 6, cfg.dim, generator=g)
  rope = model.rope(torch.zeros(1, 16, t, h, w))
  with torch.no_grad():
    ref = model.blocks[0](hs, ctx, temb, rope).numpy()
  dit_cfg = DiTConfig.from_config(cfg)
  e = jnp.broadcast_to(jnp.asarray(temb.numpy())[:, None], (2, t, 6, cfg.dim))
  angles = rope_lib.rope_angles(dit_cfg.head_dim, grid, 10000.0)
  ours, _ = WanBlock(dit_cfg).apply(  # bidirectional, as Wan; (x, no cached K/V)
      {"params": params["blocks_0"]}, jnp.asarray(hs.numpy()), jnp.asarray(ctx.numpy()), e,
      angles)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=TOL)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small_sd(tmp_path_factory):
  model = _diffusers_model(**SHAPES["2h_2l"])
  d = tmp_path_factory.mktemp("err")
  model.save_pretrained(d)
  return load_state_dict(str(d)), load_config(str(d)), str(d)


def test_missing_tensor_is_named(small_sd):
  sd, hf, _ = small_sd
  sd = dict(sd)
  del sd["blocks.1.attn2.to_v.bias"]
  with pytest.raises(WanImportError, match=r"tensor blocks\.1\.attn2\.to_v\.bias is missing"):
    import_wan_transformer(sd, hf)


def test_wrong_shape_is_named(small_sd):
  sd, hf, _ = small_sd
  sd = dict(sd)
  sd["blocks.0.ffn.net.2.weight"] = np.zeros((32, 65), np.float32)
  with pytest.raises(WanImportError, match=r"tensor blocks\.0\.ffn\.net\.2\.weight has shape "
                                           r"\[32, 65\].*expected \[32, 64\]"):
    import_wan_transformer(sd, hf)


def test_unknown_tensor_is_named(small_sd):
  sd, hf, _ = small_sd
  sd = {**sd, "blocks.0.attn1.to_gate.weight": np.zeros((32, 32), np.float32)}
  with pytest.raises(WanImportError, match=r"tensor blocks\.0\.attn1\.to_gate\.weight is not "
                                           r"part of a Wan 2\.1 T2V transformer"):
    import_wan_transformer(sd, hf)


def test_image_to_video_checkpoint_is_refused(small_sd):
  sd, hf, _ = small_sd
  sd = {**sd, "condition_embedder.image_embedder.ff.net.0.proj.weight": np.zeros((4, 4)),
        "blocks.0.attn2.add_k_proj.weight": np.zeros((32, 32))}
  with pytest.raises(WanImportError, match=r"image-to-video.*Fix: import a T2V checkpoint"):
    import_wan_transformer(sd, hf)


def test_missing_config_json_is_explained(small_sd):
  sd, _, _ = small_sd
  with pytest.raises(WanImportError, match=r"num_attention_heads.*Fix"):
    import_wan_transformer(sd, None)


def test_truncated_safetensors_is_detected(small_sd, tmp_path):
  _, _, d = small_sd
  src = checkpoint_files(d)[0]
  data = open(src, "rb").read()
  bad = tmp_path / "model.safetensors"
  bad.write_bytes(data[: len(data) - 1000])
  with pytest.raises(SafetensorsError, match=r"truncated"):
    load_state_dict(str(bad))


def test_bf16_checkpoint_reads_like_torch(tmp_path):
  from safetensors.torch import save_file
  w = torch.randn(5, 7).to(torch.bfloat16)
  save_file({"w": w}, str(tmp_path / "x.safetensors"))
  got = load_state_dict(str(tmp_path / "x.safetensors"))["w"]
  assert str(got.dtype) == "bfloat16"
  np.testing.assert_array_equal(got.astype(np.float32), w.float().numpy())


def test_bad_index_names_the_missing_shard(tmp_path):
  (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"a": "part-00001.safetensors"}}))
  with pytest.raises(SafetensorsError, match=r"part-00001\.safetensors, which is missing"):
    checkpoint_files(str(tmp_path))
  assert not os.path.exists(tmp_path / "part-00001.safetensors")


# ----------------------------------------------------------------------------- relic import-wan


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A random diffusers model with experiments/tiny.py's dims, through `relic import-wan`."""
  from tests.helpers import run_cli
  model = _diffusers_model(heads=2, head_dim=32, layers=2, ffn=128, text_dim=32, seed=5)
  root = tmp_path_factory.mktemp("import")
  src, out = root / "transformer", root / "imported"
  model.save_pretrained(src, max_shard_size="60KB")
  r = run_cli("import-wan", "--config=experiments/tiny.py", f"--source={src}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "imported 161,536 params" in r.stdout, r.stdout
  return model, str(src), str(out)


def test_import_wan_cli_restores_sharded_and_matches_diffusers(imported):
  from relic_jax.parallel import mesh as mesh_lib
  from relic_jax.checkpoint import describe_model
  from relic_jax.training.optimizer import make_optimizer
  from relic_jax.training.state import state_shardings, with_shardings
  from relic_jax.training.teacher import TeacherTask
  from relic_jax.weights.store import load_params
  from tests.test_trainer import _config as tiny_experiment

  model, _, out = imported
  assert os.path.isfile(os.path.join(out, "meta.json"))
  cfg = tiny_experiment()
  cfg.mesh.shape = {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  task = TeacherTask(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  abstract, sh = state_shardings(task.init_params, make_optimizer(cfg.train), mesh, rules,
                                 jax.random.key(0))
  params = load_params(out, with_shardings(abstract.params, sh.params),
                       describe_model(task.model_config, abstract.params))
  kernel = params["blocks"]["ffn"]["fc1"]["kernel"]
  assert kernel.addressable_shards[0].data.size < kernel.size  # restored sharded
  spec = dict(video=(3, 8, 6), text=6, text_dim=32)
  x, ts, txt = _inputs(spec)
  with torch.no_grad():
    ref = model(x, ts, txt, return_dict=False)[0].numpy()
  ours = np.asarray(wan_forward(cfg, jax.device_get(params), x.numpy(), ts.numpy(),
                                txt.numpy()))
  assert float(np.max(np.abs(ours - ref))) <= TOL


def test_training_starts_from_imported_params(imported, tmp_path):
  from relic_jax.training.teacher import TeacherTask
  from relic_jax.inference.loading import load_dit_params
  from relic_jax.training.trainer import train
  from tests.test_trainer import _config as tiny_experiment

  _, src, out = imported
  cfg = tiny_experiment()
  cfg.train.init_from = out
  cfg.train.steps, cfg.train.warmup_steps, cfg.train.schedule = 1, 0, "constant"
  cfg.train.lr, cfg.train.weight_decay = 1e-12, 0.0  # one step that moves nothing measurable
  cfg.mesh.shape = {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  task = TeacherTask(cfg)
  train(cfg, str(tmp_path), task)
  trained = jax.device_get(load_dit_params(cfg, str(tmp_path)))
  _, reference = import_wan_transformer(load_state_dict(src), load_config(src))
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_init_from_errors_are_clear(imported, tmp_path):
  from tests.helpers import run_cli
  _, _, out = imported
  common = ("train_teacher", "--config=experiments/tiny.py", "--config.train.steps=1",
            "--config.train.progress_bar=False")
  r = run_cli(*common, f"--workdir={tmp_path / 'a'}", f"--config.train.init_from={tmp_path}")
  assert r.returncode == 2 and "holds no imported params" in r.stderr, r.stderr[-2000:]
  r = run_cli(*common, f"--workdir={tmp_path / 'b'}", f"--config.train.init_from={out}",
              "--config.model.ffn_dim=64")
  assert r.returncode == 2 and "written by a different model" in r.stderr, r.stderr[-2000:]
  assert "model.ffn_dim: checkpoint 128, config 64" in r.stderr, r.stderr[-2000:]
  r = run_cli("import-wan", "--config=experiments/tiny.py", f"--source={tmp_path / 'nope'}",
              f"--out={tmp_path / 'c'}")
  assert r.returncode == 2 and "no such file or directory" in r.stderr, r.stderr[-2000:]
  r = run_cli("import-wan", "--config=experiments/tiny.py", f"--source={tmp_path}",
              f"--out={out}")
  assert r.returncode == 2, r.stderr[-2000:]


@pytest.mark.parametrize("scan", [True, False])
def test_relic_additions_start_as_plain_wan(saved, scan):
  """Imported with RELIC's action and pose encoders, the model computes diffusers' Wan function
  whatever the actions and poses; once the zero-initialised projections move, they matter."""
  spec, model, d = saved
  cfg, params = import_wan_transformer(load_state_dict(d), load_config(d), scan_layers=scan,
                                       action_dim=13, pose_dim=12, seed=3)
  assert "action_encoder" in params and "pose_encoder" in params
  x, ts, txt = _inputs(spec)
  frames = 1 + 4 * (spec["video"][0] - 1)
  rng = np.random.default_rng(0)
  actions = rng.uniform(0, 2, (2, frames, 13)).astype(np.float32)
  poses = rng.normal(size=(2, frames, 12)).astype(np.float32)
  with torch.no_grad():
    ref = model(x, ts, txt, return_dict=False)[0].numpy()
  ours = np.asarray(wan_forward(cfg, params, x.numpy(), ts.numpy(), txt.numpy(), actions, poses))
  assert float(np.max(np.abs(ours - ref))) <= TOL

  blocks = params["blocks"] if scan else params["blocks_0"]
  for name, tree in (("action", blocks["action_proj"]), ("pose", blocks["self_attn"]["pose_q"])):
    # random, not a constant: a shift constant across features is removed by the LayerNorms
    tree["kernel"] = tree["kernel"] + 0.05 * rng.normal(size=tree["kernel"].shape)
    moved = np.asarray(wan_forward(cfg, params, x.numpy(), ts.numpy(), txt.numpy(), actions,
                                   poses))
    assert float(np.max(np.abs(moved - ref))) > 1e-3, name
