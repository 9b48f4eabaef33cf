"""Encoding a corpus into verified ``.npy`` shards, resumable and splittable into jobs:
``encode_corpus`` and the encoder / fingerprint helpers. The format and its loaders are
``shards.py``; the command line and ``encode_run`` (a trained run's corpus) are
``encode.py``, which re-exports these names (this module does not read run directories, so
the trainer can encode shards without importing the tools' run loading).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import BUCKET, bucket_length, is_jitted, jitted_encoders
from multiret_jax.index.shards import (FORMAT, conflicts, job_shards, manifest_path,
                                       shard_problem, write_json, write_npy)

log = logging.getLogger(__name__)


def _libc():
    """glibc, for ``malloc_trim`` (None elsewhere: musl, macOS)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim  # noqa: B018  (glibc only)
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()

DTYPES = ("float32", "float16")


def release_memory() -> None:
    """Hands the host memory a finished shard freed back to the OS: without it glibc's
    allocator keeps the freed blocks, and the process's peak crept up over the first
    shards (``benchmarks/index_memory.py``, tiny T5, shards of 10k: encoding's own memory
    for 100k passages was 1.40x that for 10k; with this 1.04x)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def params_fingerprint(params: Any) -> str:
    """Hex sha256 over the names, shapes, dtypes and values of a parameter pytree."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenization) -> str:
    """Hex sha256 of a tokenization's serialized tokenizer (a manifest's ``tokenizer_sha256``)."""
    return hashlib.sha256(tokenizer.tokenizer.to_str().encode()).hexdigest()


def passage_encoder(model, params: Any, devices: Optional[Sequence[jax.Device]] = None):
    """``(input_ids, attention_mask) -> [B, D]`` passage embeddings of a ``BiEncoder``, its
    parameters replicated over ``devices`` (default: the local devices, as in
    ``encode_corpus``)."""
    mesh = Mesh(np.asarray(list(devices or jax.local_devices())), ("data",))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    return functools.partial(jitted_encoders(model)["passage"], params)


def _encode_rows(fn: Callable, tokenizer: Tokenization, texts: Sequence[str], max_len: int,
                 batch_size: int, sharding: NamedSharding, bar: tqdm) -> np.ndarray:
    """Float32 [n, D] embeddings in row order; batches longest first, each dispatched
    before the previous one is fetched (host work overlaps the device)."""
    ids, mask = tokenizer.encode(texts, max_len, pad_to_multiple_of=BUCKET)
    lengths = mask.sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    out: Optional[np.ndarray] = None
    pending = None

    def fetch(rows, emb):
        nonlocal out
        emb = np.asarray(emb, np.float32)[:len(rows)]
        if out is None:
            out = np.zeros((len(texts), emb.shape[-1]), np.float32)
        out[rows] = emb
        bar.update(len(rows))

    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        sel = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])  # pad: copies
        length = bucket_length(lengths[sel].max(), max_len)
        emb = fn(jax.device_put(ids[sel, :length], sharding),
                 jax.device_put(mask[sel, :length], sharding))
        if pending is not None:
            fetch(*pending)
        pending = (rows, emb)
    fetch(*pending)
    return out


