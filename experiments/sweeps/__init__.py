"""Ablation sweeps: `relic sweep experiments/sweeps/<name>.py` (format: relic_jax/sweep.py)."""
