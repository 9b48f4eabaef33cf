"""What the service computes: a trained run's query encoder over its saved FAISS index,
called with fixed, bucketed shapes so that nothing compiles after the warm-up.

    engine = load_engine(model_dir, index_dir)   # checksums verified, read only
    engine.warm_up()                             # every (batch, length) bucket compiled
    out = engine.run([Job("search", get_task("nq"), ["who wrote ..."], k=10), ...])

Shapes: a call encodes ``B`` queries of ``L`` tokens, ``B`` a power of two up to
``max_batch`` (or ``max_batch``), ``L`` a multiple of ``encoding.BUCKET`` doubling up to
the longest query length of the served tasks (``length_buckets``). Queries are written
and truncated exactly as in training (``Tokenization.encode_queries`` with the run's
``QueryFormat`` and query-length cap) and go through their task's query tower, a jit
argument like the parameters (``encoding.jitted_encoders``), so tasks do not compile
shapes of their own. Used from one thread at a time (the batcher's worker): the
tokenizer's truncation setting is not thread-safe.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import Task, get_task, registered_tasks
from multiret_jax.encoding import BUCKET, jitted_encoders
from multiret_jax.index.corpus import open_saved_index
from multiret_jax.index.faiss_index import DenseIndex
from multiret_jax.run_dir import TrainedRun, load_run, parse_run_config, run_table

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> List[int]:
    """Encoder batch sizes: powers of two below ``max_batch``, then ``max_batch``."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    return sorted(set(out + [int(max_batch)]))


def length_buckets(max_len: int) -> List[int]:
    """Padded token lengths: ``BUCKET``, doubling while below ``max_len``, then ``max_len``."""
    out = [BUCKET]
    while out[-1] * 2 < max_len:
        out.append(out[-1] * 2)
    return sorted(set([b for b in out if b < max_len] + [int(max_len)]))


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n`` (buckets ascending; ``n`` <= the last)."""
    return next(b for b in buckets if b >= n)


@dataclasses.dataclass
class Job:
    """One request's work: ``kind`` "search" (top ``k``) or "encode", of one task."""

    kind: str
    task: Task
    queries: Sequence[str]
    k: int = 0


