"""Evaluation: image metrics now; action following, revisit memory and drift later."""
