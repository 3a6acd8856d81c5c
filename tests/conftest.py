"""Test set-up: 8 faked CPU devices and fast compilation (set before JAX is imported), a shared
persistent compilation cache, and the --runslow option."""

import os

# The suite's time is mostly XLA compilation of small programs: LLVM at -O0 halves it (HLO
# optimisations still run; only the generated CPU code is less optimised).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run, shared by the xdist workers and the
# subprocesses the tests start (kill-and-resume runs compile the same step in several
# processes). A fresh directory per run: nothing carries over between runs.
_OWN_CACHE = "RELIC_TEST_COMPILATION_CACHE" not in os.environ  # the controller's, not a worker's
if _OWN_CACHE:
  import tempfile
  os.environ["RELIC_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="relic-jax-xla-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["RELIC_TEST_COMPILATION_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="also run slow tests")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    import shutil
    shutil.rmtree(os.environ["RELIC_TEST_COMPILATION_CACHE"], ignore_errors=True)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes minutes; run with --runslow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="module")
def relic():
  """`relic(*args, cwd=None, env=None, prelude=None)`: the `relic` command run in a fork of one
  process per test module that imported it once (tests/cli_forker.py), for tests that run it
  many times (the error tables)."""
  from tests.helpers import CliForker  # noqa: PLC0415 (only the modules that use it pay)
  forker = CliForker()
  yield forker.run
  forker.close()
