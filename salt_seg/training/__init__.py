"""Training: experiment config, data, loop, checkpoints and pretraining."""
