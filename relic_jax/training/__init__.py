"""Training: state, optimizer, checkpointing, the generic loop and the stage-specific tasks."""
