"""Multi-host: two processes (2 CPU devices each, gloo collectives) train exactly like one
process with 4 devices: jax.distributed.initialize from config, per-process data slices, global
batches via jax.make_array_from_process_local_data, checkpoints written jointly."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipeline.loader import make_train_iterator
from relic_jax.config.base import parent_config
from relic_jax.inference.loading import load_dit_params
from tests.helpers import REPO

STEPS = 6
FLAGS = ("--config.train.checkpoint_every=3", "--config.train.log_every=1",
         "--config.train.warmup_steps=2", "--config.train.async_checkpointing=false")


def _tiny():
  c = parent_config(os.path.join(REPO, "experiments", "tiny.py"), "tiny")
  c.train.progress_bar = False
  return c


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "tests.train_run", str(workdir), str(STEPS), *FLAGS, *extra]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_process_slices_assemble_the_single_process_batch():
  cfg = _tiny()
  one = make_train_iterator(cfg, 0, 1)
  parts = [make_train_iterator(cfg, p, 4) for p in range(4)]
  for _ in range(3):
    whole = next(one)
    pieces = [next(it) for it in parts]
    for k in whole:
      assert all(p[k].shape[0] == whole[k].shape[0] // 4 for p in pieces)
      np.testing.assert_array_equal(np.concatenate([p[k] for p in pieces]), whole[k])


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_two_processes_train_like_one(tmp_path):
  single = subprocess.run(_cmd(tmp_path / "single"), cwd=REPO, env=_env(4), capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  dist = ("--config.distributed.initialize=true",
          f"--config.distributed.coordinator_address=localhost:{port}",
          "--config.distributed.num_processes=2")
  procs = [subprocess.Popen(_cmd(tmp_path / "multi", *dist, f"--config.distributed.process_id={i}"),
                            cwd=REPO, env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "2 process(es), 4 x cpu" in outs[0], outs[0][-2000:]

  final = json.loads((tmp_path / "multi" / "final_metrics.json").read_text())
  assert final["n_devices"] == 4 and final["step"] == STEPS
  np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "single"),
                             rtol=1e-5)
  cfg = _tiny()
  a = jax.device_get(load_dit_params(cfg, str(tmp_path / "multi")))
  b = jax.device_get(load_dit_params(cfg, str(tmp_path / "single")))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
