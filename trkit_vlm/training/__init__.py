"""Few-shot adapter training: the run config, ``train()``, the epoch loop, checkpoints, DDP, prefix cache."""
