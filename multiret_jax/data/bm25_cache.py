"""BM25 once per (corpus, settings): the index, the training queries' hard negatives and
the dev queries' rankings are computed the first time and reused by every resume and
every later run over the same data.

    cache = BM25Cache("/data/kilt/.bm25_cache", table)
    negs = cache.hard_negatives("nq", examples, num=2)   # int64 [N, 2], -1 padded
    rows = cache.rankings("nq-dev", queries, k=100)      # int64 [Q, 100]

Layout: ``<cache_dir>/<table checksum[:16]>-<settings hash[:8]>/`` holds

- ``index/``: the bm25s index (numpy / JSON files, ``BM25Retriever.save``), built only
  when some result is missing, loaded memory-mapped otherwise;
- ``<kind>-<name>-<key[:16]>.npy`` with ``<same>.json`` beside it: the result array and
  its manifest (the array's sha256 and shape, the key's inputs). The key hashes everything
  the result depends on: the passage table's checksum, the BM25 settings, the depth and
  the filter settings, and every query with its gold passages and pages, so changed data
  or settings can never load a stale file. A file whose sha256 does not match is reported
  and computed again.

Memory is bounded by streaming the queries: ``query_block`` queries are searched at a time
and only their filtered negatives (``[block, num]``) are kept. Every file is written
atomically (temporary file, then ``os.replace``), so concurrent runs or processes sharing
the cache at worst compute the same result twice.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
from tqdm import tqdm

from multiret_jax.checksums import file_sha256
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.passages import PassageTable

log = logging.getLogger(__name__)

FORMAT = "multiret_jax.data.bm25_cache/1"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def queries_digest(queries: Sequence[str], positives: Optional[Sequence[np.ndarray]] = None,
                   gold_pages: Optional[Sequence[Sequence[str]]] = None) -> str:
    """sha256 over every query (and its gold passage rows and pages, when given), in order."""
    h = hashlib.sha256()
    for i, q in enumerate(queries):
        h.update(q.encode("utf-8"))
        h.update(b"\0")
        if positives is not None:
            h.update(np.asarray(positives[i], np.int64).tobytes())
            h.update(b"\1")
        if gold_pages is not None:
            h.update("\x1f".join(gold_pages[i]).encode("utf-8"))
            h.update(b"\2")
    h.update(str(len(queries)).encode())
    return h.hexdigest()


class BM25Cache:
    """BM25 results of one passage table, computed once and kept on disk.

    Args:
      cache_dir: the cache's root (shared by runs; created).
      table: the passage table searched.
      bm25_params: ``BM25Retriever`` settings (default: its defaults).
      query_block: queries searched at a time (bounds memory).
      progress: tqdm bars over the queries.
    """

    def __init__(self, cache_dir: str, table: PassageTable,
                 bm25_params: Optional[Dict[str, Any]] = None, query_block: int = 8192,
                 progress: bool = True):
        if query_block < 1:
            raise ValueError(f"query_block must be positive, got {query_block}")
        self.root, self.table = cache_dir, table
        self.query_block, self.progress = query_block, progress
        self.bm25_params = dict(bm25_params or {})
        settings = BM25Retriever(**self.bm25_params).params  # with the defaults filled in
        self.settings = {"format": FORMAT, "table_checksum": table.checksum,
                         "num_passages": len(table), "bm25": settings}
        self.dir = os.path.join(cache_dir, f"{table.checksum[:16]}-{_digest(self.settings)[:8]}")
        self._retriever: Optional[BM25Retriever] = None
        self.computed: list = []  # files this instance wrote (the others were reused)

    # -- the index
    @property
    def retriever(self) -> BM25Retriever:
        """The BM25 index: loaded from the cache, else built and saved there."""
        if self._retriever is None:
            index_dir = os.path.join(self.dir, "index")
            if os.path.isfile(os.path.join(index_dir, "multiret_bm25.json")):
                log.info("BM25: loading the index from %s", index_dir)
                self._retriever = BM25Retriever.load(index_dir, self.table, mmap=True)
            else:
                log.info("BM25: indexing %d passages (once; kept in %s)", len(self.table),
                         index_dir)
                self._retriever = BM25Retriever(**self.bm25_params).index(
                    self.table, show_progress=self.progress)
                self._save_index(index_dir)
        return self._retriever

    def release(self) -> None:
        """Drops the index from memory (a later use loads the saved one, memory-mapped):
        at 36M passages it holds ~35 GiB, which training has no use for."""
        self._retriever = None
        gc.collect()

    def _save_index(self, index_dir: str) -> None:
        tmp = f"{index_dir}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._retriever.save(tmp)
        try:
            os.rename(tmp, index_dir)
        except OSError:  # another process saved it first: theirs is the same index
            shutil.rmtree(tmp, ignore_errors=True)

    # -- results
    def rankings(self, name: str, queries: Sequence[str], k: int = 100) -> np.ndarray:
        """int64 [Q, k] passage rows best first (BM25 dev rankings), cached."""
        key = {"kind": "rankings", "k": int(k), "queries": queries_digest(queries)}
        return self._cached("rankings", name, key, queries, lambda rows, lo, hi: rows, k)

    def hard_negatives(self, name: str, examples: Sequence[Any], num: int, depth: int = 100,
                       exclude_gold_pages: bool = True) -> np.ndarray:
        """Top-ranked non-gold passages (``BM25Retriever.hard_negatives``) of training
        examples (``query``, ``positives``, ``gold_pages``), cached.

        Returns:
          int64 [N, num], -1 where fewer than ``num`` negatives are within ``depth``.
        """
        queries = [e.query for e in examples]
        positives = [np.asarray(e.positives) for e in examples]
        gold = [list(e.gold_pages) for e in examples]
        key = {"kind": "negatives", "num": int(num), "depth": int(depth),
               "exclude_gold_pages": bool(exclude_gold_pages),
               "queries": queries_digest(queries, positives, gold)}

        def negatives(rows, lo, hi):
            return self.retriever.hard_negatives(rows, positives[lo:hi], num,
                                                 exclude_gold_pages, gold[lo:hi])
        return self._cached("negatives", name, key, queries, negatives, depth)

    def _cached(self, kind: str, name: str, key: Dict[str, Any], queries: Sequence[str],
                reduce: Callable[[np.ndarray, int, int], np.ndarray], k: int) -> np.ndarray:
        """``reduce(rows, lo, hi)`` of the top-``k`` rankings of ``queries[lo:hi]``, block
        by block, concatenated; loaded from the cache when there, else computed and saved."""
        n = len(queries)
        digest = _digest({**self.settings, **key})
        path = os.path.join(self.dir, f"{kind}-{_safe(name)}-{digest[:16]}.npy")
        out = self._load(path, digest, n)
        if out is not None:
            log.info("BM25 %s of %s: reused %s", kind, name, path)
            return out
        parts = []
        with tqdm(total=n, desc=f"BM25 {kind} {name}", unit=" queries", mininterval=2,
                  disable=not self.progress) as bar:
            for lo in range(0, n, self.query_block):
                hi = min(n, lo + self.query_block)
                rows, _ = self.retriever.search(queries[lo:hi], k=k, show_progress=False)
                parts.append(np.asarray(reduce(rows, lo, hi), np.int64))
                bar.update(hi - lo)
        width = parts[0].shape[1] if parts else min(k, len(self.table))
        out = np.concatenate(parts) if parts else np.zeros((0, width), np.int64)
        self._save(path, out, digest, {**key, "name": name})
        return out

    def _load(self, path: str, digest: str, n: int) -> Optional[np.ndarray]:
        meta_path = path[:-4] + ".json"
        if not (os.path.isfile(path) and os.path.isfile(meta_path)):
            return None
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            problem = ("another key" if meta.get("key_sha256") != digest else
                       "its sha256 differs from the manifest's (modified or truncated)"
                       if file_sha256(path) != meta.get("sha256") else None)
            arr = None if problem else np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            problem, arr = f"unreadable ({e})", None
        if arr is not None and (arr.ndim != 2 or len(arr) != n):
            problem = f"shape {arr.shape} for {n} queries"
        if problem:
            log.warning("BM25 cache: %s is invalid (%s); computing it again", path, problem)
            return None
        return arr

    def _save(self, path: str, arr: np.ndarray, digest: str, key: Dict[str, Any]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        meta = {"format": FORMAT, "key_sha256": digest, "sha256": file_sha256(tmp),
                "shape": list(arr.shape), "dtype": str(arr.dtype), "key": key,
                "settings": self.settings}
        with open(f"{tmp}.json", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(f"{tmp}.json", path[:-4] + ".json")  # manifest first: checked on load
        os.replace(tmp, path)
        self.computed.append(path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._=" else "_" for c in name) or "task"
