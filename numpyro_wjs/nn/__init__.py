"""Neural networks: Flax NNX denoisers and classifier, the optax trainer, orbax
checkpoints, shipped networks."""
