"""FAISS indexes over passage embeddings: build from shards, save/load, batched and sharded search.

Usage::

    from multiret_jax.index import faiss_index as fi
    from multiret_jax.index.encode import iter_shards

    idx = fi.build_index(lambda: iter_shards("emb/"), "IVF1024,PQ48", train_size=100_000)
    idx.save("emb/ivfpq")                       # index.faiss + ids.npy + meta.json
    idx = fi.DenseIndex.load("emb/ivfpq", nprobe=32)
    rows, scores = idx.search(query_emb, k=100)  # int64 [Q, k] (-1: none), float32 (-inf: none)
    pids, scores = idx.search_ids(query_emb, k=100)  # passage-id strings ("" for none)
    rows, scores = fi.sharded_search(["emb/part0", "emb/part1"], query_emb, k=100)

``spec`` is any ``faiss.index_factory`` string ("Flat", "HNSW32", "IVF1024,PQ48",
"IVF256,SQ8", ...), built with ``METRIC_INNER_PRODUCT``: the dual encoder scores with a raw
inner product, and embeddings are not normalised, so cosine/L2 would rank differently.

HNSW metric choice: by default HNSW uses FAISS's native inner-product metric, which needs no
corpus statistic, so it is built in one streaming pass and independently built shards have
comparable scores. ``ip_to_l2=True`` instead applies DPR's transform (append
``sqrt(M^2 - |x|^2)`` to passages, 0 to queries, search with L2; M = max passage norm), which
turns MIPS into a true metric search that HNSW's graph heuristics are designed for; it needs
M over the whole corpus before the first add (an extra pass) and makes the dimension d + 1.
Scores are converted back, so every search returns inner products either way. When
passage norms vary widely, M is set by the tail and the extra coordinate dominates; on the
benchmark's data (norms 7-93) it loses recall (benchmarks/faiss_recall.py). FAISS does not
raise HNSW's efSearch to k: a k=100 search with efSearch=16 finds no more of the true top
10 than k=10 does; ``DenseIndex.search`` therefore searches with efSearch >= k (raising it
for the call only), and a larger efSearch set with ``set_params`` still applies.

No ``IndexIDMap``: passage ids live in ``ids.npy`` (a unicode array, loaded without pickle)
next to the index; FAISS row ``r`` is passage ``ids[r]`` and global row ``row_offset + r``.
Trainable indexes (IVF*, PQ) are trained on a seeded uniform sample of ``train_size`` rows
drawn in one pass over the shards (bottom-k random keys), then shards are added in blocks.
PQ's polysemous training is switched off (as with FAISS's "np" suffix): it only serves
Hamming-threshold search, which is not used, and dominates PQ training time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import faiss
import numpy as np
from tqdm import tqdm

from multiret_jax.checksums import file_sha256
from multiret_jax.index.mine import candidate_margin, pair_scores

log = logging.getLogger(__name__)

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "meta.json"
FORMAT = "multiret_jax.faiss_index/1"


def _shard_items(shards) -> Iterator[Tuple[Optional[np.ndarray], Any]]:
    """One pass over ``shards`` (iterable or zero-arg callable) as (ids or None, emb)."""
    for i, item in enumerate(shards() if callable(shards) else shards):
        ids, emb = item if isinstance(item, tuple) else (None, item)
        if np.ndim(emb) != 2:
            raise ValueError(f"shard {i}: embeddings must be 2-D [n, D], got shape {np.shape(emb)}")
        if ids is not None and len(ids) != len(emb):
            raise ValueError(f"shard {i}: {len(ids)} ids for {len(emb)} embeddings")
        yield ids, emb


def _blocks(emb, block: int) -> Iterator[np.ndarray]:
    """float32 C-contiguous row blocks of ``emb`` (a memmap is read block by block)."""
    for s in range(0, len(emb), block):
        yield np.ascontiguousarray(emb[s:s + block], dtype=np.float32)


def _augment(x: np.ndarray, max_norm: float) -> np.ndarray:
    """DPR's IP -> L2 transform for passages: append sqrt(M^2 - |x|^2)."""
    extra = np.sqrt(np.maximum(max_norm ** 2 - np.einsum("ij,ij->i", x, x), 0.0))
    return np.hstack([x, extra[:, None].astype(np.float32)])


