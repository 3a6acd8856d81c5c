"""The real Wan 2.1 path end to end, at micro scale: a random small umT5 (transformers, with a
tokenizer), Wan DiT and Wan VAE (diffusers) saved as their libraries save them -> `relic
import-umt5`, `relic import-wan`, `relic import-wan-vae` -> `relic pipeline` on a micro config
with model.text_encoder='umt5', actions and poses, caption dropout and guidance (so the null
text reaches the teacher, the ODE trajectories and DMD), killed inside the teacher and resumed
to the evaluation's table."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from tests.test_pipeline import MICRO, ROOT, _env, kill_in_teacher  # noqa: E402
from tests.test_umt5 import save_tokenizer  # noqa: E402

TEXT_DIM, TEXT_LEN = 24, 16


def _perturb(model, scale):
  with torch.no_grad():  # biases and norm gains start at 0/1: make every tensor matter
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model


def save_wan_checkpoints(root: str) -> None:
  """A diffusers Wan pipeline root of random small models: text_encoder/ (UMT5EncoderModel),
  tokenizer/, transformer/ (WanTransformer3DModel, experiments/tiny.py's DiT dims) and vae/
  (AutoencoderKLWan, tiny.py's VAE)."""
  torch.manual_seed(0)
  umt5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
      vocab_size=101, d_model=TEXT_DIM, d_kv=8, d_ff=40, num_layers=2, num_heads=3,
      relative_attention_num_buckets=8, relative_attention_max_distance=16,
      feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval()
  umt5.save_pretrained(os.path.join(root, "text_encoder"), safe_serialization=True)
  save_tokenizer(os.path.join(root, "tokenizer"))
  dit = _perturb(diffusers.WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
      out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=128, num_layers=2,
      rope_max_seq_len=1024).eval(), 0.02)
  dit.save_pretrained(os.path.join(root, "transformer"), safe_serialization=True)
  vae = diffusers.AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2],
                                   num_res_blocks=1).eval()
  vae.save_pretrained(os.path.join(root, "vae"), safe_serialization=True)


def _relic(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "relic_jax.cli", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_wan_checkpoints_imported_then_the_pipeline_runs_with_umt5_and_resumes(tmp_path):
  root, imp = str(tmp_path / "wan"), str(tmp_path / "imported")
  save_wan_checkpoints(root)
  base = "--config=experiments/tiny.py"
  for args in (("import-umt5", f"--source={root}", f"--out={imp}/umt5"),
               ("import-wan", "--config.model.action_dim=13", "--config.model.pose_dim=12",
                f"--source={root}/transformer", f"--out={imp}/dit"),
               ("import-wan-vae", f"--source={root}/vae", f"--out={imp}/vae")):
    r = _relic(args[0], base, *args[1:])
    assert r.returncode == 0, (args[0], r.stderr[-3000:])
  with open(os.path.join(imp, "vae", "meta.json")) as f:  # Wan's latent constants kept
    assert len(json.load(f)["latent_stats"]["mean"]) == 16

  config = tmp_path / "wan_micro.py"
  config.write_text("import experiments.tiny as tiny\n\n\ndef get_config():\n"
                    "  c = tiny.get_config()\n" + textwrap.indent(MICRO + textwrap.dedent(f"""
      c.data.source = "latents"
      c.model.text_encoder, c.model.text_encoder_from = "umt5", {imp + '/umt5'!r}
      c.model.text_dim, c.data.text_len = {TEXT_DIM}, {TEXT_LEN}
      c.model.action_dim, c.model.pose_dim = 13, 12
      c.train.init_from, c.vae.init_from = {imp + '/dit'!r}, {imp + '/vae'!r}
      c.vae.finetune_steps = 0
      c.generate.decoder = "vae"
      c.train.text_dropout, c.generate.guidance = 0.5, 2.0
      """), "  ") + "  return c\n")
  work = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "relic_jax.cli", "pipeline", f"--config={config}",
         f"--workdir={work}"]
  # 1. killed (SIGKILL) inside train_teacher, once it has written a checkpoint
  with open(tmp_path / "first.log", "w") as log:
    try:
      kill_in_teacher(cmd, work, stdout=log)
    except AssertionError:
      raise AssertionError((tmp_path / "first.log").read_text()[-3000:]) from None

  # the latent cache holds the captions' umT5 embeddings: row 0 the empty caption
  cache = os.path.join(work, "latents")
  with open(os.path.join(cache, "cache.json")) as f:
    assert json.load(f)["text"].startswith("umt5:")
  with open(os.path.join(cache, "captions.json")) as f:
    captions = json.load(f)
  assert captions[0] == "" and len(captions) >= 2
  from data_pipeline.latent_cache import LatentCacheSource
  src = LatentCacheSource(cache)
  null, first = src.null_text(), src[0]
  assert null.shape == (TEXT_LEN, TEXT_DIM) and null[0].any() and not null[1:].any()
  assert first["text_embedding"].shape == (TEXT_LEN, TEXT_DIM)
  assert np.abs(first["text_embedding"] - null).max() > 1e-3

  # 2. the rerun skips the finished stages and resumes the rest to the evaluation's table
  r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[relic] pipeline 4/8 encode: done before" in r.stdout
  assert "Results in " in r.stdout
  with open(os.path.join(work, "results", "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["_meta"]["distilled"]
  assert isinstance(metrics["relic"]["psnr"], float)

  # 3. `relic generate --text` encodes its caption with the imported umT5
  script = tmp_path / "short.txt"
  script.write_text("0.7 pan_left\n")
  r = _relic("generate", f"--config={config}", f"--workdir={work}", f"--actions={script}",
             "--text=a red door in a grey corridor", timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [f for f in os.listdir(os.path.join(work, "generate")) if f.endswith(".mp4")]
  from relic_jax.config.base import parent_config
  from relic_jax.inference import text as text_lib
  from relic_jax.inference.session import Session
  cfg = parent_config(str(config), "wan_micro")
  got = Session(cfg, None).text_input("a red door in a grey corridor")
  want = text_lib.from_config(cfg)(["a red door in a grey corridor", ""])
  np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0)  # batch 1 vs 2
  assert got.shape == (1, TEXT_LEN, TEXT_DIM) and np.abs(want[0] - want[1]).max() > 1e-3
