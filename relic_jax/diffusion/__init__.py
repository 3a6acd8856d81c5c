"""Diffusion objectives and samplers."""
