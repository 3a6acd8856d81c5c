"""The layering: generation, the interactive session and evaluation load their weights
params-only and import nothing from training/ (checked in a fresh interpreter, so that no
other test's imports leak in)."""

import subprocess
import sys

import pytest

from tests.helpers import REPO

INFERENCE_MODULES = ("relic_jax.inference.session", "relic_jax.inference.generate",
                     "relic_jax.inference.loading", "relic_jax.evaluation.evaluate",
                     "relic_jax.play.server")


@pytest.mark.parametrize("module", INFERENCE_MODULES)
def test_inference_and_evaluation_import_nothing_from_training(module):
  code = (f"import sys, {module}\n"
          "print(sorted(m for m in sys.modules if m.startswith('relic_jax.training')))")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == "[]", f"importing {module} imports {r.stdout.strip()}"