def encode_corpus(encode_fn: Callable[[Any, Any], Any], tokenizer: Tokenization,
                  table: PassageTable, out_dir: str, *, fingerprint: str,
                  shard_size: int = 100_000, batch_size: int = 128, passage_len: int = 128,
                  shard_id: int = 0, num_shards: int = 1, dtype: str = "float32",
                  overwrite: bool = False, devices: Optional[Sequence[jax.Device]] = None,
                  jit: bool = True, progress: bool = True,
                  metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Encodes this job's shards of ``table`` (title + text) into ``out_dir``, resuming.

    Args:
      encode_fn: ``(input_ids, attention_mask) -> [B, D]``; its inputs come with the rows
        sharded over ``devices`` (a model's parameters should be replicated there, see
        ``passage_encoder``). Jitted here unless it already is or ``jit=False``.
      tokenizer, table: the tokenization and the passages.
      out_dir: the shard directory (created).
      fingerprint: identity of the model (e.g. sha256 of its parameter file or
        ``params_fingerprint(params)``); a directory made by another model is refused.
      shard_size, batch_size, passage_len: rows per shard, rows per device call (rounded
        up to a multiple of the device count), truncation length in tokens.
      shard_id, num_shards: this job and the job count (contiguous blocks of shards).
      dtype: stored dtype, "float32" or "float16" (encoding is float32).
      overwrite: replace manifests made for another table / model / settings instead of
        raising; this job's shards are then encoded again.
      devices: devices the batch rows are split over (default ``jax.local_devices()``).
      jit, progress: see ``encode_fn``; the tqdm bar (passages/s, ETA over the job).
      metadata: extra JSON information stored in the manifest (not compared).
    Returns:
      This job's manifest, plus ``"encoded"`` and ``"reused"`` (lists of shard indices).
    Raises:
      ValueError: ``out_dir`` holds shards of another table, model or settings.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"bad shard_size={shard_size}, batch_size={batch_size} or "
                         f"shard_id={shard_id} of num_shards={num_shards}")
    devices = list(devices or jax.local_devices())
    if batch_size % len(devices):
        batch_size += len(devices) - batch_size % len(devices)
        log.info("batch_size rounded up to %d (a multiple of %d devices)", batch_size, len(devices))
    sharding = NamedSharding(Mesh(np.asarray(devices), ("data",)), P("data", None))
    fn = encode_fn if not jit or is_jitted(encode_fn) else jax.jit(encode_fn)
    settings = {"format": FORMAT, "table_checksum": table.checksum, "num_passages": len(table),
                "model_fingerprint": fingerprint,
                "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
                "passage_len": passage_len, "dtype": dtype, "shard_size": shard_size,
                "num_shards": num_shards}
    os.makedirs(out_dir, exist_ok=True)
    for path, why in conflicts(out_dir, settings):
        if not overwrite:
            raise ValueError(f"{out_dir}: holds embeddings made otherwise ({os.path.basename(path)}"
                             f" {why}); use another directory or overwrite=True")
        log.warning("%s: made otherwise (%s); removed (overwrite=True)", path, why)
        try:
            os.remove(path)
        except FileNotFoundError:  # another job of this run removed it first
            pass
    mpath = manifest_path(out_dir, shard_id, num_shards)
    mine = job_shards(len(table), shard_size, shard_id, num_shards)
    manifest = {**settings, "shard_id": shard_id, "job_shards": list(mine), "complete": False,
                "metadata": metadata or {}, "shards": {}}
    if os.path.exists(mpath):
        with open(mpath) as f:
            manifest["shards"] = json.load(f).get("shards", {})
    ids_of = lambda start, stop: np.asarray(table.ids[start:stop], dtype=str)
    todo, reused = [], []
    for k in mine:
        entry = manifest["shards"].get(str(k))
        start = k * shard_size
        want = ids_of(start, start + shard_size)
        why = "not finished" if entry is None else (
            f"manifest row range {entry['start']}+{entry['rows']}"
            if (entry["start"], entry["rows"]) != (start, len(want))
            else shard_problem(out_dir, entry, want, entry.get("dim"), dtype))
        if why is None:
            reused.append(k)
            manifest["dim"] = entry["dim"]
            continue
        if entry is not None:
            log.warning("%s: shard %d is invalid (%s); encoding it again", out_dir, k, why)
            del manifest["shards"][str(k)]
        todo.append(k)
    write_json(mpath, manifest)
    rows_of = lambda k: min(shard_size, len(table) - k * shard_size)
    bar = tqdm(total=sum(rows_of(k) for k in mine), initial=sum(rows_of(k) for k in reused),
               desc=f"encode job {shard_id}/{num_shards}", unit=" passages", disable=not progress,
               mininterval=2, smoothing=0.1)
    with bar:
        for k in todo:
            start, stop = k * shard_size, k * shard_size + rows_of(k)
            texts = [f"{t} {x}" for t, x in zip(table.titles[start:stop], table.texts[start:stop])]
            emb = _encode_rows(fn, tokenizer, texts, passage_len, batch_size, sharding, bar)
            emb = emb.astype(dtype, copy=False)
            bad = int(np.sum(~np.isfinite(emb).all(axis=1)))
            if bad:
                log.warning("shard %d: %d of %d embeddings are not finite", k, bad, len(emb))
            name = f"{k:05d}"
            entry = {"start": start, "rows": stop - start, "dim": int(emb.shape[1]),
                     "emb_file": f"emb_{name}.npy", "ids_file": f"ids_{name}.npy"}
            entry["ids_sha256"] = write_npy(os.path.join(out_dir, entry["ids_file"]),
                                            ids_of(start, stop))
            entry["emb_sha256"] = write_npy(os.path.join(out_dir, entry["emb_file"]), emb)
            del emb, texts
            release_memory()
            manifest["dim"] = entry["dim"]
            manifest["shards"][str(k)] = entry
            write_json(mpath, manifest)
    manifest["complete"] = True
    write_json(mpath, manifest)
    return {**manifest, "encoded": todo, "reused": reused}
