"""`relic generate` end to end on a tiny run, and the action-script format."""

import json
import os

import numpy as np
import pytest

from relic_jax.inference import scripts as scripts_lib


def test_scripts_parse_to_per_frame_actions():
  a = scripts_lib.parse("# a comment\n1.0 static\n0.4 dolly_in+pan_left x0.5\n", fps=10.0)
  assert a.shape == (14, 13)
  assert (a[:10, 12] == 1).all() and a[:10, :12].sum() == 0
  assert np.allclose(a[10:, 0], 0.5) and np.allclose(a[10:, 8], 0.5 * scripts_lib.DEFAULT_TURN)
  blocks = scripts_lib.to_blocks(a, 12)
  assert blocks.shape == (2, 12, 13) and (blocks[1, 2:, 12] == 1).all()
  for name in scripts_lib.BUILTIN:
    assert scripts_lib.load(name, 17.5).shape[1] == 13
  for bad, msg in [("2.0 fly", "unknown action 'fly'"), ("x static", "not a duration"),
                   ("1.0 static 0.5", "written x<number>"), ("-1 static", "must be positive"),
                   ("", "no segments")]:
    with pytest.raises(scripts_lib.ScriptError, match=msg):
      scripts_lib.parse(bad, 10.0)
  with pytest.raises(scripts_lib.ScriptError, match="neither a built-in script"):
    scripts_lib.load("/nonexistent/script.txt", 10.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A workdir with data and untrained (initialised) VAE, tiny decoder and teacher
  checkpoints: generation's plumbing does not need trained weights."""
  from data_pipeline import generate as gen
  from relic_jax.training import vae_train
  from relic_jax.training.teacher import TeacherTask
  from relic_jax.training.trainer import save_initial_state
  from tests.test_data import small_data_config
  cfg = small_data_config()
  cfg.data.latent_frames = 4  # 1 + one block of 3
  cfg.vae.update({"base_dim": 8, "dim_mult": (1, 2, 2, 2), "num_res_blocks": 1,
                  "eval_clips": 1, "tiny_dim": 8, "tiny_steps": 1})
  cfg.vae.train.update({"steps": 1, "batch_size": 8, "checkpoint_every": 1})
  cfg.model.update({"in_channels": 16, "out_channels": 16, "action_dim": 13, "pose_dim": 12,
                    "text_encoder": "bytes", "text_encoder_width": 16, "text_encoder_layers": 1})
  cfg.train.update({"steps": 1, "batch_size": 8, "checkpoint_every": 1, "progress_bar": False})
  cfg.memory.max_frames = 16
  workdir = str(tmp_path_factory.mktemp("gen"))
  gen.generate(cfg, os.path.join(workdir, "data"), progress=False)
  vcfg = vae_train.stage_config(cfg)
  save_initial_state(vcfg, os.path.join(workdir, "vae"), vae_train.VAETask(vcfg))
  tcfg = vae_train.tiny_stage_config(cfg)
  save_initial_state(tcfg, os.path.join(workdir, "vae_tiny"), vae_train.TinyDecoderTask(tcfg, None))
  save_initial_state(cfg, os.path.join(workdir, "teacher"), TeacherTask(cfg))
  return cfg, workdir


@pytest.mark.parametrize("decoder", [pytest.param("vae", marks=pytest.mark.slow),
                                     pytest.param("tiny", marks=pytest.mark.slow)])
def test_generate_writes_a_captioned_video(trained_run, decoder, tmp_path):
  from relic_jax.inference.generate import generate
  cfg, workdir = trained_run
  cfg = cfg.copy_and_resolve_references()
  cfg.generate.decoder = decoder
  script = tmp_path / "turn.txt"
  script.write_text("0.5 static\n1.0 pan_left\n")
  r = generate(cfg, workdir, str(script), out_dir=str(tmp_path / "out"))
  n_actions = round(0.5 * 17.5) + round(1.0 * 17.5)
  assert r["frames"] == 1 + n_actions and r["blocks"] == 3 and r["dit_from"] == "teacher"
  assert os.path.getsize(r["video"]) > 1000
  import av
  with av.open(r["video"]) as f:
    assert sum(1 for _ in f.decode(video=0)) == r["frames"]
  saved = json.loads((tmp_path / "out" / "turn.json").read_text())
  assert np.asarray(saved["actions"]).shape == (n_actions, 13) and saved["fps"] > 0


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_generate_errors_are_clear(trained_run, tmp_path):
  from data_pipeline.episode import DataError
  from relic_jax.inference.generate import generate
  cfg, workdir = trained_run
  with pytest.raises(DataError, match=r"no trained DiT in .*Fix: run `relic train_teacher`"):
    generate(cfg, str(tmp_path), "strafe")
  with pytest.raises(scripts_lib.ScriptError, match="neither a built-in script"):
    generate(cfg, workdir, "moonwalk")
  with pytest.raises(DataError, match="cannot read it as an image"):
    generate(cfg, workdir, "strafe", image_path=__file__)
