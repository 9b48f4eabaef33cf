"""Hard negatives from a ranking: the filter BM25 negatives (``data/bm25.py``) and dense
ANCE negatives (``index/mine.py``) share. Drops gold passages (and, by default, passages
of gold pages), then keeps the best ``num`` or samples ``num`` of the rest."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def filter_negatives(ranked_rows: np.ndarray, positives: Sequence[np.ndarray],
                     page_ids: Sequence[str], num: int, exclude_gold_pages: bool = True,
                     gold_pages: Optional[Sequence[Sequence[str]]] = None,
                     sample: bool = False,
                     rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Hard negatives from a ranking: non-gold passages, best first or sampled.

    Args:
      ranked_rows: [n, depth] passage rows, best first (negative entries are padding).
      positives: per query, the gold passage rows.
      page_ids: page id of every passage row.
      num: negatives per query.
      exclude_gold_pages: also skip passages of the gold pages.
      gold_pages: per query page ids; derived from ``positives`` when None.
      sample: draw ``num`` uniformly (without replacement) from the allowed passages of the
        ranking (ANCE) instead of taking the best ``num``; kept in rank order.
      rng: generator for ``sample`` (default: ``np.random.default_rng(0)``).
    Returns:
      int64 [n, num], -1 where fewer than ``num`` allowed passages exist in the ranking.
    """
    ranked_rows = np.asarray(ranked_rows)
    if len(positives) != len(ranked_rows):
        raise ValueError(f"{len(positives)} positive lists for {len(ranked_rows)} queries")
    if gold_pages is not None and len(gold_pages) != len(ranked_rows):
        raise ValueError(f"{len(gold_pages)} gold page lists for {len(ranked_rows)} queries")
    if sample and rng is None:
        rng = np.random.default_rng(0)
    out = np.full((len(ranked_rows), num), -1, np.int64)
    for i, (ranked, pos) in enumerate(zip(ranked_rows, positives)):
        bad = set(int(p) for p in np.asarray(pos).reshape(-1))
        if exclude_gold_pages:
            pages = set(gold_pages[i]) if gold_pages is not None else {page_ids[p] for p in bad}
        allowed = []
        for r in ranked:
            r = int(r)
            if r < 0 or r in bad or (exclude_gold_pages and page_ids[r] in pages):
                continue
            allowed.append(r)
            if not sample and len(allowed) == num:
                break
        if sample and len(allowed) > num:
            pick = np.sort(rng.choice(len(allowed), size=num, replace=False))
            allowed = [allowed[j] for j in pick]
        out[i, :len(allowed)] = allowed[:num]
    return out
