"""The validation candidate pool: what periodic validation ranks, so that its cost does not
grow with the corpus.

    pool = candidate_pool(table, dev, bm25, size=100_000, bm25_depth=10, seed=0)
    validate(model, params, tokenizer, pool.table, dev)   # labelled with pool.info

Validating on KILT's 36M passages would encode the whole corpus every ``eval_every``
steps. The pool is a fixed, seeded subset of the passage table instead:

1. every passage of every gold page of the dev queries (page-level R-precision counts
   pages, so a gold page must be retrievable; its gold paragraphs are among them);
2. each dev query's BM25 top ``bm25_depth`` (the distractors a retriever must beat);
3. random passages (seeded) up to ``size``.

The same data, settings and seed give the same pool. Figures on a pool are higher than on
the full corpus (fewer distractors) and are labelled as such (``info``); the full-corpus
figures come from the retrieval CLI (``python -m multiret_jax.retrieve``). With ``size``
None or at least the table's size, the pool is the whole table (``info["kind"] == "full"``).
When the gold and BM25 passages alone exceed ``size`` they are all kept (logged): the pool
is then larger than asked.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.kilt import KiltRecord
from multiret_jax.data.passages import PassageTable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CandidatePool:
    """``rows``: sorted rows of the full table; ``table``: those passages;
    ``info``: what the pool holds (``kind`` "pool" or "full", ``passages``,
    ``corpus_passages``, ``gold``, ``bm25``, ``random``, ``bm25_depth``, ``seed``)."""

    rows: np.ndarray
    table: PassageTable
    info: Dict[str, Any]

    def label(self) -> str:
        """``"pool of 100,000 of 36,000,000 passages"`` or ``"full corpus, N passages"``."""
        i = self.info
        if i["kind"] == "full":
            return f"full corpus, {i['passages']:,} passages"
        return f"pool of {i['passages']:,} of {i['corpus_passages']:,} passages"


def gold_page_rows(table: PassageTable, records: Sequence[KiltRecord]) -> np.ndarray:
    """Rows of every passage of every page named by the records' provenance."""
    pages = {p.wikipedia_id for r in records for s in r.provenance_sets() for p in s}
    parts = [table.rows_of_page(p) for p in sorted(pages)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def random_rows(n: int, count: int, exclude: np.ndarray, seed: int) -> np.ndarray:
    """``count`` distinct rows of ``range(n)`` outside ``exclude`` (sorted, unique),
    seeded; memory O(count), not O(n)."""
    if count <= 0:
        return np.zeros(0, np.int64)
    if count > n - len(exclude):
        raise ValueError(f"cannot draw {count} rows from {n - len(exclude)} left")
    rng = np.random.default_rng(seed)
    got = np.zeros(0, np.int64)
    while len(got) < count:
        draw = rng.integers(0, n, size=2 * (count - len(got)) + 16)
        draw = draw[~np.isin(draw, exclude) & ~np.isin(draw, got)]
        _, first = np.unique(draw, return_index=True)  # keep draw order among new rows
        got = np.concatenate([got, draw[np.sort(first)][:count - len(got)]])
    return np.sort(got)


def candidate_pool(table: PassageTable, dev: Mapping[str, Sequence[KiltRecord]],
                   bm25: Optional[BM25Cache], size: Optional[int], bm25_depth: int = 10,
                   seed: int = 0) -> CandidatePool:
    """The fixed validation pool of ``table`` for the dev records.

    Args:
      table: the full passage table.
      dev: task name -> dev records (records without input are skipped, as in validation).
      bm25: BM25 over ``table`` (its dev rankings are cached); None adds no BM25 passages.
      size: the pool's size; None (or >= ``len(table)``): the whole table.
      bm25_depth: BM25 passages per dev query.
      seed: the random passages' seed.
    Returns:
      A ``CandidatePool``.
    """
    n = len(table)
    if size is not None and size < 1:
        raise ValueError(f"the validation pool size must be positive, got {size}")
    if size is None or size >= n:
        return CandidatePool(np.arange(n, dtype=np.int64), table,
                             {"kind": "full", "passages": n, "corpus_passages": n})
    records = {t: [r for r in recs if r.input is not None] for t, recs in dev.items()}
    gold = gold_page_rows(table, [r for recs in records.values() for r in recs])
    ranked = [np.zeros(0, np.int64)]
    if bm25 is not None and bm25_depth > 0:
        for task, recs in records.items():
            rows = bm25.rankings(f"{task}-dev", [r.input for r in recs], k=100)
            ranked.append(rows[:, :bm25_depth].reshape(-1))
    required = np.union1d(gold, np.concatenate(ranked))
    required = required[required >= 0]
    extra = random_rows(n, size - len(required), required, seed)
    if len(required) > size:
        log.warning("validation pool: the dev queries' gold pages (%d passages) and BM25 top "
                    "%d (%d more) exceed the pool size %d; keeping them all", len(gold),
                    bm25_depth, len(required) - len(gold), size)
    rows = np.union1d(required, extra)
    info = {"kind": "pool", "passages": int(len(rows)), "corpus_passages": n,
            "gold": int(len(gold)), "bm25": int(len(required) - len(gold)),
            "random": int(len(extra)), "bm25_depth": int(bm25_depth), "seed": int(seed)}
    pool = CandidatePool(rows, table.select(rows), info)
    log.info("validation pool: %s (%d of gold pages, %d more from BM25 top %d, %d random)",
             pool.label(), info["gold"], info["bm25"], bm25_depth, info["random"])
    return pool
