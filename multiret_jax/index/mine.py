"""Exact dense search and hard-negative mining for ANCE episodes (TACO).

After the BM25 warm-up, every TACO episode re-encodes the corpus with the current model
and mines hard negatives: top-ranked passages that are not gold (and, by default, not from
a gold page). ``exact_search`` is an exact inner-product top-k in numpy that streams over
passage blocks, so memory is O(Q * block_size + Q * k) rather than O(Q * P);
``mine_negatives`` searches to ``depth`` and hands the ranking to ``filter_negatives``
(``data/negatives.py``), which ``BM25Retriever.hard_negatives`` shares. It searches passage
embeddings exactly or any index with ``search(queries, k)`` (a FAISS ``DenseIndex``: HNSW /
IVF for corpora too large for exact search)::

    negs = mine_negatives(q, passage_emb, positives, table.page_ids, num=2, depth=100)
    index = faiss_index.build_index(lambda: iter_shards(emb_dir, table), "HNSW32")
    negs = mine_negatives(q, index, positives, table.page_ids, num=2, depth=200, sample=True)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from multiret_jax.data.negatives import filter_negatives

# Passage embeddings [P, D], an object with ``search(queries, k) -> (rows, scores)`` (a
# ``faiss_index.DenseIndex``), or such a search function.
Searcher = Union[np.ndarray, Any, Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]]


def _block_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices [Q, k] of the k best scores per row, ties to the lower column.

    Not sorted. Deterministic: of the entries equal to the k-th best score, the lowest
    columns are kept.
    """
    n = scores.shape[1]
    if k >= n:
        return np.broadcast_to(np.arange(n), scores.shape).copy()
    thr = np.partition(scores, n - k, axis=1)[:, n - k][:, None]  # k-th largest per row
    above = scores > thr
    ties = scores == thr
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (ties & (np.cumsum(ties, axis=1) <= need))
    return np.nonzero(keep)[1].reshape(scores.shape[0], k)


