"""Shared test helpers: tiny configs, random inputs and fully random (non-zero) params."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax

from relic_jax.config import get_base_config
from relic_jax.models.dit import DiTConfig, WanDiT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**model):
  c = get_base_config()
  c.train.progress_bar = False
  for k, v in model.items():
    c.model[k] = v
  return c


def inputs(b=2, t=4, h=8, w=8, c=16, l=8, dt=32, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (b, t, h, w, c))
  tt = jax.random.uniform(k2, (b, t), minval=0.0, maxval=1000.0)
  txt = jax.random.normal(k3, (b, l, dt))
  return x, tt, txt


def random_params(model: WanDiT, x, t, txt, seed=1):
  """Initialised params with the zero-initialised output projection made random, so every
  input actually reaches the output."""
  params = nn.meta.unbox(model.init(jax.random.key(seed), x, t, txt))["params"]
  k = params["proj_out"]["kernel"]
  params["proj_out"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1), k.shape)
  return params


def make_model(**kw) -> WanDiT:
  return WanDiT(DiTConfig(**kw))


def run_cli(*args, env=None, timeout=600):
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)
  e.update(env or {})
  return subprocess.run([sys.executable, "-m", "relic_jax.cli", *args], cwd=REPO, env=e,
                        capture_output=True, text=True, timeout=timeout)



class CliForker:
  """`relic ARGS` for many commands in a row, each in a fork of one process that imported
  relic_jax.cli once (tests/cli_forker.py): a command costs what it does, not an interpreter
  and a JAX import. `run(*args, cwd=None, env=None, prelude=None) -> CompletedProcess-like`
  (prelude: Python the child runs first, e.g. to inject a fault)."""

  def __init__(self, env=None):
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    e.update(env or {})
    self.proc = subprocess.Popen([sys.executable, "-m", "tests.cli_forker"], cwd=REPO, env=e,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def run(self, *args, cwd=None, env=None, prelude=None):
    self.proc.stdin.write(json.dumps({"argv": list(args), "cwd": cwd or REPO,
                                      "env": env or {}, "prelude": prelude}) + "\n")
    self.proc.stdin.flush()
    r = json.loads(self.proc.stdout.readline())
    return types.SimpleNamespace(returncode=r["code"], stdout=r["stdout"], stderr=r["stderr"])

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(30)

