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

import faiss
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


def candidate_margin(k: int) -> int:
    """Candidates fetched beyond ``k`` before the exact rescoring (``exact_search``, Flat
    indexes): a selection scored in another summation order may differ from the final
    scores in the last bits, so a passage near the k-th score may rank just below it."""
    return max(16, int(k) // 4)


def pair_scores(queries: np.ndarray, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products of each query with the table rows it names: the scores that
    ``exact_search`` and a Flat ``faiss_index.DenseIndex`` return.

    One float32 dot product per pair, by FAISS's ``fvec_inner_products_by_idx``: its
    summation order depends on D alone, so a (query, passage) pair scores the same in any
    block, shard, index size or process (a float32 BLAS product sums in an order that
    depends on the matrices' shapes: OpenBLAS's kernels on some CPUs). Processes that
    compare scores must run the same FAISS build on CPUs of the same SIMD level
    (``faiss.get_compile_options()``), as hosts of one pod do.

    Args:
      queries: [Q, D] query embeddings.
      table: [N, D] passage embeddings (a C-contiguous float32 array is used in place,
        e.g. a numpy view of a Flat index's storage).
      rows: [Q, C] rows of ``table`` per query; -1 for none.
    Returns:
      float32 [Q, C]; -inf where the row is -1 or the product is NaN.
    """
    q = np.ascontiguousarray(queries, np.float32)
    t = np.ascontiguousarray(table, np.float32)
    r = np.ascontiguousarray(rows, np.int64)
    if q.ndim != 2 or t.ndim != 2 or r.ndim != 2 or len(r) != len(q) or q.shape[1] != t.shape[1]:
        raise ValueError(f"pair_scores needs queries [Q, D], table [N, D], rows [Q, C]; got "
                         f"{q.shape}, {t.shape}, {r.shape}")
    if r.size and r.max() >= len(t):
        raise ValueError(f"row {r.max()} is out of the table's {len(t)} rows")
    out = np.empty(r.shape, np.float32)
    if out.size:
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(q),
                                         faiss.swig_ptr(t), faiss.swig_ptr(r),
                                         q.shape[1], r.shape[0], r.shape[1])
    out[np.isnan(out)] = -np.inf  # a diverged model's NaN ranks last, not nowhere
    return out


def exact_search(queries: np.ndarray, passages: np.ndarray, k: int,
                 block_size: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, streaming over blocks of ``block_size`` passages.

    Each block is scored with one matrix product (float64 sums of the float32 inputs,
    rounded to float32: equal scores stay equal in blocks of any shape); its top
    ``k + candidate_margin(k)`` (np.argpartition-style, O(Q * block)) are rescored by
    ``pair_scores`` and merged with the running top-k, ties broken by the lower passage
    row. So the scores are ``pair_scores``' (the same as a Flat index's, over a shard, a
    block or the whole table, in any process), and results do not depend on
    ``block_size``, barring more than ``candidate_margin(k)`` passages within a few float32
    ulps of the k-th score. Non-finite embeddings score -inf (rank last).

    Args:
      queries: [Q, D] query embeddings.
      passages: [P, D] passage embeddings (a np.memmap works; blocks are read in turn).
      k: results per query, clamped to P.
      block_size: passages scored at a time.
    Returns:
      (rows, scores): int64 [Q, k] passage rows and float32 [Q, k] scores, best first.
    """
    queries = np.ascontiguousarray(queries, np.float32)
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
        block = np.ascontiguousarray(passages[start:start + block_size], np.float32)
        scores = (queries64 @ block.T.astype(np.float64)).astype(np.float32)  # [Q, B]
        scores[np.isnan(scores)] = -np.inf
        cols = _block_topk(scores, min(k + candidate_margin(k), scores.shape[1]))
        rows = np.concatenate([best_rows, cols.astype(np.int64) + start], axis=1)
        vals = np.concatenate([best_scores, pair_scores(queries, block, cols)], axis=1)
        order = np.lexsort((rows, -vals), axis=-1)[:, :k]  # score desc, then row asc
        best_rows = np.take_along_axis(rows, order, axis=1)
        best_scores = np.take_along_axis(vals, order, axis=1)
    return best_rows, best_scores


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
