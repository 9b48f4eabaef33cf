"""Gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"): large contrastive batches on small memory, same loss and gradient.

1. Encode queries and passages chunk by chunk WITHOUT keeping activations.
2. Compute the contrastive loss and its gradient with respect to the embeddings only.
3. Re-encode chunk by chunk, back-propagating each chunk's embedding gradient into the
   parameters (a VJP per chunk), and sum.

Peak activation memory is one chunk's, not the batch's. With dropout, each chunk gets the
same RNG (``fold_in(rng, chunk)``) in both passes, so the result equals the uncached
gradient of the same computation.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

EncodeFn = Callable[[Any, Any, Optional[jax.Array]], jax.Array]  # (params, inputs, rng) -> [n, D]


def _chunk(tree: Any, chunk_size: int) -> Tuple[Any, int]:
    n = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if n % chunk_size:
        raise ValueError(f"gradient cache: {n} rows do not split into chunks of {chunk_size}")
    return jax.tree_util.tree_map(lambda x: x.reshape((n // chunk_size, chunk_size) + x.shape[1:]),
                                  tree), n // chunk_size


def _chunk_rngs(rng: Optional[jax.Array], n: int) -> Optional[jax.Array]:
    return None if rng is None else jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))


def _embed(encode: EncodeFn, params: Any, chunks: Any, rngs: Optional[jax.Array]) -> jax.Array:
    def one(xs):
        c, r = xs
        return encode(params, c, r)
    out = jax.lax.map(one, (chunks, rngs))
    return out.reshape((-1,) + out.shape[2:])


def _backprop(encode: EncodeFn, params: Any, grads: Any, chunks: Any, rngs: Optional[jax.Array],
              emb_grads: jax.Array) -> Any:
    emb_grads = emb_grads.reshape((jax.tree_util.tree_leaves(chunks)[0].shape[0], -1)
                                  + emb_grads.shape[1:])

    def step(acc, xs):
        c, r, g = xs
        out, vjp = jax.vjp(lambda p: encode(p, c, r), params)
        # the cotangent in the embeddings' own dtype (bfloat16 with a bf16 model)
        return jax.tree_util.tree_map(jnp.add, acc, vjp(g.astype(out.dtype))[0]), None

    return jax.lax.scan(step, grads, (chunks, rngs, emb_grads))[0]


def cached_value_and_grad(embedding_loss: Callable[[jax.Array, jax.Array], jax.Array],
                          encode_queries: EncodeFn, encode_passages: EncodeFn, params: Any,
                          query_inputs: Any, passage_inputs: Any, chunk_size: int,
                          rng: Optional[jax.Array] = None,
                          has_aux: bool = False) -> Tuple[Any, Any]:
    """Loss and parameter gradient of ``embedding_loss(encode_q(...), encode_p(...))``.

    Args:
      embedding_loss: (query embeddings [Nq, D], passage embeddings [Np, D]) -> scalar.
      encode_queries, encode_passages: (params, inputs chunk, rng or None) -> [chunk, D].
      params: the parameters to differentiate.
      query_inputs, passage_inputs: pytrees with leading axes Nq and Np, multiples of
        ``chunk_size`` (e.g. ``(input_ids, attention_mask)``).
      chunk_size: rows encoded at once.
      rng: dropout key (None: deterministic encoders).
      has_aux: ``embedding_loss`` returns ``(loss, aux)`` (as ``jax.value_and_grad``'s).
    Returns:
      (loss, grads) equal to ``jax.value_and_grad`` of the uncached computation
      (``((loss, aux), grads)`` with ``has_aux``).
    """
    q_chunks, nq = _chunk(query_inputs, chunk_size)
    p_chunks, np_ = _chunk(passage_inputs, chunk_size)
    rq, rp = (None, None) if rng is None else jax.random.split(rng)
    rq, rp = _chunk_rngs(rq, nq), _chunk_rngs(rp, np_)
    frozen = jax.lax.stop_gradient(params)
    q_emb = _embed(encode_queries, frozen, q_chunks, rq)
    p_emb = _embed(encode_passages, frozen, p_chunks, rp)
    loss, (gq, gp) = jax.value_and_grad(embedding_loss, argnums=(0, 1),
                                        has_aux=has_aux)(q_emb, p_emb)
    grads = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    grads = _backprop(encode_queries, params, grads, q_chunks, rq, gq)
    grads = _backprop(encode_passages, params, grads, p_chunks, rp, gp)
    grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
    return loss, grads
