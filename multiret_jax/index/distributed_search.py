"""Corpus encoding and dense search split across JAX processes, merged into one ranking.

    info = encode_share(passage_encoder(model, params), tokenizer, table, emb_dir,
                        fingerprint=params_fingerprint(params), shard_size=100_000)
    searcher = ShardSearcher(emb_dir, table)                # this process's shards
    rows, scores = searcher(query_emb, k=100)               # the same on every process

Each process encodes only its share of the corpus: job ``jax.process_index()`` of
``jax.process_count()`` in ``encode.encode_corpus`` (a contiguous block of whole shards,
its own manifest; resumable), then every process waits at a barrier until all shards are
written. Each process searches only its block of the directory's shards (``local_shards``:
block ``process_index`` of the shards of every job's manifest, so a directory written by
any number of encoding jobs works): exactly, shard by shard with ``mine.exact_search`` and
the shard's global row offset, or with a FAISS index of that spec over its shards
(``faiss_index.build_index`` with ``row_offset``). The partial top-k lists of all
processes are gathered (``multihost_utils.process_allgather``, in blocks of queries, after
a barrier: a gloo collective fails when a peer is more than 30 s late) and merged by
``merge_topk``: score descending, then row ascending, -1 padding last, the order of
``exact_search`` over the whole table. So exact search over the shards of any number of
processes gives exactly (rows and scores) what one process gives, as long as the shard
size is the same: the shards, and the per-shard searches, do not depend on the process
count. With one process nothing is gathered and no collective runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.index.shard_encoding import encode_corpus
from multiret_jax.index.faiss_index import DenseIndex, build_index
from multiret_jax.index.mine import exact_search
from multiret_jax.index.shards import job_shards, read_all_manifests, read_manifests, shard_problem
from multiret_jax.processes import barrier, is_main_process

log = logging.getLogger(__name__)

# How long a barrier after long uneven work (encoding or searching a share) waits for the
# slowest process.
LONG_WAIT_S = 7 * 24 * 3600
# Settings that make a scratch directory's shards useless (``encode_share(scratch=True)``).
_SCRATCH_KEYS = ("model_fingerprint", "table_checksum", "num_passages", "num_shards")


def merge_topk(rows: np.ndarray, scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of candidate lists: score descending, then row ascending, -1 last.

    The order of ``mine.exact_search`` over the whole table (NaN scores count as -inf), so
    merging the top-k of disjoint row ranges gives exactly the whole table's top-k.

    Args:
      rows: int [Q, M] candidate rows (-1: padding), any order, no row twice per query.
      scores: float [Q, M] their scores (that of a -1 row is ignored).
      k: results per query.
    Returns:
      (rows, scores): int64 [Q, k] and float32 [Q, k], best first, padded with -1 / -inf
      when there are fewer than ``k`` candidates.
    """
    rows, scores = np.asarray(rows, np.int64), np.asarray(scores, np.float32)
    if rows.ndim != 2 or rows.shape != scores.shape:
        raise ValueError(f"rows and scores must be [Q, M] arrays of one shape, got "
                         f"{rows.shape} and {scores.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if rows.shape[1] < k:
        pad = ((0, 0), (0, k - rows.shape[1]))
        rows = np.pad(rows, pad, constant_values=-1)
        scores = np.pad(scores, pad, constant_values=-np.inf)
    scores = np.where((rows < 0) | np.isnan(scores), np.float32(-np.inf), scores)
    key = np.where(rows < 0, np.iinfo(np.int64).max, rows)
    order = np.lexsort((key, -scores), axis=-1)[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def _clear_scratch(emb_dir: str, fingerprint: str, table: PassageTable, num_jobs: int) -> None:
    """Removes ``emb_dir`` when a manifest there is of another model, table or job count."""
    try:
        found = read_all_manifests(emb_dir) if os.path.isdir(emb_dir) else []
        want = {"model_fingerprint": fingerprint, "table_checksum": table.checksum,
                "num_passages": len(table), "num_shards": num_jobs}
        stale = [os.path.basename(p) for p, m in found
                 if any(m.get(k) != want[k] for k in _SCRATCH_KEYS)]
    except ValueError as e:  # an unreadable manifest
        stale = [str(e)]
    if stale:
        log.warning("%s: embeddings of another model, table or process count (%s); removed",
                    emb_dir, stale[0])
        shutil.rmtree(emb_dir)


def encode_share(encode_fn: Callable[[Any, Any], Any], tokenizer: Tokenization,
                 table: PassageTable, emb_dir: str, *, fingerprint: str, scratch: bool = False,
                 wait_s: int = LONG_WAIT_S, **encode_kwargs) -> Dict[str, Any]:
    """Encodes this process's share of ``table`` into ``emb_dir`` and waits for the others.

    Every process must call it. Process ``jax.process_index()`` is job ``process_index`` of
    ``jax.process_count()`` of ``encode.encode_corpus`` on its local devices; a rerun
    resumes (finished shards are verified and kept).

    Args:
      encode_fn: ``(input_ids, attention_mask) -> [B, D]`` (``encode.passage_encoder``).
      tokenizer, table: the tokenization and the passages.
      emb_dir: the shard directory, shared by the processes (created).
      fingerprint: the model's identity (``encode.params_fingerprint``).
      scratch: ``emb_dir`` is this caller's own working directory (an ANCE episode's):
        process 0 first removes it if it holds embeddings of another model, table or
        process count (a run resumed with other parameters), instead of an error.
      wait_s: how long the final barrier waits for the slowest process.
      **encode_kwargs: ``encode_corpus`` options (shard_size, batch_size, passage_len,
        dtype, overwrite, progress, metadata).
    Returns:
      This process's manifest with "encoded" and "reused" (``encode_corpus``).
    Raises:
      ValueError: ``emb_dir`` holds embeddings made otherwise (not ``scratch``, no
        ``overwrite``).
    """
    pid, count = jax.process_index(), jax.process_count()
    if scratch and is_main_process():
        _clear_scratch(emb_dir, fingerprint, table, count)
    barrier("encode_share_start")  # nobody writes into a directory being removed
    res = encode_corpus(encode_fn, tokenizer, table, emb_dir, fingerprint=fingerprint,
                        shard_id=pid, num_shards=count, devices=jax.local_devices(),
                        **encode_kwargs)
    log.info("%s: process %d of %d encoded shards %s, reused %s", emb_dir, pid, count,
             res["encoded"], res["reused"])
    barrier("encode_share_done", timeout_s=wait_s)
    return res


def local_shards(emb_dir: str, table: Optional[PassageTable] = None,
                 process_id: Optional[int] = None, num_processes: Optional[int] = None,
                 verify: bool = False) -> List[Dict[str, Any]]:
    """This process's shard entries: block ``process_id`` of ``num_processes`` (default
    this process's) of the directory's shards, in row order (contiguous rows).

    Args:
      emb_dir: a complete shard directory (every job finished, ``shards.read_manifests``).
      table: if given, must be the directory's table (checksum and size).
      process_id, num_processes: default ``jax.process_index()`` / ``jax.process_count()``.
      verify: check each shard's files (sha256, rows, ids against ``table``) first.
    Returns:
      Manifest entries (start, rows, emb_file, ...), possibly none.
    Raises:
      ValueError: naming the directory, for missing jobs, another table or a bad shard.
    """
    combined = read_manifests(emb_dir)
    if table is not None and (combined["table_checksum"] != table.checksum
                              or combined["num_passages"] != len(table)):
        raise ValueError(f"{emb_dir}: embeddings of another passage table (checksum "
                         f"{combined['table_checksum']}, this table's is {table.checksum})")
    pid = jax.process_index() if process_id is None else process_id
    count = jax.process_count() if num_processes is None else num_processes
    entries = [combined["shards"][i] for i in job_shards(len(combined["shards"]), 1, pid, count)]
    for e in entries if verify else ():
        want = None if table is None else np.asarray(table.ids[e["start"]:e["start"] + e["rows"]],
                                                     dtype=str)
        why = shard_problem(emb_dir, e, want, combined["dim"], combined["dtype"])
        if why:
            raise ValueError(f"{emb_dir}: shard at row {e['start']} is invalid: {why}")
    return entries


def _load(emb_dir: str, entry: Dict[str, Any]) -> np.ndarray:
    return np.load(os.path.join(emb_dir, entry["emb_file"]), mmap_mode="r", allow_pickle=False)


def allgather_topk(rows: np.ndarray, scores: np.ndarray, k: int,
                   query_block: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Every process's partial top-k merged (``merge_topk``), the same on every process.

    Every process must call it with the same shapes (the same queries). The lists are
    gathered ``query_block`` queries at a time, so memory is O(Q * k + processes *
    query_block * k); a barrier first lets slow searches finish before the first collective.

    Args:
      rows, scores: this process's [Q, k'] partial lists (rows global, -1 padding).
      k: results per query.
      query_block: queries gathered per collective.
    Returns:
      (rows, scores): int64 [Q, k], float32 [Q, k].
    """
    if jax.process_count() == 1:
        return merge_topk(rows, scores, k)
    if rows.size and rows.max() >= np.iinfo(np.int32).max:
        raise ValueError(f"row {rows.max()} does not fit the int32 gathered across processes")
    barrier("search_done", timeout_s=LONG_WAIT_S)
    out_rows, out_scores = [], []
    for s in range(0, len(rows), query_block):
        r, v = multihost_utils.process_allgather(
            (np.asarray(rows[s:s + query_block], np.int32),
             np.asarray(scores[s:s + query_block], np.float32)))
        r, v = np.asarray(r, np.int64), np.asarray(v, np.float32)  # [processes, b, k']
        merged = merge_topk(np.concatenate(list(r), 1), np.concatenate(list(v), 1), k)
        out_rows.append(merged[0])
        out_scores.append(merged[1])
    if not out_rows:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(out_rows), np.concatenate(out_scores)


class ShardSearcher:
    """This process's shards of an embedding directory, searched and merged with the
    other processes' results: ``searcher(queries, k)`` is exact search over the whole
    table (``index_spec=None``), or the merge of one FAISS index per process.

    Attributes:
      emb_dir: the shard directory; entries: this process's shard entries;
      num_passages: rows of the whole table; index: this process's DenseIndex or None.
    """

    def __init__(self, emb_dir: str, table: Optional[PassageTable] = None, *,
                 index_spec: Optional[str] = None, index_params: Optional[Dict[str, Any]] = None,
                 seed: int = 0, verify: bool = False, block_size: int = 65536,
                 query_block: int = 4096, process_id: Optional[int] = None,
                 num_processes: Optional[int] = None, progress: bool = True):
        """Reads the manifests and, with ``index_spec``, builds this process's index.

        Args:
          emb_dir: a complete shard directory (``encode_share`` or ``index.encode`` jobs).
          table: its passage table (checked; also the index's passage checksum).
          index_spec: ``faiss.index_factory`` spec of a per-process index; None: exact.
          index_params: its search parameters (nprobe, efSearch).
          seed: training sample seed of trainable indexes.
          verify: check this process's shard files first (``local_shards``).
          block_size: passages scored at a time by exact search.
          query_block: queries per gathering collective (``allgather_topk``).
          process_id, num_processes: whose block of shards (default this process's; other
            values only for ``search_local``, e.g. to search the blocks in turn).
          progress: tqdm bars.
        """
        self.emb_dir, self.block_size, self.query_block = emb_dir, block_size, query_block
        self.progress = progress
        self.own = process_id in (None, jax.process_index()) and \
            num_processes in (None, jax.process_count())
        self.entries = local_shards(emb_dir, table, process_id, num_processes, verify)
        self.num_passages = int(read_manifests(emb_dir)["num_passages"])
        self.index: Optional[DenseIndex] = None
        if index_spec is not None and self.entries:
            self.index = build_index(
                lambda: (_load(emb_dir, e) for e in self.entries), index_spec,
                row_offset=self.entries[0]["start"], seed=seed, progress=progress,
                passage_checksum=None if table is None else table.checksum,
            ).set_params(**(index_params or {}))

    def search_local(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """This process's top-``k`` (global rows, -1 / -inf padded to ``k``), no collective.

        Exact search reads each shard once for all queries (memory O(Q * block_size), as
        ``exact_search``); an index searches in query batches."""
        queries = np.asarray(queries, np.float32)
        rows = np.full((len(queries), 0), -1, np.int64)
        scores = np.zeros((len(queries), 0), np.float32)
        if self.index is not None:
            rows, scores = self.index.search(queries, k)
        elif self.entries:
            for e in tqdm(self.entries, desc="search shards", unit=" shards",
                          disable=not self.progress or len(self.entries) < 2, leave=False):
                r, s = exact_search(queries, _load(self.emb_dir, e), k, self.block_size)
                rows, scores = merge_topk(np.concatenate([rows, r + e["start"]], 1),
                                          np.concatenate([scores, s], 1), k)
        return merge_topk(rows, scores, k)

    def __call__(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``min(k, num_passages)`` over every process's shards, the same on each.

        Every process must call it with the same queries (collectives with several).

        Returns:
          (rows, scores): int64 / float32 [Q, min(k, num_passages)], best first, ties to
          the lower row; -1 / -inf where an approximate index found fewer.
        """
        if not self.own:
            raise ValueError("a ShardSearcher of another process's shards can only search_local")
        k = max(0, min(int(k), self.num_passages))
        rows, scores = self.search_local(queries, k)
        return allgather_topk(rows, scores, k, self.query_block)

    def search(self, queries: np.ndarray, k: int, progress: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
        """``searcher(queries, k)`` (the ``DenseIndex.search`` interface)."""
        del progress
        return self(queries, k)
