"""experiments/small.py's recipe on a real latent cache (issue 17), and the cache horizons the
large configs' recipes imply.

The slow test runs the stages data, train_vae, encode, train_teacher, ode_init and distill one
by one through the `relic` command, on small's model (dims, layers, heads, 16x16 latents,
text) and small's horizons (teacher curriculum 8 -> 16 -> 25 latent frames, ODE init of 4
blocks with 1 noised, rollouts of 2, 4 and 8 blocks, window 6, guidance 3); only what makes it
affordable on 2 CPU cores is cut: 3 short episodes, tiny's narrow VAE, 1-2 steps per phase,
batch 1, few ODE trajectories and solver steps. It stops before `evaluate`.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from data_pipeline.clips import clip_frames
from data_pipeline.latent_cache import CACHE_META, LatentCacheSource
from relic_jax.config import derive, parent_config
from relic_jax.training import distill as dl
from relic_jax.training import ode_init as oi
from tests.helpers import REPO

STAGES = ("data", "train_vae", "encode", "train_teacher", "ode_init", "distill")

# Everything below keeps small's model and horizons; it changes sizes, steps and batches only.
# 3 episodes of 120 frames (1 held out): 2 x 2 cache clips of 97 frames at stride 16.
# critic_ratio 1: every distillation step is also a generator (DMD) step, so each rollout
# length of the curriculum takes one.
REDUCED = """
c.train.progress_bar = False
c.data.gen.num_episodes, c.data.gen.frames_per_episode = 3, 120
c.data.gen.episodes_per_shard = 1
c.vae.base_dim, c.vae.dim_mult, c.vae.num_res_blocks = 16, (1, 2, 2, 2), 1
c.vae.train.update({"steps": 2, "batch_size": 1, "warmup_steps": 1, "checkpoint_every": 2,
                    "log_every": 1})
c.vae.tiny_steps, c.vae.eval_clips = 0, 1
c.data.encode_batch_size = 2
c.train.horizon_curriculum = tuple((frames, 1) for frames, _ in c.train.horizon_curriculum)
c.train.update({"batch_size": 1, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1,
                "async_checkpointing": False})
c.ode_init.num_trajectories, c.ode_init.solver_steps = 2, 2
c.ode_init.train.update({"steps": 2, "batch_size": 1, "warmup_steps": 1,
                         "checkpoint_every": 2, "log_every": 1})
