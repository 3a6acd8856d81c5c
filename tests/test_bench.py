"""The benchmark scripts: each prints one JSON object as its last stdout line and writes the
same object to --out. Run as subprocesses from the repository root on one CPU device."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.test_counts import relic_additions_count

MODEL_STATS_KEYS = {"param_count", "backbone_param_count", "flops_per_token_fwd", "layers", "dim"}
TRAIN_STEP_KEYS = {"step_time_s", "tokens_per_s", "tflops_per_device", "mfu", "peak_bytes",
                   "param_count", "device_kind", "n_devices"}


def _bench(module, *args, out):
  env = dict(os.environ)
  # one CPU device, not the 8 fake ones of conftest.py (these tests check the JSON, not speed)
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  r = subprocess.run([sys.executable, "-m", f"relic_jax.bench.{module}", *args, f"--out={out}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  printed = json.loads(r.stdout.strip().splitlines()[-1])
  with open(out) as f:
    written = json.loads(f.read())
  assert printed == written
  assert not os.path.exists(f"{out}.tmp")
  return printed


@pytest.mark.parametrize("name,layers,dim,backbone", [
    ("wan_1_3b", 30, 1536, 1_418_996_800),   # Wan 2.1 T2V 1.3B
    ("relic_14b", 40, 5120, 14_288_491_584),  # Wan 2.1 T2V 14B
])
def test_model_stats(tmp_path, name, layers, dim, backbone):
  s = _bench("model_stats", f"--config=experiments/{name}.py", out=str(tmp_path / "stats.json"))
  assert MODEL_STATS_KEYS <= set(s), sorted(s)
  assert s["config"] == name
  assert s["backbone_param_count"] == backbone
  # RELIC's action and pose conditioning on top (tests/test_counts.py has the formula)
  assert s["param_count"] == backbone + relic_additions_count(dim, layers)
  assert (s["layers"], s["dim"]) == (layers, dim)
  # forward matmuls alone cost ~2 FLOPs per backbone param per video token, attention adds more
  assert 1.5 * backbone < s["flops_per_token_fwd"] < 20 * backbone


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_train_step(tmp_path):
  s = _bench("train_step", "--config=experiments/tiny.py", "--steps=3", "--warmup=1",
             out=str(tmp_path / "step.json"))
  assert TRAIN_STEP_KEYS <= set(s), sorted(s)
  assert s["step_time_s"] > 0 and s["step_time_min_s"] <= s["step_time_s"]
  assert s["tokens_per_s"] == pytest.approx(
      s["tokens_per_example"] * s["batch_size"] / s["step_time_s"], rel=1e-6)
  assert s["tflops_per_device"] > 0
  assert s["mfu"] is None or 0.0 < s["mfu"] < 1.0
  assert s["peak_bytes"] > 0
  assert s["param_count"] == 161_536
  assert s["device_kind"] == "cpu" and s["n_devices"] == 1
  assert s["batch_size"] == 8 and s["loss_finite"] is True


DATA_KEYS = {"gen_frames_per_s", "loader_clips_per_s", "trainer_clips_per_s",
             "loader_over_trainer", "clip_shape", "frame_size"}


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_data(tmp_path):
  s = _bench("data", "--config=experiments/tiny.py", "--episodes=2", "--loader_batches=3",
             "--trainer_steps=1", "--config.data.gen.frames_per_episode=60",
             out=str(tmp_path / "data.json"))
  assert DATA_KEYS <= set(s), sorted(s)
  assert s["gen_frames"] == 120 and s["gen_frames_per_s"] > 0
  assert s["clip_shape"] == [13, 64, 64, 3]  # 1 + 4 * (4 - 1) frames of 8 * 8 latents
  assert s["loader_clips_per_s"] > 0 and s["trainer_clips_per_s"] > 0
  assert s["loader_over_trainer"] == pytest.approx(
      s["loader_clips_per_s"] / s["trainer_clips_per_s"], rel=1e-6)


VAE_KEYS = {"encode_frames_per_s", "decode_frames_per_s", "tiny_decode_frames_per_s",
            "stream_decode_latency_s", "heldout_psnr", "tiny_decoder_psnr"}


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_vae(tmp_path):
  s = _bench("vae", "--config=experiments/tiny.py", "--repeats=1", "--config.vae.base_dim=8",
             "--config.data.latent_frames=2", "--config.data.latent_height=4",
             "--config.data.latent_width=4", "--config.vae.tiny_dim=16",
             out=str(tmp_path / "vae.json"))
  assert VAE_KEYS <= set(s), sorted(s)
  assert s["clip_frames"] == 5 and (s["height"], s["width"]) == (32, 32)
  assert s["encode_frames_per_s"] > 0 and s["decode_frames_per_s"] > 0
  assert s["tiny_decode_frames_per_s"] > 0 and s["stream_decode_latency_s"] > 0
  assert s["heldout_psnr"] is None and s["trained"] is False  # no --workdir


STREAMING_KEYS = {"block_latency_s", "fps", "kv_bytes", "attended_tokens", "capacity_tokens",
                  "flops_per_block", "first_block_s"}


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_streaming(tmp_path):
  s = _bench("streaming", "--config=experiments/tiny.py", "--modes=relic,full",
             "--horizons=16", "--blocks=1", "--fills=0.1,1.0", out=str(tmp_path / "streaming.json"))
  for mode in ("relic", "full"):
    r = s[mode]["16"]
    assert STREAMING_KEYS <= set(r), sorted(r)
    assert r["block_latency_s"] > 0 and r["fps"] == pytest.approx(12 / r["block_latency_s"])
    # one result per fill: 10% of 16 frames is frame 0 alone, the full fill leaves room for
    # the warm-up and the timed block (16 - 2 * 3); the mode's figure is the full fill's
    fills = s["fills"][mode]["16"]
    assert set(fills) == {"0.1", "1.0"} and fills["1.0"] == r
    assert [(fills[f]["fill"], fills[f]["filled_frames"]) for f in ("0.1", "1.0")] == [
        (0.1, 1), (1.0, 10)]
    assert all(STREAMING_KEYS <= set(f) and f["block_latency_s"] > 0 for f in fills.values())
    assert fills["0.1"]["attended_tokens"] < fills["1.0"]["attended_tokens"]
  # 16 frames with a window of 6: relic pools what left the window, full keeps it all
  assert s["relic"]["16"]["kv_bytes"] < s["full"]["16"]["kv_bytes"]
  assert s["relic"]["16"]["attended_tokens"] < s["full"]["16"]["attended_tokens"]
  assert s["relic_over_full_kv_bytes"]["16"] < 1.0
  assert set(s["analytic"]) >= {"wan_1_3b", "relic_14b"}


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_distill_memory(tmp_path):
  s = _bench("distill_memory", "--config=experiments/tiny.py", "--blocks=1,3", "--repeats=1",
             out=str(tmp_path / "distill_memory.json"))
  for mode in ("replayed", "naive"):
    for n in ("1", "3"):
      r = s[mode][n]
      assert r["temp_bytes"] > 0 and r["peak_bytes"] > r["temp_bytes"] and r["step_time_s"] > 0
      assert r["latent_frames"] == 1 + 3 * int(n)
    assert s["growth"][mode] == pytest.approx(s[mode]["3"]["temp_bytes"] /
                                              s[mode]["1"]["temp_bytes"])
  assert s["attention_impl"] == "chunked" and s["naive_remat"] is True
