# Every target creates (or reuses) the virtual environment in $(VENV) first, so on a fresh
# machine with only Python 3.10+ and pip, `make demo` and `make test` do all the set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-relic_jax
WORKDIR ?= runs/demo

.PHONY: demo play assets test test-slow test-all venv clean

TEST_STAMP := $(VENV)/.installed-relic_jax-test

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# The test extras add torch (CPU) and diffusers, for the Wan parity tests, and ruff; tpu adds
# libtpu, the TPU compiler `relic compile` and its tests use (no TPU needed). (The gpu extra's
# CUDA plugin is left out: it logs to stderr at every start on a host without a GPU, even
# with JAX_PLATFORMS=cpu; its test runs where it is installed.)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,tpu]"
	touch $(TEST_STAMP)

venv: $(STAMP)

# The main job on its embedded default: RELIC's recipe at CPU scale, fine-tuning the shipped
# base assets (assets/demo): data, pose estimator, the pretrained VAE (evaluated), latent
# cache, teacher fine-tuned with actions and poses, ODE init, distillation, evaluation with
# videos (experiments/demo.py; experiments/tiny.py is the from-scratch variant).
demo: $(STAMP)
	$(VENV)/bin/relic pipeline --config=experiments/demo.py --workdir=$(WORKDIR)

# Play the demo's student in a browser (after `make demo`): http://127.0.0.1:8000/
play: $(STAMP)
	$(VENV)/bin/relic play --config=experiments/demo.py --workdir=$(WORKDIR)

# The demo's pretrained base models (experiments/demo_assets.py): 244 ViZDoom episodes, the VAE
# and its tiny decoder, the latent cache and the base DiT, exported with their SHA-256s and
# held-out figures to assets/demo (docs/assets.md). About 5 hours on 2 CPU cores, 12.5 minutes
# on one H200 (relic_jax/bench/device_assets.sh); resumable: rerun it after an interruption and
# it continues where it stopped.
ASSETS_WORKDIR ?= runs/assets
assets: $(STAMP)
	$(VENV)/bin/relic pipeline --config=experiments/demo_assets.py --workdir=$(ASSETS_WORKDIR) \
	  --until=train_teacher
	$(VENV)/bin/relic export-assets --config=experiments/demo_assets.py \
	  --workdir=$(ASSETS_WORKDIR) --out=assets/demo

# The linter (ruff.toml), then the default test suite (CPU, at most 12 minutes on 2 cores;
# see docs/testing.md).
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadscope -q -rs tests

# Only the tests marked slow (whole-pipeline and kill-and-resume subprocess runs, multi-process
# training, long compiles); CI runs it after `make test`.
test-slow: $(TEST_STAMP)
	$(PY) -m pytest -n 2 --dist loadscope -q --runslow -m slow tests

# Everything: the linter, the default suite and the slow tests.
test-all: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadscope -q --runslow tests

clean:
	rm -rf runs .pytest_cache
