"""The Wan 2.1 video VAE: small random diffusers AutoencoderKLWan models, saved as safetensors and
imported into ours, encode and decode the same; streaming chunk by chunk equals whole clips and
compiles once; bad inputs, configs and checkpoints are refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers  # test-only dependency (`pip install -e ".[test]"`)
import torch

from relic_jax.models import vae
from relic_jax.models.vae import VAEConfig
from relic_jax.weights import (LazyStateDict, WanImportError, import_wan_vae, load_config,
                               load_state_dict, wan_vae_decode, wan_vae_encode)
from relic_jax.weights import wan_vae as wan_vae_lib

TOL = 1e-4  # float32, as the transformer's parity tests

SHAPES = {
    # base_dim, z_dim, dim_mult, num_res_blocks; video (B, T = 1 + 4k, H, W)
    "b8_z4_k2": dict(base=8, z=4, mult=(1, 2, 2, 2), res=1, video=(2, 9, 16, 24)),
    "b8_z16_k1": dict(base=8, z=16, mult=(1, 2, 4, 4), res=2, video=(1, 5, 32, 32)),
    "b16_z4_k0": dict(base=16, z=4, mult=(1, 2, 2, 2), res=1, video=(2, 1, 16, 16)),
    "b8_z4_k3": dict(base=8, z=4, mult=(1, 2, 4, 4), res=2, video=(1, 13, 16, 24)),
}


def _diffusers_vae(base, z, mult, res, seed=0, **_):
  torch.manual_seed(seed)
  m = diffusers.AutoencoderKLWan(base_dim=base, z_dim=z, dim_mult=list(mult),
                                 num_res_blocks=res).eval()
  with torch.no_grad():  # norm gains start at 1: make every tensor matter
    for p in m.parameters():
      std = float(p.std()) if p.numel() > 1 else 0.0
      p.add_(torch.randn_like(p) * (0.2 * std if std > 0 else 0.1))
  return m


def _video(spec, seed=1):
  g = torch.Generator().manual_seed(seed)
  b, t, h, w = spec["video"]
  return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def _latents(spec, seed=2):
  g = torch.Generator().manual_seed(seed)
  b, t, h, w = spec["video"]
  return torch.randn(b, spec["z"], 1 + (t - 1) // 4, h // 8, w // 8, generator=g)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def saved(request, tmp_path_factory):
  spec = SHAPES[request.param]
  model = _diffusers_vae(**spec)
  d = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(d, safe_serialization=True)
  sd = LazyStateDict(str(d)) if request.param == "b8_z16_k1" else load_state_dict(str(d))
  cfg, params = import_wan_vae(sd, load_config(str(d)))
  return request.param, spec, model, cfg, params


def test_encode_matches_diffusers(saved):
  name, spec, model, cfg, params = saved
  assert (cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (
      spec["base"], spec["z"], spec["mult"], spec["res"])
  x = _video(spec)
  with torch.no_grad():
    ref = model.encode(x).latent_dist.mean.numpy()
  ours = np.asarray(wan_vae_encode(cfg, params, x.numpy()))
  assert ours.shape == ref.shape
  err = float(np.max(np.abs(ours - ref)))
  print(f"\n{name} encode max |ours - diffusers| = {err:.2e}")
  assert err <= TOL, err
  assert float(np.std(ref)) > 0.05  # a non-trivial latent


def test_decode_matches_diffusers(saved):
  name, spec, model, cfg, params = saved
  z = _latents(spec)
  with torch.no_grad():
    ref = model.decode(z).sample.numpy()
  ours = np.asarray(wan_vae_decode(cfg, params, z.numpy()))
  assert ours.shape == ref.shape == (spec["video"][0], 3) + spec["video"][1:]
  err = float(np.max(np.abs(ours - ref)))
  print(f"\n{name} decode max |ours - diffusers| = {err:.2e}")
  assert err <= TOL, err
  assert np.mean(np.abs(ref) < 1.0) > 0.9 and float(np.std(ref)) > 0.05  # mostly unclamped


# ----------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def small():
  spec = SHAPES["b8_z4_k2"]
  model = _diffusers_vae(**spec, seed=3)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  cfg, params = import_wan_vae(sd, dict(model.config))
  return cfg, params


def test_streaming_encode_equals_whole_clip_and_compiles_once(small):
  cfg, params = small
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(-1, 1, (1, 13, 16, 24, 3)), jnp.float32)
  mean, logvar = vae.encode(params, cfg, video)
  assert mean.shape == logvar.shape == (1, 4, 2, 3, cfg.z_dim)

  cache = vae.init_encoder_cache(cfg, 1, 16, 24)
  cache, (m, lv) = vae.encode_chunk(params, cfg, cache, video[:, :1], first=True)
  assert jax.tree.structure(cache) == jax.tree.structure(vae.init_encoder_cache(cfg, 1, 16, 24))
  means, logvars = [m], [lv]
  compiled = None
  for i in range(3):  # 4-frame chunks, one call each
    cache, (m, lv) = vae.encode_chunk(params, cfg, cache, video[:, 1 + 4 * i:5 + 4 * i])
    means.append(m)
    logvars.append(lv)
    compiled = compiled or vae.encode_chunk._cache_size()
  assert vae.encode_chunk._cache_size() == compiled  # chunks 2 and 3 reused chunk 1's program
  err = float(jnp.max(jnp.abs(jnp.concatenate(means, 1) - mean)))
  print(f"\nstreamed encode vs whole clip: max diff {err:.1e}")
  assert err <= 1e-5
  np.testing.assert_allclose(jnp.concatenate(logvars, 1), logvar, atol=1e-5)

  # two chunks in one call (scanned) equal two calls; the future does not change the past
  cache, (m0, _) = vae.encode_chunk(params, cfg, None, video[:, :1], first=True)
  cache, (m12, _) = vae.encode_chunk(params, cfg, cache, video[:, 1:9])
  np.testing.assert_allclose(jnp.concatenate([m0, m12], 1), mean[:, :3], atol=1e-5)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_streaming_decode_equals_whole_clip_and_compiles_once(small):
  cfg, params = small
  z = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 2, 3, cfg.z_dim)), jnp.float32)
  video = vae.decode(params, cfg, z, clamp=False)
  assert video.shape == (1, 13, 16, 24, 3)
  np.testing.assert_array_equal(vae.decode(params, cfg, z), jnp.clip(video, -1, 1))

  cache, frames = vae.decode_chunk(params, cfg, None, z[:, :1], first=True, clamp=False)
  assert frames.shape[1] == 1
  out, compiled = [frames], None
  for i in range(1, 4):  # one latent frame (4 video frames) per call
    cache, frames = vae.decode_chunk(params, cfg, cache, z[:, i:i + 1], clamp=False)
    assert frames.shape[1] == 4
    out.append(frames)
    compiled = compiled or vae.decode_chunk._cache_size()
  assert vae.decode_chunk._cache_size() == compiled
  err = float(jnp.max(jnp.abs(jnp.concatenate(out, 1) - video)))
  print(f"\nstreamed decode vs whole clip: max diff {err:.1e}")
  assert err <= 1e-5

  # a chunk of two latent frames in one call
  cache, f0 = vae.decode_chunk(params, cfg, None, z[:, :1], first=True, clamp=False)
  cache, f12 = vae.decode_chunk(params, cfg, cache, z[:, 1:3], clamp=False)
  np.testing.assert_allclose(jnp.concatenate([f0, f12], 1), video[:, :9], atol=1e-5)


def test_sample_is_reparameterised():
  mean = jnp.full((4000, 8), 0.5)
  logvar = jnp.full((4000, 8), np.log(4.0))
  z = vae.sample(jax.random.key(0), mean, logvar)
  assert abs(float(jnp.mean(z)) - 0.5) < 0.05 and abs(float(jnp.std(z)) - 2.0) < 0.05
  grad = jax.grad(lambda m: jnp.sum(vae.sample(jax.random.key(1), m, logvar)))(mean)
  np.testing.assert_allclose(grad, 1.0)  # a path derivative through the draw


# ----------------------------------------------------------------------------- bad input


def test_bad_video_and_latents_are_refused(small):
  cfg, params = small
  x = jnp.zeros((1, 5, 16, 24, 3))
  with pytest.raises(ValueError, match=r"6 frames; a stream starts with 1 \+ 4k frames.*Fix"):
    vae.encode(params, cfg, jnp.zeros((1, 6, 16, 24, 3)))
  with pytest.raises(ValueError, match=r"size 20x24 is not a positive multiple of .* 8\. Fix"):
    vae.encode(params, cfg, jnp.zeros((1, 5, 20, 24, 3)))
  with pytest.raises(ValueError, match=r"expected channels-last RGB \[B, T, H, W, 3\]\. Fix"):
    vae.encode(params, cfg, jnp.zeros((1, 3, 5, 16, 24)))  # diffusers' layout
  with pytest.raises(ValueError, match=r"chunk has 3 frames.*chunks of 4k frames.*Fix"):
    vae.encode_chunk(params, cfg, vae.init_encoder_cache(cfg, 1, 16, 24), x[:, :3])
  with pytest.raises(ValueError, match=r"got no cache although first=False\. Fix"):
    vae.encode_chunk(params, cfg, None, x[:, :4])
  with pytest.raises(ValueError, match=r"cache does not fit this chunk.*Fix.*init_encoder_cache"):
    vae.encode_chunk(params, cfg, vae.init_encoder_cache(cfg, 1, 32, 24), x[:, :4])
  with pytest.raises(ValueError, match=r"cache does not fit this chunk.*Fix.*init_decoder_cache"):
    vae.decode_chunk(params, cfg, vae.init_decoder_cache(cfg, 2, 16, 24),
                     jnp.zeros((1, 1, 2, 3, cfg.z_dim)))
  with pytest.raises(ValueError, match=rf"latents have shape \(1, 2, 2, 3, 16\).*\[B, T, h, w, "
                                       rf"{cfg.z_dim}\].*Fix"):
    vae.decode(params, cfg, jnp.zeros((1, 2, 2, 3, 16)))
  with pytest.raises(ValueError, match=r"size 12x16 is not a positive multiple"):
    vae.init_decoder_cache(cfg, 1, 12, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dropout=0.1), r"dropout=0\.1 is not supported.*Fix: set dropout=0\.0"),
    (dict(temporal_downsample=(True, True)), r"needs one entry per downsampling stage \(3"),
    (dict(attn_scales=(0.25,)), r"attn_scales=\(0\.25,\) is not supported.*Fix"),
    (dict(dim_mult=()), r"dim_mult=\(\) must be positive integers"),
    (dict(z_dim=0), r"z_dim=0 must be a positive integer"),
    (dict(dtype="float33"), r"dtype='float33' is not a dtype"),
])
def test_bad_config_is_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    VAEConfig(**kwargs)


def test_config_from_dict():
  cfg = VAEConfig.from_dict({"base_dim": 8, "dim_mult": [1, 2, 2, 2],
                             "temporal_downsample": [False, True, False]})
  assert cfg.dim_mult == (1, 2, 2, 2) and (cfg.temporal_stride, cfg.spatial_stride) == (2, 8)
  assert hash(cfg) == hash(VAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2),
                                     temporal_downsample=(False, True, False)))
  assert (VAEConfig().temporal_stride, VAEConfig().spatial_stride) == (4, 8)
  with pytest.raises(ValueError, match=r"unknown VAEConfig key 'temperal_downsample'.*Fix"):
    VAEConfig.from_dict({"temperal_downsample": [False, True, True]})


# ----------------------------------------------------------------------------- import


def test_full_size_wan21_layout_maps_one_to_one():
  """diffusers' default AutoencoderKLWan (Wan 2.1, 127M params, on the meta device): the config
  inferred from its tensors is our default and every tensor has a place of the right shape."""
  with torch.device("meta"):
    model = diffusers.AutoencoderKLWan()
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  cfg = wan_vae_lib.infer_vae_config(shapes, dict(model.config))
  assert cfg == VAEConfig()
  want = wan_vae_lib.expected_shapes(cfg)
  mapped = {wan_vae_lib.torch_name(p): wan_vae_lib._torch_shape(wan_vae_lib.torch_name(p), s)
            for p, s in want.items()}
  assert mapped == shapes
  assert sum(int(np.prod(s)) for s in want.values()) == sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def small_sd():
  model = _diffusers_vae(**SHAPES["b8_z4_k2"])
  return {k: v.numpy() for k, v in model.state_dict().items()}, dict(model.config)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: {k: v for k, v in sd.items()
                 if k != "decoder.up_blocks.1.resnets.0.conv2.bias"},
     r"tensor decoder\.up_blocks\.1\.resnets\.0\.conv2\.bias is missing.*Fix"),
    (lambda sd: {**sd, "decoder.mid_block.attentions.0.to_out.weight": np.zeros((32, 32, 1, 1))},
     r"tensor decoder\.mid_block\.attentions\.0\.to_out\.weight is not part of a Wan 2\.1 "
     r"VAE.*Fix"),
    (lambda sd: {**sd, "encoder.mid_block.attentions.0.to_qkv.weight": np.zeros((48, 17, 1, 1))},
     r"tensor encoder\.mid_block\.attentions\.0\.to_qkv\.weight has shape \[48, 17, 1, 1\], "
     r"expected \[48, 16, 1, 1\]"),
], ids=["missing_tensor", "unknown_tensor", "wrong_shape"])
def test_bad_tensor_is_named(small_sd, edit, message):
  sd, hf = small_sd
  with pytest.raises(WanImportError, match=message):
    import_wan_vae(edit(sd), hf)


def test_wan22_is_refused(small_sd):
  sd, hf = small_sd
  with pytest.raises(WanImportError, match=r"is_residual=true: this is a Wan 2\.2 VAE.*Fix"):
    import_wan_vae(sd, {**hf, "is_residual": True})
  with pytest.raises(WanImportError, match=r"patch_size=2: this is a Wan 2\.2 VAE.*Fix"):
    import_wan_vae(sd, {**hf, "patch_size": 2})
  residual = {k.replace("encoder.down_blocks.0.", "encoder.down_blocks.0.resnets.0."): v
              for k, v in sd.items()}
  with pytest.raises(WanImportError, match=r"tensor encoder\.down_blocks\.0\.resnets\.0\.\S+ "
                                           r"belongs to a residual up/down block.*Wan 2\.2"):
    import_wan_vae(residual, None)
  patched = {**sd, "encoder.conv_in.weight": np.zeros((8, 12, 3, 3, 3), np.float32)}
  with pytest.raises(WanImportError, match=r"tensor encoder\.conv_in\.weight has 12 video "
                                           r"channels.*Fix"):
    import_wan_vae(patched, None)


def test_config_json_must_agree(small_sd):
  sd, hf = small_sd
  with pytest.raises(WanImportError, match=r"config\.json z_dim=16 disagrees with the tensors, "
                                           r"which give 4.*Fix"):
    import_wan_vae(sd, {**hf, "z_dim": 16})
  with pytest.raises(WanImportError, match=r"describes a AutoencoderKL, not an AutoencoderKLWan"):
    import_wan_vae(sd, {**hf, "_class_name": "AutoencoderKL"})
  cfg, _ = import_wan_vae(sd, None)  # config.json is optional
  assert cfg == import_wan_vae(sd, hf)[0]


def test_encoder_attention_is_refused(small_sd):
  sd, hf = small_sd
  sd = {**sd, "encoder.down_blocks.1.to_qkv.weight": np.zeros((24, 8, 1, 1), np.float32)}
  with pytest.raises(WanImportError, match=r"encoder\.down_blocks\.1\.to_qkv\.weight is an "
                                           r"attention block in an encoder stage.*Fix"):
    import_wan_vae(sd, hf)
