"""Contrastive NCE loss of DPR / MT-DPR / TACO: in-batch plus hard negatives.

For one task's sub-batch of B queries, each with one positive passage and H hard negatives
(1 BM25 negative in MT-DPR, 2 in TACO), every query is scored against all B positives and
all B*H hard negatives of the sub-batch; the loss is the cross-entropy of its own positive.

Cross-device negatives: the train step is jitted over GLOBAL arrays (batch sharded on the
"data" mesh axis), so the candidate set is the global batch's passages and XLA inserts the
all-gather; every device's passages are negatives for every query, as in DPR and TACO.

Padding (vmap over tasks needs equal shapes): rows with ``query_mask == 0`` contribute
exactly nothing (no loss, no gradient, and their passages are not candidates), and hard
negatives with ``negative_mask == 0`` are not candidates. The loss is the mean over real
queries. Optional passage ids remove false negatives: a candidate with the same id as a
query's positive (the same passage drawn for two queries) is not counted as a negative.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

NEG_INF = -1e9


def nce_logits(queries: jax.Array, positives: jax.Array, negatives: Optional[jax.Array] = None,
               query_mask: Optional[jax.Array] = None, negative_mask: Optional[jax.Array] = None,
               positive_ids: Optional[jax.Array] = None,
               negative_ids: Optional[jax.Array] = None) -> jax.Array:
    """Masked similarity logits [B, B + B*H]; column i is query i's positive.

    Args:
      queries: [B, D] query embeddings.
      positives: [B, D] positive passage embeddings.
      negatives: [B, H, D] hard negatives (or None for in-batch only).
      query_mask: [B], 0 for padded rows (default all real).
      negative_mask: [B, H], 0 for missing negatives.
      positive_ids, negative_ids: [B] and [B, H] int passage ids for false-negative removal.
    Returns:
      float32 logits with excluded candidates at a large negative value.
    """
    b = queries.shape[0]
    qm = jnp.ones((b,), bool) if query_mask is None else query_mask.astype(bool)
    cands = positives
    cand_ok = qm
    cand_ids = positive_ids
    if negatives is not None:
        h = negatives.shape[1]
        nm = jnp.ones((b, h), bool) if negative_mask is None else negative_mask.astype(bool)
        cands = jnp.concatenate([positives, negatives.reshape(b * h, -1)], axis=0)
        cand_ok = jnp.concatenate([qm, (nm & qm[:, None]).reshape(-1)])
        if positive_ids is not None and negative_ids is not None:
            cand_ids = jnp.concatenate([positive_ids, negative_ids.reshape(-1)])
    logits = jnp.einsum("qd,cd->qc", queries.astype(jnp.float32), cands.astype(jnp.float32))
    keep = jnp.broadcast_to(cand_ok[None, :], logits.shape)
    if positive_ids is not None and cand_ids is not None:
        same = cand_ids[None, :] == positive_ids[:, None]
        own = jnp.arange(logits.shape[1])[None, :] == jnp.arange(b)[:, None]
        keep = keep & (~same | own)
    return jnp.where(keep, logits, NEG_INF)


def nce_loss(queries: jax.Array, positives: jax.Array, negatives: Optional[jax.Array] = None,
             query_mask: Optional[jax.Array] = None, negative_mask: Optional[jax.Array] = None,
             positive_ids: Optional[jax.Array] = None, negative_ids: Optional[jax.Array] = None,
             temperature: float = 1.0) -> jax.Array:
    """Mean NCE loss over real queries (see ``nce_logits`` for the arguments).

    Args:
      temperature: logits are divided by it (1.0: DPR's plain dot product).
    Returns:
      Scalar float32 loss; 0 when the sub-batch has no real query.
    """
    nll = nce_nll(queries, positives, negatives, query_mask, negative_mask, positive_ids,
                  negative_ids, temperature)
    b = queries.shape[0]
    qm = jnp.ones((b,), jnp.float32) if query_mask is None else query_mask.astype(jnp.float32)
    return jnp.sum(nll * qm) / jnp.maximum(jnp.sum(qm), 1.0)


def nce_nll(queries: jax.Array, positives: jax.Array, negatives: Optional[jax.Array] = None,
            query_mask: Optional[jax.Array] = None, negative_mask: Optional[jax.Array] = None,
            positive_ids: Optional[jax.Array] = None, negative_ids: Optional[jax.Array] = None,
            temperature: float = 1.0) -> jax.Array:
    """Per-query NCE loss [B] (``-log p(own positive)``; padded rows hold finite garbage
    that the caller masks): ``nce_loss`` is its mean over real queries, and a union batch
    (``training/step.py``) also averages it per task for logging."""
    logits = nce_logits(queries, positives, negatives, query_mask, negative_mask,
                        positive_ids, negative_ids) / temperature
    b = queries.shape[0]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -log_probs[jnp.arange(b), jnp.arange(b)]


def in_batch_accuracy(queries: jax.Array, positives: jax.Array, negatives: Optional[jax.Array] = None,
                      query_mask: Optional[jax.Array] = None,
                      negative_mask: Optional[jax.Array] = None) -> jax.Array:
    """Fraction of real queries whose positive scores highest among the candidates."""
    logits = nce_logits(queries, positives, negatives, query_mask, negative_mask)
    b = queries.shape[0]
    hit = (jnp.argmax(logits, axis=-1) == jnp.arange(b)).astype(jnp.float32)
    qm = jnp.ones((b,), jnp.float32) if query_mask is None else query_mask.astype(jnp.float32)
    return jnp.sum(hit * qm) / jnp.maximum(jnp.sum(qm), 1.0)
