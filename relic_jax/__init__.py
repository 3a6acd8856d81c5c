"""relic_jax: a JAX/Flax reimplementation of RELIC, an interactive video world model with
long-horizon memory (arXiv 2512.04040)."""

__version__ = "0.1.0"
