"""BM25 over passages with bm25s: the baseline retriever and the source of hard negatives.

MT-DPR trains with one BM25 hard negative per query, TACO warms up with BM25 negatives
before its ANCE episodes. ``BM25Retriever`` indexes a :class:`PassageTable` (title + text
by default, as DPR does), searches in batches, maps passage rankings to page rankings
(de-duplicated in rank order, for KILT page-level metrics) and mines hard negatives:
top-ranked passages that are not gold (and, by default, not from a gold page).

Defaults k1=0.9, b=0.4 are Anserini/Pyserini's BM25 defaults used by the KILT and DPR
baselines; bm25s's own defaults are k1=1.5, b=0.75.
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import gin
import numpy as np
import Stemmer

from multiret_jax.data.negatives import filter_negatives
from multiret_jax.data.passages import PassageTable
from multiret_jax.outputs import blank_queries

log = logging.getLogger(__name__)


@gin.configurable
class BM25Retriever:
    """bm25s index over a passage table.

    Args:
      k1, b: BM25 parameters.
      method: bm25s scoring variant ("lucene", "robertson", "atire", "bm25l", "bm25+").
      stemmer: Snowball language for PyStemmer, or None for no stemming.
      stopwords: bm25s stopword list name ("en") or None.
      with_title: index ``title + text`` (True) or the text alone.
      n_threads: bm25s search threads (0: single-threaded; -1: all cores).
    """

    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene",
                 stemmer: Optional[str] = "english", stopwords: Optional[str] = "en",
                 with_title: bool = True, n_threads: int = 0):
        # bm25s is imported here, not at module level: importing it runs a JAX op when jax is
        # installed, which starts the backend (too early for jax.distributed.initialize).
        import bm25s
        from bm25s.tokenization import Tokenizer
        self.params = dict(k1=k1, b=b, method=method, stemmer=stemmer, stopwords=stopwords,
                           with_title=with_title)
        self.n_threads = n_threads
        self.tokenizer = Tokenizer(stemmer=Stemmer.Stemmer(stemmer) if stemmer else None,
                                   stopwords=stopwords or [])
        self.model = bm25s.BM25(k1=k1, b=b, method=method)
        self.table: Optional[PassageTable] = None
        self._page_index: Optional[np.ndarray] = None
        self._page_names: List[str] = []

    # -- building
    def index(self, table: PassageTable, show_progress: bool = True) -> "BM25Retriever":
        """Tokenizes and indexes every passage of ``table``."""
        if len(table) == 0:
            raise ValueError("cannot build a BM25 index over an empty passage table")
        self.tokenizer.reset_vocab()
        tokens = self.tokenizer.tokenize(table.contents(self.params["with_title"]),
                                         update_vocab=True, return_as="tuple",
                                         show_progress=show_progress)
        self.model.index(tokens, show_progress=show_progress)
        self._attach(table)
        return self

    def _attach(self, table: PassageTable) -> None:
        self.table = table
        names, inverse = np.unique(np.asarray(table.page_ids, dtype=object).astype(str),
                                   return_inverse=True)
        self._page_names, self._page_index = list(names), inverse.astype(np.int64)

    def save(self, directory: str) -> None:
        """Saves the index (bm25s numpy/json files, no pickle) with the table checksum."""
        self._check_indexed()
        self.model.save(directory, show_progress=False)
        self.tokenizer.save_vocab(directory)
        self.tokenizer.save_stopwords(directory)
        with open(os.path.join(directory, "multiret_bm25.json"), "w") as f:
            json.dump({"params": self.params, "passage_checksum": self.table.checksum,
                       "num_passages": len(self.table)}, f, indent=1)

    @classmethod
    def load(cls, directory: str, table: PassageTable, n_threads: int = 0,
             mmap: bool = False) -> "BM25Retriever":
        """Loads a saved index (``mmap``: its arrays memory-mapped, read as searched);
        refuses one built over another passage table."""
        meta_path = os.path.join(directory, "multiret_bm25.json")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["passage_checksum"] != table.checksum:
            raise ValueError(f"{meta_path}: index was built over passage table "
                             f"{meta['passage_checksum'][:12]}, not {table.checksum[:12]}")
        self = cls(**meta["params"], n_threads=n_threads)
        self.model = type(self.model).load(directory, mmap=mmap, show_progress=False)
        self.tokenizer.load_vocab(directory)
        self.tokenizer.load_stopwords(directory)
        self._attach(table)
        return self

    def _check_indexed(self) -> None:
        if self.table is None:
            raise RuntimeError("BM25Retriever: call index(table) or load() first")

    # -- searching
    def search(self, queries: Sequence[str], k: int = 100,
               show_progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k passages per query.

        Args:
          queries: query strings.
          k: passages per query (clamped to the table size).
        Returns:
          (rows, scores): int64 [n, k] passage rows and float32 [n, k] scores, best first.
        """
        self._check_indexed()
        k = min(k, len(self.table))
        if not queries:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        tokens = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids",
                                         show_progress=False)
        rows, scores = self.model.retrieve(tokens, k=k, show_progress=show_progress,
                                           n_threads=self.n_threads)
        _warn_unmatched(queries, scores)
        return rows.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    def page_ranking(self, rows: np.ndarray, k_pages: Optional[int] = None) -> List[List[str]]:
        """Per query, the pages of ranked passages de-duplicated in rank order."""
        self._check_indexed()
        names = self._page_names
        return [[names[p] for p in list(dict.fromkeys(prow))[:k_pages]]
                for prow in self._page_index[rows].tolist()]

    def hard_negatives(self, rows: np.ndarray, positives: Sequence[np.ndarray],
                       num: int = 1, exclude_gold_pages: bool = True,
                       gold_pages: Optional[Sequence[Sequence[str]]] = None) -> np.ndarray:
        """Top-ranked non-gold passages per query (BM25 negatives of DPR/MT-DPR/TACO).

        Args:
          rows: [n, depth] ranked passage rows from ``search``.
          positives: per query, the gold passage rows.
          num: negatives per query.
          exclude_gold_pages: also skip passages of the gold pages (default: a passage of
            the gold page may still contain the evidence).
          gold_pages: per query page ids; derived from ``positives`` when None.
        Returns:
          int64 [n, num], -1 where fewer than ``num`` negatives exist within ``depth``.
        """
        self._check_indexed()
        return filter_negatives(rows, positives, self.table.page_ids, num,
                                exclude_gold_pages, gold_pages)


def _warn_unmatched(queries: Sequence[str], scores: np.ndarray) -> None:
    """Logs how many queries are blank, or share no term with the corpus: BM25 scores every
    passage 0 for them, and their "ranking" is the table order."""
    blank = blank_queries(range(len(queries)), queries)
    skip = set(blank)
    zero = ([int(i) for i in np.flatnonzero(scores[:, 0] <= 0) if int(i) not in skip]
            if scores.size else [])
    if blank or zero:
        log.warning("BM25: %d empty or blank queries (positions %s) and %d more with no "
                    "term in the corpus (positions %s): every passage scores 0 for them, "
                    "their rankings are the table order", len(blank), blank[:10], len(zero),
                    zero[:10])
