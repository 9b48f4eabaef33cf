"""Pooling of token states into one vector: [CLS] (DPR, MT-DPR) or masked mean (ST5-Enc,
sentence-transformers)."""

from __future__ import annotations

from typing import Callable, Dict

import jax.numpy as jnp


def cls_pool(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """The first token's state. Args: hidden [B, L, H], mask [B, L]. Returns [B, H]."""
    del mask
    return hidden[:, 0]


def mean_pool(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean over unmasked tokens (accumulated in float32). Returns [B, H]."""
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return (total / jnp.maximum(m.sum(axis=1), 1.0)).astype(hidden.dtype)


POOLERS: Dict[str, Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]] = {
    "cls": cls_pool,
    "mean": mean_pool,
}


def get_pooler(name: str) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
    try:
        return POOLERS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; known: {sorted(POOLERS)}") from None
