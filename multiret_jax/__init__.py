"""multiret_jax: one dense retriever for many knowledge-intensive tasks (MT-DPR, TACO) in JAX."""

__version__ = "0.1.0"