c.distill.rollout_curriculum = tuple((blocks, 1) for blocks, _ in c.distill.rollout_curriculum)
c.distill.batch_size, c.distill.critic_ratio = 1, 1
c.distill.checkpoint_every, c.distill.log_every = 1, 1
"""


def _small():
  return parent_config(f"{REPO}/experiments/small.py", "small")


def _write_config(tmp_path) -> str:
  path = tmp_path / "small_reduced.py"
  path.write_text("import experiments.small as small\n\n\ndef get_config():\n"
                  "  c = small.get_config()\n" + textwrap.indent(REDUCED, "  ")
                  + "  return c\n")
  return str(path)


def _load(path):
  with open(path) as f:
    return json.load(f)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow  # 9 min 48 s on 2 CPU cores (seconds: data 5, VAE 130, encode 36, teacher 89,
# ODE init 83, distill 234)
def test_small_recipe_runs_on_the_latent_cache_at_reduced_steps(tmp_path):
  config, work = _write_config(tmp_path), str(tmp_path / "run")
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "PYTHONPATH": REPO}
  logs = {}
  t0 = time.time()
  for stage in STAGES:
    r = subprocess.run([sys.executable, "-m", "relic_jax.cli", stage, f"--config={config}",
                        f"--workdir={work}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, f"relic {stage} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    logs[stage] = r.stdout
    print(f"relic {stage}: {time.time() - t0:.0f}s so far")
  assert not os.path.exists(os.path.join(work, "results"))  # stopped before evaluate

  small = _small()
  # 1. the cache: clips of cache_frames(small) = 25 latent frames, read by every stage as prefixes
  assert derive.cache_horizons(small) == [7, 8, 13, 16, 25]
  t = derive.cache_frames(small)
  assert t == 25
  cache_dir = os.path.join(work, "latents")
  meta = _load(os.path.join(cache_dir, CACHE_META))
  assert (meta["clip"]["latent_frames"], meta["clip"]["frames"]) == (t, 1 + 4 * (t - 1))
  assert meta["clip"]["horizons"] == [7, 8, 13, 16, 25] and meta["latent_stats"] is not None
  source = LatentCacheSource(cache_dir)
  assert len(source) == meta["num_clips"] == 4
  clip = source[0]
  assert clip["latents"].shape == (t, 16, 16, 16)
  assert clip["actions"].shape == (1 + 4 * (t - 1), 13)
  assert np.isfinite(clip["latents"]).all()

  # 2. the teacher: each phase of the curriculum trained on the cache, at its horizon
  teacher = os.path.join(work, "teacher")
  record = _load(os.path.join(teacher, "curriculum.json"))
  assert [(p["dir"], p["latent_frames"], p["steps"], p["done"]) for p in record["phases"]] == [
      ("horizon_0_8f", 8, 1, True), ("horizon_1_16f", 16, 1, True), (".", 25, 1, True)]
  assert [p["yarn_factor"] for p in record["phases"]] == derive.yarn_factors(small)
  for p in record["phases"]:
    d = os.path.join(teacher, p["dir"])
    saved = _load(os.path.join(d, "config.json"))
    assert (saved["data"]["source"], saved["data"]["latent_frames"]) == (
        "latents", p["latent_frames"])
    assert (saved["model"]["dim"], saved["model"]["num_layers"]) == (384, 8)
    final = _load(os.path.join(d, "final_metrics.json"))
    assert final["step"] == 1 and math.isfinite(final["loss"]), final

  # 3. ODE init: trajectories of the ODE-init clip (13 latent frames), a finite regression
  assert oi.clip_frames(small) == 13
  parts = sorted(os.listdir(os.path.join(work, "ode_init", "trajectories")))
  assert len(parts) == 2  # 2 trajectories, 1 per part (the teacher's batch)
  with np.load(os.path.join(work, "ode_init", "trajectories", parts[0])) as z:
    assert z["x0"].shape == (1, 13, 16, 16, 16)
    assert z["states"].shape == (1, len(small.generate.timesteps), 13, 16, 16, 16)
    assert np.isfinite(z["states"]).all()
  final = _load(os.path.join(work, "ode_init", "final_metrics.json"))
  assert final["step"] == 2 and math.isfinite(final["loss"]), final

  # 4. distillation: from the ODE init, one DMD step at each rollout length (2, 4, 8 blocks)
  assert dl.rollout_frames(small) == 25
  final = _load(os.path.join(work, "distill", "final_metrics.json"))
  assert final["step"] == 3 and final["generator_from"] == "ode_init", final
  assert sorted(final["compiled"], key=int) == ["2", "4", "8"]
  rows = _jsonl(os.path.join(work, "distill", "metrics.jsonl"))
  assert [r["blocks"] for r in rows] == [2, 4, 8]
  for r in rows:
    for k in ("critic_loss", "dmd_loss", "score_diff", "teacher_fm_loss", "gen_grad_norm"):
      assert math.isfinite(r[k]), (k, r)
  saved = _load(os.path.join(work, "distill", "config.json"))
  assert (saved["generate"]["guidance"], saved["train"]["text_dropout"],
          saved["memory"]["window"], saved["data"]["source"]) == (3.0, 0.1, 6, "latents")
  assert "distill step for 8 block(s) (25 latent frames" in logs["distill"]


@pytest.mark.parametrize("name", ("wan_1_3b", "relic_14b"))
def test_large_configs_cache_the_horizons_their_recipes_read(name):
  """RELIC's 5 s / 10 s / 20 s teacher phases (21, 41, 81 latent frames), the ODE-init clip
  (1 + 7 x 3 = 22) and the rollouts of 7, 13, 26 blocks (22, 40, 79): the cache holds clips of
  81 latent frames (321 video frames), which the episodes `relic data` generates must hold.
  validate() accepting these configs is tests/test_student_recipe.py's."""
  cfg = parent_config(f"{REPO}/experiments/{name}.py", name)
  assert derive.cache_horizons(cfg) == [21, 22, 40, 41, 79, 81]
  assert derive.cache_frames(cfg) == 81
  assert derive.yarn_factors(cfg) == [1.0, 41 / 21, 81 / 21]
  need = clip_frames(81, cfg.model.cond_frames_per_latent)
  have = int(cfg.data.gen.frames_per_episode)
  assert have >= need, f"episodes of {have} frames hold no cache clip of {need}"
