"""Text -> embeddings with a bi-encoder: jitted, length-bucketed, in the caller's order.

    emb = encode_passages_of(model, params, tokenizer, table)      # [P, D], table row order
    q = encode_queries_of(model, params, tokenizer, get_task("nq"), texts, marker="prefix")
    emb = encode_texts(fn, tokenizer, texts, max_len=128)          # any (ids, mask) -> [B, D]

The one encoding path that validation, ANCE mining, corpus indexing (``index/encode.py``)
and retrieval (``retrieve.py``) share, so a query or passage is formatted, truncated and
encoded the same way everywhere. Texts are sorted by token length and encoded in
fixed-size batches padded to multiples of ``BUCKET`` tokens, so jit compiles at most
``max_len / BUCKET`` shapes per encoder; parameters are a jit argument (not a constant),
so the compiled functions (``jitted_encoders``, cached per model) are reused across calls.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import Task, query_format
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.models.biencoder import BiEncoder

BUCKET = 16  # token lengths are padded to multiples of this


def bucket_length(longest: int, max_len: int) -> int:
    """The padded length of a batch whose longest text has ``longest`` tokens: a multiple
    of ``BUCKET`` (at least one), capped at ``max_len``."""
    return min(max_len, max(BUCKET, -(-int(longest) // BUCKET) * BUCKET))


def is_jitted(fn: Any) -> bool:
    """Whether ``fn`` is already jitted (a ``functools.partial`` of a jitted function
    counts), so callers do not wrap it in ``jax.jit`` again."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return hasattr(fn, "lower")


def encode_texts(encode_fn: Callable[[Any, Any], Any], tokenizer: Tokenization,
                 texts: Sequence[str], max_len: int, batch_size: int = 64,
                 desc: str = "encode", progress: bool = True) -> np.ndarray:
    """Embeddings float32 [N, D] of ``texts``, in the given order.

    Args:
      encode_fn: ``(input_ids, attention_mask) -> [B, D]``; jitted here unless it already
        is (a ``functools.partial`` of a jitted function counts, e.g. params bound first).
      tokenizer: the tokenization.
      texts: strings to encode.
      max_len: truncation length in tokens.
      batch_size: rows per call; the last batch is padded (with copies of its last row)
        so every call has ``batch_size`` rows.
      desc, progress: tqdm label / switch.
    """
    n = len(texts)
    if n == 0:
        raise ValueError("encode_texts: no texts")
    fn = encode_fn if is_jitted(encode_fn) else jax.jit(encode_fn)
    ids, mask = tokenizer.encode(texts, max_len, pad_to_multiple_of=BUCKET)
    lengths = mask.sum(axis=1)
    order = np.argsort(-lengths, kind="stable")  # longest first: the slowest shapes up front
    out: Optional[np.ndarray] = None
    with tqdm(total=n, desc=desc, unit=" texts", disable=not progress, mininterval=2,
              leave=False) as bar:
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < batch_size:
                rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
            length = bucket_length(lengths[rows].max(), max_len)
            emb = np.asarray(fn(jnp.asarray(ids[rows, :length]), jnp.asarray(mask[rows, :length])),
                             np.float32)
            real = min(batch_size, n - start)
            if out is None:
                out = np.zeros((n, emb.shape[-1]), np.float32)
            out[order[start:start + real]] = emb[:real]
            bar.update(real)
    return out


# Jitted encoders per model, with params (and the query tower) as arguments.
_JITTED: "weakref.WeakKeyDictionary[BiEncoder, Dict[str, Callable]]" = weakref.WeakKeyDictionary()


def jitted_encoders(model: BiEncoder) -> Dict[str, Callable]:
    """``{"passage": (params, ids, mask) -> emb, "query": (params, tower, ids, mask) -> emb}``,
    jitted once per model."""
    if model not in _JITTED:
        ref = weakref.ref(model)  # no strong reference from the cache value to its key
        _JITTED[model] = {
            "passage": jax.jit(lambda p, i, m: ref().encode_passages(p, i, m)),
            "query": jax.jit(lambda p, t, i, m: ref().encode_queries(p, i, m, tower=t)),
        }
    return _JITTED[model]


def encode_passages_of(model: BiEncoder, params: Any, tokenizer: Tokenization,
                       table: PassageTable, passage_len: int = 128, batch_size: int = 64,
                       progress: bool = True) -> np.ndarray:
    """Float32 [P, D] embeddings of every passage of ``table`` (title + text), in row order."""
    return encode_texts(functools.partial(jitted_encoders(model)["passage"], params), tokenizer,
                        table.contents(), passage_len, batch_size, desc="passages",
                        progress=progress)


def encode_queries_of(model: BiEncoder, params: Any, tokenizer: Tokenization, task: Task,
                      texts: Sequence[str], marker: str = "prefix",
                      query_len: Optional[int] = None, batch_size: int = 64,
                      desc: Optional[str] = None, progress: bool = True) -> np.ndarray:
    """Float32 [N, D] query embeddings of one task's raw inputs, formatted and encoded
    exactly as training and validation see them: written by the ``QueryFormat``
    (dataset prefix / task-type marker), truncated to the task's query length
    (``Tokenization.query_length``) capped by ``query_len``, through ``task``'s query
    tower. Validation, ANCE mining and
    ``retrieve.py`` all encode queries through here.

    Args:
      model, params, tokenizer: the bi-encoder, its parameters and tokenization.
      task: the queries' task.
      texts: raw KILT ``input`` strings.
      marker: a ``QueryFormat`` or a marker name ("prefix", "type" or "none").
      query_len: cap on the task's query length (e.g. the model's position limit).
      batch_size, desc, progress: see ``encode_texts``.
    """
    tower = jnp.asarray(model.tower_index(task), jnp.int32)
    fmt = query_format(marker)
    return encode_texts(functools.partial(jitted_encoders(model)["query"], params, tower),
                        tokenizer, [fmt.text(task, t) for t in texts],
                        tokenizer.query_length(task, fmt, query_len), batch_size,
                        desc=desc or f"{task.name} queries", progress=progress)
