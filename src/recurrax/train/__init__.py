"""Training: losses, BPTT strategies, the trainer, checkpoints and run directories."""
