"""relic_jax: a JAX/Flax reimplementation of RELIC (interactive video world model with memory)."""

from setuptools import find_packages, setup

JAX = "0.10.2"  # the jax the compile extras' compilers must match

setup(
    name="relic_jax",
    version="0.1.0",
    description="RELIC interactive video world model with long-horizon memory, in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["relic_jax", "relic_jax.*", "data_pipeline",
                                    "data_pipeline.*"]),
    install_requires=[
        f"jax>={JAX}",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "tensorstore>=0.1.86",
        "absl-py>=2.1",
        "numpy>=2.0",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "ml_dtypes>=0.5",
        # the data pipeline: ViZDoom episodes, ArrayRecord shards, images, video, plots
        "vizdoom>=1.2.4",
        "array_record>=0.5",
        "pillow>=10",
        "av>=12",
        "matplotlib>=3.8",
        # umT5's tokenizer (tokenizer.json) for model.text_encoder='umt5'
        "tokenizers>=0.19",
        # `relic play`: the web server and its websockets
        "aiohttp>=3.9",
    ],
    extras_require={
        # torch (CPU), diffusers and transformers: only to check parity with the reference Wan and
        # umT5 implementations;
        # ruff: the linter `make test` runs first (rules in ruff.toml; PLC0415 is stable from 0.12).
        "test": ["pytest>=8", "pytest-xdist>=3.6", "torch==2.13.0", "diffusers>=0.35",
                 "transformers>=4.45", "safetensors>=0.4", "ruff>=0.12",
                 # the property-based fuzz tests (tests/test_fuzz.py)
                 "hypothesis>=6",
                 # the browser test of `relic play` (Debian's chromium and chromium-driver)
                 "selenium>=4.20"],
        # `relic compile` (relic_jax/bench/aot.py): the TPU compiler (libtpu, matched to jax's
        # version) and the GPU one (the CUDA plugin and ptxas; no driver or card needed). Each
        # is only a compiler here: on a host without the hardware jax still runs on the CPU.
        "tpu": [f"jax[tpu]=={JAX}"],
        "gpu": [f"jax=={JAX}", f"jax-cuda12-plugin=={JAX}", "nvidia-cuda-nvcc-cu12"],
    },
    package_data={"relic_jax.bench": ["gpu_targets/*.txtpb"],
                  "relic_jax.play": ["static/*.html", "static/*.js", "static/*.css"]},
    entry_points={"console_scripts": ["relic=relic_jax.cli:run"]},
)
