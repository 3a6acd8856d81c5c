"""Golden shardings: the abstract params of the flagship configs get the layout recorded in
tests/golden/ (each param's shape, dtype, logical axes and the mesh axes they split over), so a
change to a model's axes or to the sharding rules is deliberate: rerun

  python -m tests.test_golden_shardings --update

and review the diff of the JSON files."""

import json
import os
import sys

import pytest

from relic_jax.config.base import parent_config
from relic_jax.inference.loading import dit_init
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.sharding import param_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden")
CONFIGS = ("relic_14b", "wan_1_3b")


def layout(name: str) -> dict:
  cfg = parent_config(os.path.join(REPO, "experiments", f"{name}.py"), name)
  return {"config": name, "rules": [[k, v] for k, v in mesh_lib.rules(cfg.mesh)],
          "params": param_layout(dit_init(cfg), mesh_lib.rules(cfg.mesh))}


def _path(name: str) -> str:
  return os.path.join(GOLDEN, f"{name}_param_shardings.json")


def _normalise(x):
  return json.loads(json.dumps(x))


@pytest.mark.parametrize("name", CONFIGS)
def test_params_get_the_recorded_shardings(name):
  with open(_path(name)) as f:
    want = json.load(f)
  got = _normalise(layout(name))
  assert got["rules"] == want["rules"], "the sharding rules changed"
  missing = sorted(set(want["params"]) - set(got["params"]))
  extra = sorted(set(got["params"]) - set(want["params"]))
  assert not missing and not extra, f"params missing {missing}, new {extra}"
  changed = {k: (want["params"][k], got["params"][k]) for k in want["params"]
             if want["params"][k] != got["params"][k]}
  assert not changed, ("params laid out differently (recorded, now): "
                       + json.dumps(changed, indent=1)[:4000]
                       + "\nIf deliberate: python -m tests.test_golden_shardings --update")
  # the check can fail: the big matrices are split (FSDP over embed, tensor over heads/mlp)
  split = [k for k, v in got["params"].items() if any(a is not None for a in v["mesh"])]
  assert len(split) >= 10


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
  os.makedirs(GOLDEN, exist_ok=True)
  for n in CONFIGS:
    with open(_path(n), "w") as f:
      json.dump(_normalise(layout(n)), f, indent=1, sort_keys=True)
      f.write("\n")
    print("wrote", _path(n))
