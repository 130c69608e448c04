"""Training: models, batch sources, the optimizer step, the run loop, checkpoints, walk-forward."""