class Engine:
    """A run's query encoder, its index and passage table, and the served tasks.

    Args:
      run, table, index: the loaded run, its passage table (index row r = table row r)
        and the verified index.
      tasks: the tasks served (default every registered task that has a query tower).
      max_batch: queries per encoder call.
      on_call: called after each encoder call with (real rows, padded batch, length).
    """

    def __init__(self, run: TrainedRun, table: PassageTable, index: DenseIndex,
                 tasks: Optional[Sequence[str]] = None, max_batch: int = 32,
                 on_call=None):
        self.run, self.table, self.index = run, table, index
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if tasks:
            chosen = [get_task(t) for t in tasks]
            for t in chosen:
                run.model.tower_index(t)  # KeyError naming the towers when it has none
        else:
            chosen = [t for t in registered_tasks() if _has_tower(run.model, t)]
        if not chosen:
            raise ValueError(f"{run.model_dir}: no task has a query tower of this model")
        self.tasks: Dict[str, Task] = {t.name: t for t in chosen}
        self.max_len = {t.name: run.tokenizer.query_length(t, run.marker, run.query_len)
                        for t in chosen}
        self.batch_buckets = batch_buckets(max_batch)
        self.length_buckets = length_buckets(max(self.max_len.values()))
        self.max_batch, self.on_call = int(max_batch), on_call
        self.params = jax.device_put(run.params)
        self._encode = jitted_encoders(run.model)["query"]
        self.dim: Optional[int] = None

    # -- encoding
    def _call(self, tower: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[n, D] embeddings of n <= max_batch rows, padded to a bucketed shape."""
        n = len(ids)
        longest = int(mask.sum(axis=1).max())
        length = bucket_of(longest, self.length_buckets)
        batch = bucket_of(n, self.batch_buckets)
        pick = np.concatenate([np.arange(n), np.full(batch - n, n - 1)])  # copies of the last
        pad = max(0, length - ids.shape[1])
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=self.run.tokenizer.pad_id)
        mask = np.pad(mask, ((0, 0), (0, pad)))
        emb = self._encode(self.params, jnp.asarray(tower, jnp.int32),
                           jnp.asarray(ids[pick, :length]), jnp.asarray(mask[pick, :length]))
        emb = np.asarray(emb, np.float32)[:n]
        if self.on_call is not None:
            self.on_call(n, batch, length)
        return emb

    def encode(self, items: Sequence[Tuple[Task, Sequence[str]]]) -> List[np.ndarray]:
        """Float32 [len(texts), D] embeddings for each (task, texts), the rows of all items
        encoded together (one call per query tower and ``max_batch`` rows)."""
        rows: Dict[int, List[Tuple[int, np.ndarray, np.ndarray]]] = {}
        run = self.run
        for i, (task, texts) in enumerate(items):
            ids, mask = run.tokenizer.encode_queries(task, texts, run.marker, cap=run.query_len)
            rows.setdefault(run.model.tower_index(task), []).append((i, ids, mask))
        out: List[Optional[np.ndarray]] = [None] * len(items)
        for tower, group in rows.items():
            width = max(ids.shape[1] for _, ids, _ in group)
            widen = lambda a, fill: np.pad(a, ((0, 0), (0, width - a.shape[1])),
                                           constant_values=fill)
            ids = np.concatenate([widen(x, run.tokenizer.pad_id) for _, x, _ in group])
            mask = np.concatenate([widen(m, 0) for _, _, m in group])
            emb = np.concatenate([self._call(tower, ids[s:s + self.max_batch],
                                             mask[s:s + self.max_batch])
                                  for s in range(0, len(ids), self.max_batch)])
            start = 0
            for i, x, _ in group:
                out[i], start = emb[start:start + len(x)], start + len(x)
        return out  # type: ignore[return-value]

    def warm_up(self) -> Dict[str, Any]:
        """Compiles every (batch, length) bucket; returns their count and the seconds."""
        t0 = time.time()
        pad = self.run.tokenizer.pad_id
        for batch in self.batch_buckets:
            for length in self.length_buckets:
                ids = np.full((batch, length), pad, np.int32)
                mask = np.ones((batch, length), np.int32)
                emb = self._encode(self.params, jnp.asarray(0, jnp.int32), jnp.asarray(ids),
                                   jnp.asarray(mask))
                self.dim = int(np.asarray(emb).shape[-1])
        shapes = len(self.batch_buckets) * len(self.length_buckets)
        return {"shapes": shapes, "seconds": time.time() - t0,
                "batch_buckets": self.batch_buckets, "length_buckets": self.length_buckets}

    # -- searching
    def hits(self, rows: np.ndarray, scores: np.ndarray) -> List[List[Dict[str, Any]]]:
        """Per query, the found passages best first (rows -1, none found, left out)."""
        t = self.table
        return [[{"passage_id": t.ids[r], "wikipedia_id": t.page_ids[r], "title": t.titles[r],
                  "score": float(s), "text": t.texts[r]}
                 for r, s in zip(rr.tolist(), ss.tolist()) if r >= 0]
                for rr, ss in zip(rows, scores)]

    def run_jobs(self, jobs: Sequence[Job]) -> List[Any]:
        """Each job's result (``{"results": ...}`` / ``{"embeddings": ...}``), or the
        exception it raised; the queries of all jobs encoded together, one search per
        ``k`` over the queries that asked for it."""
        try:
            embs = self.encode([(j.task, j.queries) for j in jobs])
        except Exception as e:  # noqa: BLE001 -- handed to every waiting request
            log.exception("encoding a batch of %d requests failed", len(jobs))
            return [e] * len(jobs)
        out: List[Any] = [None] * len(jobs)
        by_k: Dict[int, List[int]] = {}
        for i, j in enumerate(jobs):
            if j.kind == "encode":
                out[i] = {"embeddings": embs[i].tolist(), "dim": int(embs[i].shape[1])}
            else:
                by_k.setdefault(int(j.k), []).append(i)
        for k, members in by_k.items():
            try:
                rows, scores = self.index.search(np.concatenate([embs[i] for i in members]), k)
                hits = self.hits(rows, scores)
            except Exception as e:  # noqa: BLE001
                log.exception("searching %d requests at k=%d failed", len(members), k)
                for i in members:
                    out[i] = e
                continue
            start = 0
            for i in members:
                n = len(jobs[i].queries)
                out[i], start = {"results": hits[start:start + n]}, start + n
        return out


def _has_tower(model: Any, task: Task) -> bool:
    try:
        model.tower_index(task)
        return True
    except KeyError:
        return False


def load_engine(model_dir: str, index_dir: str, data_dir: Optional[str] = None, *,
                tasks: Optional[Sequence[str]] = None, max_batch: int = 32,
                gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                params_path: Optional[str] = None, tokenizer_dir: Optional[str] = None,
                nprobe: Optional[int] = None, ef_search: Optional[int] = None,
                on_call=None) -> Engine:
    """Loads a run (as ``retrieve.py`` does: its ``config.gin`` then the overrides), its
    passage table and its saved index (``index.corpus.open_saved_index``: read only, every
    checksum verified). Replaces the process's gin config with the run's.

    Raises:
      FileNotFoundError / ValueError: naming the missing, damaged or mismatching file.
    """
    parse_run_config(model_dir, gin_files, gin_params)
    run = load_run(model_dir, params_path, tokenizer_dir)
    table, data_dir = run_table(model_dir, data_dir)
    params = {name: v for name, v in (("nprobe", nprobe), ("efSearch", ef_search))
              if v is not None}
    index, _ = open_saved_index(run, table, index_dir, **params)
    log.info("%s: %s index of %d passages (%s), checksums verified", index_dir, index.spec,
             index.ntotal, data_dir)
    return Engine(run, table, index, tasks, max_batch, on_call)