def _ids_digest(ids: np.ndarray) -> str:
    h = hashlib.sha256()
    for s in range(0, len(ids), 1 << 20):
        h.update("\n".join(ids[s:s + (1 << 20)].tolist()).encode("utf-8") + b"\n")
    return h.hexdigest()


def _sort_results(rows: np.ndarray, scores: np.ndarray, k: int, *extra: np.ndarray):
    """Top ``k`` per query by score desc, then row asc; -1 rows (score -inf) last.

    FAISS returns most rows in this order already; only the others are sorted (a
    lexsort of every row cost ~10% of a Flat search's time)."""
    key = np.where(rows < 0, np.iinfo(np.int64).max, rows)
    a, b = scores[:, :-1], scores[:, 1:]
    ordered = np.all((a > b) | ((a == b) & (key[:, :-1] <= key[:, 1:])), axis=1)
    out = [x.copy() for x in (rows, scores) + extra]
    todo = np.flatnonzero(~ordered)
    if len(todo):
        order = np.lexsort((key[todo], -scores[todo]), axis=-1)
        for o, x in zip(out, (rows, scores) + extra):
            o[todo] = np.take_along_axis(x[todo], order, axis=1)
    return tuple(o[:, :k] for o in out)


def _hnsw_of(index) -> Optional[Any]:
    """The ``faiss.HNSW`` graph of an HNSW index (also under a pre-transform or refine
    wrapper), or None."""
    index = faiss.downcast_index(index)
    if hasattr(index, "hnsw"):
        return index.hnsw
    inner = getattr(index, "base_index", None) or getattr(index, "index", None)
    return _hnsw_of(inner) if isinstance(inner, faiss.Index) else None


