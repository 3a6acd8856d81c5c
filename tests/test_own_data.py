"""Your own posed videos end to end: `relic pipeline --data=ingest:DIR` ingests a source of
another renderer (tests/procedural.py: a room, not Doom), takes the frame rate and action scale
from the ingested dataset (stages.dataset_config), and runs every stage to the evaluation's
table on the recorded held-out episodes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import clips as clips_lib
from data_pipeline import shards as shards_lib
from relic_jax import stages
from tests import procedural
from tests.helpers import tiny_config
from tests.test_pipeline import ROOT, _config, _env

TINY = "--config=experiments/tiny.py"


def _ingested(tmp_path, relic, fps=8.0, frames=100, episodes=3, extra=()):
  src, wd = str(tmp_path / "src"), str(tmp_path / "wd")
  procedural.write_source(src, episodes=episodes, frames=frames, size=32, fps=fps)
  r = relic("data", TINY, f"--workdir={wd}", f"--data=ingest:{src}", *extra)
  return src, wd, r


def test_an_ingested_dataset_decides_the_frame_rate_and_the_action_scale(tmp_path, relic):
  src, wd, r = _ingested(tmp_path, relic)
  assert r.returncode == 0, r.stderr[-2000:]
  cfg = tiny_config()
  cfg.data.ingest = src
  out = stages.dataset_config(cfg, wd)
  manifest = shards_lib.read_manifest(os.path.join(wd, "data"))
  assert manifest["config"]["source"] == "ingest"
  entries = [e for _, e in shards_lib.episode_entries(manifest)]
  train = clips_lib.split_episodes(len(entries), "train", cfg.data.heldout_episodes,
                                   os.path.join(wd, "data"))
  expected = (sum(entries[i]["translation_per_frame"] * (entries[i]["num_frames"] - 1)
                  for i in train) / sum(entries[i]["num_frames"] - 1 for i in train))
  assert out.generate.fps == 8.0 and cfg.generate.fps == 17.5
  assert out.generate.action_scale == pytest.approx(expected, rel=1e-12)
  # a measurement (the cameras walk as well as turn), not the config's 0.06
  assert 0.001 < out.generate.action_scale != cfg.generate.action_scale
  # the DiT stages' derivation applies it too, and says so when it runs
  assert stages.latent_cache_config(cfg, wd).generate.fps == 8.0
  r = relic("generate", TINY, f"--workdir={wd}", "--actions=look_around")
  assert "generate.fps=8.0" in r.stdout and "derived by stages.latent_cache_config" in r.stdout
  # a workdir without a dataset, or with a generated one, is left as the config says
  assert stages.dataset_config(cfg, str(tmp_path / "none")) is cfg


def test_episodes_at_different_frame_rates_are_refused(tmp_path, relic):
  src = str(tmp_path / "src")
  procedural.write_source(src, episodes=3, frames=100, size=32, fps=8.0)
  ep = os.path.join(src, "room002", "episode.json")
  with open(ep) as f:
    settings = json.load(f)
  settings["fps"] = 16.0
  with open(ep, "w") as f:
    json.dump(settings, f)
  wd = str(tmp_path / "wd")
  r = relic("data", TINY, f"--workdir={wd}", f"--data=ingest:{src}")
  assert r.returncode == 0, r.stderr[-2000:]  # one dataset may hold several rates ...
  r = relic("train_vae", TINY, f"--workdir={wd}")  # ... a model trains on one
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "different frame rates (8, 16 fps)" in r.stderr and "Fix: resample" in r.stderr


def test_episodes_shorter_than_the_clips_are_refused(tmp_path, relic):
  src, wd, r = _ingested(tmp_path, relic, frames=40)
  assert r.returncode == 0, r.stderr[-2000:]
  r = relic("train_vae", TINY, f"--workdir={wd}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "the longest training episode has 40 frames, but the longest clip the stages read " \
         "has 97" in r.stderr


def test_the_data_flag_ingests_and_refuses_what_it_cannot_mean(tmp_path, relic):
  wd = str(tmp_path / "wd")
  for args, needle in [
      (("--data=ingest:",), "expected ingest:DIR"),
      (("--data=doom",), "expected ingest:DIR"),
      (("--data=ingest:" + str(tmp_path / "none"),), "does not exist"),
  ]:
    r = relic("data", TINY, f"--workdir={wd}", *args)
    assert r.returncode == 2 and needle in r.stderr, (args, r.stderr[-1000:])
  r = relic("train_teacher", TINY, f"--workdir={wd}", "--data=ingest:x")
  assert r.returncode == 2 and "--data is for `relic pipeline` and `relic data`" in r.stderr
  assert not os.path.exists(wd)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_the_pipeline_on_your_own_episodes_runs_to_the_evaluation(tmp_path):
  """The README's "Your own data" example at the micro scale of tests/test_pipeline.py: four
  procedural episodes at 8 fps (one held out), `relic pipeline --data=ingest:DIR`, to the
  evaluation's table on the held-out episode's recorded actions."""
  src = str(tmp_path / "episodes")
  eps = procedural.write_source(src, episodes=4, frames=120, size=64, fps=8.0)
  config, work = _config(tmp_path), str(tmp_path / "run")
  r = subprocess.run([sys.executable, "-m", "relic_jax.cli", "pipeline", f"--config={config}",
                      f"--workdir={work}", f"--data=ingest:{src}"], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  assert "generate.fps=8.0" in r.stdout  # derived from the dataset, said by each stage
  with open(os.path.join(work, "data", "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["config"]["source"] == "ingest" and manifest["num_episodes"] == 4
  with open(os.path.join(work, "results", "metrics.json")) as f:
    metrics = json.load(f)
  assert {"relic", "window", "window_sink", "full", "copy_last", "truth", "static"} <= set(
      metrics)
  assert metrics["_meta"]["weights_from"] == "distill"
  for method in ("relic", "window", "full"):
    assert np.isfinite(metrics[method]["psnr"]), (method, metrics[method])
  details = json.load(open(os.path.join(work, "results", "details.json")))
  (case,) = details["cases"].values()  # the held-out episode, replayed
  assert eps[-1]["name"] in json.dumps(case)
  with open(os.path.join(work, "results", "metrics.md")) as f:
    assert "| relic |" in f.read()