def exact_search(queries: np.ndarray, passages: np.ndarray, k: int,
                 block_size: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, streaming over blocks of ``block_size`` passages.

    Each block's top-k (np.argpartition-style, O(Q * block)) is merged with the running
    top-k; ties are broken by the lower passage row, so results do not depend on
    ``block_size``. NaN scores (non-finite embeddings) rank below every number.

    Scores are inner products accumulated in float64 and rounded to float32. A float32
    BLAS product sums in an order that depends on the matrices' shapes (OpenBLAS's
    kernels on some CPUs), so the same (query, passage) pair would score differently in
    a block of another size, a shard or another process; float64 products of float32
    inputs are exact and the rounded sums agree (barring a sum within ~1e-16 relative of
    a float32 rounding boundary), so the search over shards, merged, equals this one.

    Args:
      queries: [Q, D] query embeddings.
      passages: [P, D] passage embeddings (a np.memmap works; blocks are read in turn).
      k: results per query, clamped to P.
      block_size: passages scored at a time.
    Returns:
      (rows, scores): int64 [Q, k] passage rows and float32 [Q, k] scores, best first.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or np.ndim(passages) != 2:
        raise ValueError(f"queries and passages must be 2-D, got shapes "
                         f"{queries.shape} and {np.shape(passages)}")
    if queries.shape[1] != passages.shape[1]:
        raise ValueError(f"embedding dimension mismatch: queries have {queries.shape[1]}, "
                         f"passages have {passages.shape[1]}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_q, num_p = queries.shape[0], passages.shape[0]
    k = max(0, min(int(k), num_p))
    best_rows = np.zeros((num_q, 0), np.int64)
    best_scores = np.zeros((num_q, 0), np.float32)
    if k == 0 or num_q == 0:
        return np.zeros((num_q, k), np.int64), np.zeros((num_q, k), np.float32)
    queries64 = queries.astype(np.float64)
    for start in range(0, num_p, block_size):
        block = np.asarray(passages[start:start + block_size], np.float32)
        scores = (queries64 @ block.T.astype(np.float64)).astype(np.float32)  # [Q, B]
        scores[np.isnan(scores)] = -np.inf  # a diverged model's NaN ranks last, not nowhere
        cols = _block_topk(scores, min(k, scores.shape[1]))
        rows = np.concatenate([best_rows, cols.astype(np.int64) + start], axis=1)
        vals = np.concatenate([best_scores, np.take_along_axis(scores, cols, axis=1)], axis=1)
        order = np.lexsort((rows, -vals), axis=-1)[:, :k]  # score desc, then row asc
        best_rows = np.take_along_axis(rows, order, axis=1)
        best_scores = np.take_along_axis(vals, order, axis=1)
    return best_rows, best_scores.astype(np.float32, copy=False)


def pair_scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Inner products of each query with its own candidates, as ``exact_search`` scores.

    Args:
      queries: [Q, D] query embeddings.
      candidates: [Q, C, D] each query's candidate passage embeddings.
    Returns:
      float32 [Q, C]: accumulated in float64 and rounded, so a pair scores the same here,
      in ``exact_search`` over any block of passages, and in any process.
    """
    q = np.asarray(queries, np.float64)[:, :, None]  # [Q, D, 1]
    return np.matmul(np.asarray(candidates, np.float64), q)[..., 0].astype(np.float32)


def search_rows(query_emb: np.ndarray, passages: Searcher, depth: int,
                block_size: int = 65536) -> np.ndarray:
    """Passage rows [Q, <= depth] ranked best first (-1: padding) by any ``Searcher``.

    Args:
      query_emb: [Q, D] query embeddings.
      passages: [P, D] passage embeddings (exact search, streamed in ``block_size``
        blocks), or an object with ``search(queries, k) -> (rows, scores)`` such as a
        ``faiss_index.DenseIndex`` (rows are its global rows), or a callable
        ``(queries, k) -> (rows, scores)``.
      depth: results per query.
    """
    if callable(getattr(passages, "search", None)):
        rows, _ = passages.search(query_emb, depth)
    elif callable(passages):
        rows, _ = passages(query_emb, depth)
    else:
        rows, _ = exact_search(query_emb, passages, depth, block_size=block_size)
    rows = np.asarray(rows)
    if rows.ndim != 2 or len(rows) != len(query_emb):
        raise ValueError(f"search returned rows of shape {rows.shape} for {len(query_emb)} queries")
    return rows


def mine_negatives(query_emb: np.ndarray, passages: Searcher,
                   positives: Sequence[np.ndarray], page_ids: Sequence[str], num: int,
                   depth: int = 100, exclude_gold_pages: bool = True,
                   gold_pages: Optional[Sequence[Sequence[str]]] = None,
                   sample: bool = False, rng: Optional[np.random.Generator] = None,
                   block_size: int = 65536) -> np.ndarray:
    """Dense hard negatives (ANCE): search to ``depth``, drop gold, keep ``num``.

    Args:
      query_emb: [Q, D] query embeddings.
      passages: what to search (``search_rows``): [P, D] passage embeddings (exact
        search), a ``DenseIndex`` (e.g. HNSW for a large corpus; its rows must be rows of
        ``page_ids``: build it over the whole table, or shards with ``row_offset``) or a
        callable ``(queries, k) -> (rows, scores)``. A Flat index gives exactly the
        negatives of exact search (both break score ties to the lower row).
      positives: per query, the gold passage rows.
      page_ids: page id of every passage row (``PassageTable.page_ids``).
      num, depth: negatives per query, taken from the top ``depth`` (clamped to P).
      exclude_gold_pages, gold_pages, sample, rng: see ``filter_negatives``.
      block_size: passages scored at a time by exact search.
    Returns:
      int64 [Q, num], -1 padded.
    """
    if len(positives) != len(query_emb):
        raise ValueError(f"{len(positives)} positive lists for {len(query_emb)} queries")
    if hasattr(passages, "shape") and len(page_ids) != len(passages):
        raise ValueError(f"{len(page_ids)} page ids for {len(passages)} passages")
    if hasattr(passages, "ntotal") and passages.row_offset + passages.ntotal > len(page_ids):
        raise ValueError(f"index rows [{passages.row_offset}, "
                         f"{passages.row_offset + passages.ntotal}) exceed the {len(page_ids)} "
                         "page ids (an index of another passage table?)")
    rows = search_rows(query_emb, passages, depth, block_size)
    if rows.size and rows.max() >= len(page_ids):
        raise ValueError(f"search returned row {rows.max()} but there are {len(page_ids)} "
                         "page ids (an index of another passage table?)")
    return filter_negatives(rows, positives, page_ids, num, exclude_gold_pages, gold_pages,
                            sample=sample, rng=rng)
