"""Training: the jitted step, losses, gradient cache, validation, ANCE episodes,
checkpoints, TensorBoard scalars and multi-process helpers. The loop and its command line
are ``multiret_jax/train.py`` (``python -m multiret_jax.train``)."""