class DenseIndex:
    """A FAISS index plus the passage ids of its rows and a global row offset.

    Attributes:
      index: the faiss.Index; ids: unicode [ntotal] passage ids; spec: factory string;
      dim: embedding dimension (before the optional +1 of ``ip_to_l2``); row_offset: global
      row of local row 0; ip_to_l2, max_norm: DPR transform flag and its M;
      passage_checksum: the passage table's checksum, if given at build time.
    """

    def __init__(self, index, ids, spec: str, dim: int, row_offset: int = 0,
                 ip_to_l2: bool = False, max_norm: float = 0.0,
                 passage_checksum: Optional[str] = None):
        self.index, self.ids, self.spec, self.dim = index, ids, spec, int(dim)
        self.row_offset, self.ip_to_l2 = int(row_offset), bool(ip_to_l2)
        self.max_norm, self.passage_checksum = float(max_norm), passage_checksum

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def set_params(self, **params) -> "DenseIndex":
        """Sets search-time parameters, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW)."""
        for name, value in params.items():
            try:
                faiss.ParameterSpace().set_index_parameter(self.index, name, value)
            except RuntimeError:
                raise ValueError(f"cannot set search parameter {name}={value} on a {self.spec!r} "
                                 "index (nprobe is for IVF, efSearch for HNSW)") from None
        return self

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096,
               progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k inner-product search in query batches.

        Args:
          queries: [Q, dim] query embeddings (any float dtype).
          k: results per query; missing results (k > ntotal, or an approximate index that
            finds fewer) are row -1 with score -inf. HNSW indexes search with
            ``efSearch = max(efSearch, k)`` (restored afterwards): FAISS does not raise it.
          batch_size: queries per FAISS call.
          progress: tqdm bar over batches.
        Returns:
          (rows, scores): int64 [Q, k] global rows (``row_offset`` + FAISS row) and float32
          [Q, k] inner products, best first, ties to the lower row. A Flat index's top
          ``k + mine.candidate_margin(k)`` are rescored by ``mine.pair_scores`` (one dot
          product per pair, in an order that does not depend on the index's size), so
          Flat indexes over shards, merged, rank as one index and as ``exact_search``;
          of passages tied at the k-th score it may keep others.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {q.shape}")
        k, bs = int(k), int(batch_size)
        if k < 0 or bs < 1:
            raise ValueError(f"need k >= 0 and batch_size >= 1, got k={k}, batch_size={bs}")
        flat = isinstance(faiss.downcast_index(self.index), faiss.IndexFlat)
        # A Flat index's candidates are rescored pair by pair: FAISS's float32 BLAS scores
        # depend on the index's size, so k + a margin are fetched to rank the top k.
        found = min(self.ntotal, k + candidate_margin(k)) if flat else k
        rows = np.full((len(q), max(k, found)), -1, np.int64)
        scores = np.full((len(q), max(k, found)), -np.inf, np.float32)
        if k == 0 or self.ntotal == 0:
            return rows[:, :k], scores[:, :k]
        hnsw = _hnsw_of(self.index)
        ef = None if hnsw is None else int(hnsw.efSearch)
        if ef is not None and ef < k:  # FAISS keeps efSearch < k: its beam then misses
            hnsw.efSearch = k          # most of the true top k (see the module docstring)
        try:
            self._search_batches(q, found, bs, rows, scores, progress)
        finally:
            if ef is not None:
                hnsw.efSearch = ef
        if flat:
            self._rescore(q, rows, scores)
        return _sort_results(rows, scores, k)

    def _rescore(self, q: np.ndarray, rows: np.ndarray, scores: np.ndarray,
                 chunk: int = 4096) -> None:
        """Replaces a Flat index's scores by ``mine.pair_scores`` of its stored vectors
        (read in place; DPR's ip_to_l2 vectors without their extra coordinate)."""
        flat = faiss.downcast_index(self.index)
        table = faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * flat.d).reshape(self.ntotal, flat.d)
        local = np.where(rows >= 0, rows - self.row_offset, -1)
        for s in range(0, len(q), chunk):
            r = local[s:s + chunk]
            if self.ip_to_l2:  # the table's rows are [x, sqrt(M^2 - |x|^2)]: keep x
                vec = table[np.maximum(r, 0).ravel(), :self.dim]
                r = np.where(r >= 0, np.arange(r.size).reshape(r.shape), -1)
                scores[s:s + chunk] = pair_scores(q[s:s + chunk], vec, r)
            else:
                scores[s:s + chunk] = pair_scores(q[s:s + chunk], table, r)

    def _search_batches(self, q: np.ndarray, k: int, bs: int, rows: np.ndarray,
                        scores: np.ndarray, progress: bool) -> None:
        """Fills ``rows`` / ``scores`` [Q, k] (unsorted) batch by batch."""
        starts = range(0, len(q), bs)
        for s in tqdm(starts, desc=f"search {self.spec}", disable=not progress or len(starts) < 2):
            x = np.ascontiguousarray(q[s:s + bs])
            if self.ip_to_l2:  # |q - x'|^2 = |q|^2 + M^2 - 2 q.x  =>  q.x = (|q|^2 + M^2 - d) / 2
                dist, idx = self.index.search(np.hstack([x, np.zeros((len(x), 1), np.float32)]), k)
                dist = (np.einsum("ij,ij->i", x, x)[:, None] + self.max_norm ** 2 - dist) / 2
            else:
                dist, idx = self.index.search(x, k)
            rows[s:s + bs, :k] = np.where(idx >= 0, idx + self.row_offset, -1)
            scores[s:s + bs, :k] = np.where(idx >= 0, dist, -np.inf)

    def search_ids(self, queries: np.ndarray, k: int, **kw) -> Tuple[np.ndarray, np.ndarray]:
        """``search``, returning passage-id strings [Q, k] ("" where none) and scores."""
        rows, scores = self.search(queries, k, **kw)
        return self.rows_to_ids(rows), scores

    def rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        """Global rows of this index (-1 allowed) -> passage ids ("" for -1)."""
        local = np.asarray(rows) - self.row_offset
        if np.any((rows >= 0) & ((local < 0) | (local >= self.ntotal))):
            raise ValueError(f"rows outside this index's range [{self.row_offset}, "
                             f"{self.row_offset + self.ntotal})")
        return np.where(rows >= 0, np.asarray(self.ids)[np.clip(local, 0, None)], "")

    def save(self, directory: str) -> None:
        """Writes ``index.faiss``, ``ids.npy`` and ``meta.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        faiss.write_index(self.index, os.path.join(directory, INDEX_FILE))
        np.save(os.path.join(directory, IDS_FILE), np.asarray(self.ids), allow_pickle=False)
        meta = dict(format=FORMAT, spec=self.spec, dim=self.dim, ntotal=self.ntotal,
                    metric="inner_product", ip_to_l2=self.ip_to_l2, max_norm=self.max_norm,
                    row_offset=self.row_offset, passage_checksum=self.passage_checksum,
                    ids_sha256=_ids_digest(np.asarray(self.ids)), faiss_version=faiss.__version__,
                    index_sha256=file_sha256(os.path.join(directory, INDEX_FILE)))
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, directory: str, expected_checksum: Optional[str] = None,
             mmap_ids: bool = True, verify_files: bool = False, **params) -> "DenseIndex":
        """Loads a saved index and checks it against its ids and meta.

        Args:
          directory: what ``save`` wrote; expected_checksum: if given, must equal the
          passage checksum recorded at build; mmap_ids: memory-map ``ids.npy``;
          verify_files: also check ``index.faiss`` against the sha256 that ``save``
          recorded (a full read of the file; indexes saved before it was recorded are
          checked without it, with a warning);
          **params: search parameters for ``set_params`` (nprobe, efSearch, ...).
        Raises:
          FileNotFoundError / ValueError naming the missing or mismatching file (ids count
          != ntotal, ids digest, index sha256, meta, passage checksum).
        """
        paths = {n: os.path.join(directory, n) for n in (INDEX_FILE, IDS_FILE, META_FILE)}
        for p in paths.values():
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: missing (not a saved DenseIndex directory?)")
        with open(paths[META_FILE]) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{paths[META_FILE]}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if verify_files and "index_sha256" not in meta:
            log.warning("%s: no sha256 of %s recorded (saved by an older version); checking "
                        "its ids and meta only", paths[META_FILE], INDEX_FILE)
        elif verify_files and file_sha256(paths[INDEX_FILE]) != meta["index_sha256"]:
            raise ValueError(f"{paths[INDEX_FILE]}: damaged or modified (sha256 differs from "
                             f"{paths[META_FILE]}); rebuild the index")
        index = faiss.read_index(paths[INDEX_FILE])
        try:
            ids = np.load(paths[IDS_FILE], mmap_mode="r" if mmap_ids else None, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{paths[IDS_FILE]}: cannot load passage ids: {e}") from None
        if ids.ndim != 1 or ids.dtype.kind != "U":
            raise ValueError(f"{paths[IDS_FILE]}: expected a 1-D unicode array, got {ids.dtype} "
                             f"with shape {ids.shape}")
        if index.ntotal != len(ids):
            raise ValueError(f"{paths[IDS_FILE]}: {len(ids)} passage ids but {paths[INDEX_FILE]} "
                             f"holds ntotal={index.ntotal} vectors; the files do not belong together")
        if meta["ntotal"] != index.ntotal:
            raise ValueError(f"{paths[INDEX_FILE]}: ntotal={index.ntotal} but {paths[META_FILE]} "
                             f"records {meta['ntotal']}")
        if index.d != meta["dim"] + bool(meta["ip_to_l2"]):
            raise ValueError(f"{paths[INDEX_FILE]}: dimension {index.d} does not match "
                             f"{paths[META_FILE]} (dim={meta['dim']}, ip_to_l2={meta['ip_to_l2']})")
        if _ids_digest(ids) != meta["ids_sha256"]:
            raise ValueError(f"{paths[IDS_FILE]}: passage ids were modified (sha256 differs "
                             f"from {paths[META_FILE]})")
        if expected_checksum is not None and meta["passage_checksum"] != expected_checksum:
            raise ValueError(f"{paths[META_FILE]}: index was built for passage table "
                             f"{meta['passage_checksum']}, expected {expected_checksum}")
        return cls(index, ids, meta["spec"], meta["dim"], meta["row_offset"], meta["ip_to_l2"],
                   meta["max_norm"], meta["passage_checksum"]).set_params(**params)


def _first_pass(shards, dim: int, sample_size: int, seed: int, want_norm: bool, progress: bool):
    """One pass: a seeded uniform sample of ``sample_size`` rows (bottom-k of random keys,
    so it does not depend on shard boundaries) in global row order, and the max norm."""
    rng = np.random.default_rng(seed)
    keys, grow = np.zeros(0), np.zeros(0, np.int64)
    sample, max_sq, n = np.zeros((0, dim), np.float32), 0.0, 0
    for _, emb in tqdm(_shard_items(shards), desc="sample/norm pass", unit=" shards",
                       disable=not progress):
        if emb.shape[1] != dim:
            raise ValueError(f"shard at row {n}: dimension {emb.shape[1]}, expected {dim}")
        if want_norm:
            for x in _blocks(emb, 65536):
                max_sq = max(max_sq, float(np.einsum("ij,ij->i", x, x).max(initial=0.0)))
        if sample_size > 0:
            new_keys = rng.random(len(emb))
            keep = np.argsort(np.concatenate([keys, new_keys]), kind="stable")[:sample_size]
            old, new = keep[keep < len(keys)], np.sort(keep[keep >= len(keys)] - len(keys))
            sample = np.concatenate([sample[old], np.asarray(emb[new], np.float32)])
            keys = np.concatenate([keys[old], new_keys[new]])
            grow = np.concatenate([grow[old], new + n])
        n += len(emb)
    return sample[np.argsort(grow, kind="stable")], float(np.sqrt(max_sq))


_SPEC_DIMS = (768, 1024, 384, 512, 256, 128, 64)  # dimensions tried when it is not known yet


def check_index_spec(spec: str, num_vectors: Optional[int] = None, dim: Optional[int] = None,
                     train_size: Optional[int] = None) -> None:
    """Checks a ``faiss.index_factory`` string before any encoding: that FAISS accepts it
    (for ``dim``, or for some common dimension when ``dim`` is None) and, with
    ``num_vectors``, that a trainable index can be trained on that many vectors (an IVF
    index needs at least one per list, PQ at least one per centroid, from the training
    sample of ``train_size``).

    Raises:
      ValueError: naming the spec and what to change.
    """
    errors = []
    index = None
    for d in ((dim,) if dim else _SPEC_DIMS):
        try:
            index = faiss.index_factory(int(d), spec, faiss.METRIC_INNER_PRODUCT)
            break
        except RuntimeError as e:
            errors.append(str(e).strip().splitlines()[-1].rsplit(": ", 1)[-1])
    if index is None:
        raise ValueError(f"bad FAISS index spec {spec!r}"
                         + (f" for dimension {dim}" if dim else "") + f": {errors[-1]}")
    if num_vectors is None:
        return
    usable = min(num_vectors, train_size) if train_size else num_vectors
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist > usable:
        suggest = max(1, int(4 * math.sqrt(num_vectors)))
        raise ValueError(f"index spec {spec!r}: {ivf.nlist} IVF lists need at least {ivf.nlist} "
                         f"training vectors, the corpus has {num_vectors} passages"
                         + (f" and the training sample {train_size}" if train_size else "")
                         + f" (about 4*sqrt(N) lists is usual: IVF{suggest})")
    for sub in (faiss.downcast_index(index), ivf and faiss.downcast_index(ivf)):
        pq = getattr(sub, "pq", None)
        if pq is not None and pq.ksub > usable:
            raise ValueError(f"index spec {spec!r}: product quantization with {pq.nbits} bits "
                             f"needs at least {pq.ksub} training vectors, only {usable} "
                             "available (use fewer bits, e.g. PQ16x4, or a Flat / HNSW index)")


def build_index(shards: Union[np.ndarray, Iterable, Any], spec: str = "Flat", *,
                ids: Optional[Sequence[str]] = None, row_offset: int = 0,
                train_size: int = 100_000, seed: int = 0, ip_to_l2: bool = False,
                ef_construction: Optional[int] = None, passage_checksum: Optional[str] = None,
                add_batch_size: int = 65536, progress: bool = True) -> DenseIndex:
    """Builds a DenseIndex shard by shard (never holding more than one block in float32).

    Args:
      shards: one [n, D] array, or an iterable of ``(ids, emb)`` pairs or of ``emb`` arrays
        (float32/float16, memmaps fine), or a zero-argument callable returning such an
        iterable. Indexes that need training (IVF*, PQ) or ``ip_to_l2`` read the shards
        twice, so a one-shot generator is refused for them: pass a list or a callable such
        as ``lambda: iter_shards(directory)``.
      spec: ``faiss.index_factory`` string ("Flat", "HNSW32", "IVF1024,PQ48", "IVF256,SQ8").
      ids: passage ids of all rows when the shards yield bare arrays (default: the global
        row numbers as strings).
      row_offset: global row of this index's first vector (for ``sharded_search``).
      train_size, seed: training sample size and its seed (trainable indexes only).
      ip_to_l2: DPR's IP -> L2 transform (see module docstring).
      ef_construction: HNSW build-time beam width (FAISS default 40).
      passage_checksum: the passage table's checksum, recorded in meta.json.
      add_batch_size: rows converted to float32 and added per FAISS call.
      progress: tqdm bars.
    Returns:
      The built DenseIndex.
    """
    if isinstance(shards, np.ndarray):
        shards = [shards]
    reiterable = callable(shards) or iter(shards) is not shards
    items = _shard_items(shards)
    first = next(items, None)
    if first is None:
        raise ValueError("no shards to index")
    dim = int(first[1].shape[1])
    metric = faiss.METRIC_L2 if ip_to_l2 else faiss.METRIC_INNER_PRODUCT
    try:
        index = faiss.index_factory(dim + int(ip_to_l2), spec, metric)
    except RuntimeError as e:
        raise ValueError(f"bad FAISS index spec {spec!r} for dimension {dim}: {e}") from None
    ivf = faiss.try_extract_index_ivf(index)
    for sub in (faiss.downcast_index(index), ivf and faiss.downcast_index(ivf)):
        if hasattr(sub, "do_polysemous_training"):  # only for Hamming-filtered search (never
            sub.do_polysemous_training = False       # enabled here); 5x the PQ training time
    if ef_construction is not None:
        hnsw = faiss.downcast_index(index)
        if not hasattr(hnsw, "hnsw"):
            raise ValueError(f"ef_construction is for HNSW indexes, not {spec!r}")
        hnsw.hnsw.efConstruction = int(ef_construction)
    max_norm = 0.0
    if not index.is_trained or ip_to_l2:
        if not reiterable:
            raise ValueError(f"a {spec!r} index (ip_to_l2={ip_to_l2}) needs a first pass over the "
                             "shards; pass a list or a zero-argument callable returning a fresh "
                             "iterator (e.g. lambda: iter_shards(d)), not a one-shot generator")
        need = 0 if index.is_trained else int(train_size)
        sample, max_norm = _first_pass(shards, dim, need, seed, ip_to_l2, progress)
        if not index.is_trained:
            if len(sample) == 0:
                raise ValueError(f"{spec!r} needs training but the sample is empty")
            index.train(_augment(sample, max_norm) if ip_to_l2 else sample)
        del sample
        items = _shard_items(shards)
    else:
        items = itertools.chain([first], items)
    shard_ids: List[Optional[np.ndarray]] = []
    n = 0
    with tqdm(desc=f"add {spec}", unit=" rows", disable=not progress) as bar:
        for sid, emb in items:
            if emb.shape[1] != dim:
                raise ValueError(f"shard at row {n}: dimension {emb.shape[1]}, expected {dim}")
            for j, x in enumerate(_blocks(emb, add_batch_size)):
                if not np.isfinite(x).all():
                    bad = n + j * add_batch_size + int(np.nonzero(~np.isfinite(x).all(1))[0][0])
                    raise ValueError(f"non-finite embedding at row {bad} (within this build)")
                index.add(_augment(x, max_norm) if ip_to_l2 else x)
                bar.update(len(x))
            shard_ids.append(None if sid is None else np.asarray(sid).astype(str))
            n += len(emb)
    if n == 0:
        raise ValueError("the shards hold no rows")
    if all(s is None for s in shard_ids):
        all_ids = (np.asarray(ids).astype(str) if ids is not None
                   else np.arange(row_offset, row_offset + n).astype(str))
    elif any(s is None for s in shard_ids) or ids is not None:
        raise ValueError("give passage ids either in every shard or via ids=, not both/mixed")
    else:
        all_ids = np.concatenate(shard_ids)
    if all_ids.ndim != 1 or len(all_ids) != n:
        raise ValueError(f"{len(all_ids)} passage ids for {n} embeddings")
    return DenseIndex(index, all_ids, spec, dim, row_offset, ip_to_l2, max_norm, passage_checksum)


def sharded_search(indexes: Sequence[Union[str, os.PathLike, DenseIndex]], queries: np.ndarray,
                   k: int, *, row_offsets: Optional[Sequence[int]] = None, batch_size: int = 4096,
                   return_ids: bool = False, progress: bool = True, **params):
    """Searches several indexes and merges their top-k (for Flat: equal to one index over
    the concatenation). Directories are loaded one at a time and released after searching.

    Args:
      indexes: saved index directories and/or DenseIndex objects.
      queries: [Q, D] query embeddings; k: results per query.
      row_offsets: global row of each index's first vector (default: each index's own
        ``row_offset``); overlapping row ranges are an error.
      batch_size: queries per FAISS call.
      return_ids: also return the passage ids [Q, k] ("" where none).
      progress: tqdm bar over indexes.
      **params: search parameters applied to every index (nprobe, efSearch, ...).
    Returns:
      (rows, scores) or (rows, scores, ids): int64 global rows (-1: none), float32 scores
      (-inf: none), best first, ties to the lower row.
    """
    if not len(indexes) or (row_offsets is not None and len(row_offsets) != len(indexes)):
        raise ValueError(f"need >= 1 index and one row offset per index, got {len(indexes)} "
                         f"indexes and row_offsets={row_offsets}")
    nq, k = len(queries), int(k)
    rows = np.full((nq, 0), -1, np.int64)
    scores = np.zeros((nq, 0), np.float32)
    ids = np.zeros((nq, 0), str)
    ranges: List[Tuple[int, int]] = []
    for i, item in enumerate(tqdm(indexes, desc="index shards", disable=not progress)):
        idx = item if isinstance(item, DenseIndex) else DenseIndex.load(os.fspath(item))
        if params:
            idx.set_params(**params)
        off = idx.row_offset if row_offsets is None else int(row_offsets[i])
        for lo, hi in ranges:
            if off < hi and lo < off + idx.ntotal:
                raise ValueError(f"index {i} rows [{off}, {off + idx.ntotal}) overlap [{lo}, {hi}); "
                                 "pass row_offsets or build with row_offset")
        ranges.append((off, off + idx.ntotal))
        r, s = idx.search(queries, k, batch_size=batch_size)
        extra = (idx.rows_to_ids(r),) if return_ids else ()
        r = np.where(r >= 0, r - idx.row_offset + off, -1)
        rows, scores, *rest = _sort_results(
            np.concatenate([rows, r], 1), np.concatenate([scores, s], 1), k,
            *((np.concatenate([ids, extra[0]], 1),) if return_ids else ()))
        ids = rest[0] if return_ids else ids
        del idx
    return (rows, scores, ids) if return_ids else (rows, scores)
