"""Training: the Trainer, the optimizers, schedules, precision, CUDA graphs, checkpoints, several processes."""
