"""The on-disk format of encoded corpora: ``.npy`` shards, per-job manifests, verified loaders.

    for ids, emb in iter_shards(emb_dir, table):  # one verified, memmapped shard at a time
        index.add(emb)
    emb = load_embeddings(emb_dir, table)          # [P, D], aligned to the table's rows

Shard k holds table rows ``[k * shard_size, (k + 1) * shard_size)``: ``emb_<k>.npy``
[rows, D] (float32 or float16) and ``ids_<k>.npy`` (passage ids, fixed-width unicode),
both plain ``np.save`` files without pickle, written atomically (temporary file, then
``os.replace``). Job ``shard_id`` of ``num_shards`` (``job_shards``: a contiguous block of
whole shards) records its shards in ``manifest_<shard_id>-of-<num_shards>.json``: the
settings of ``SETTINGS`` (model fingerprint, passage-table checksum, shard size, dtype, ...),
``dim``, ``complete`` and per shard its ``start``, ``rows`` and the sha256 of both files.

The loaders combine every job's manifest, require that they agree and cover every row
exactly once (a missing or unfinished job is an error naming it), and verify each shard
(sha256, row counts, ids against the table) before handing it out, so embeddings can
never be silently misaligned with their passages (as DPR's separately generated
embedding files and passage TSVs could be).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from multiret_jax.checksums import file_sha256
from multiret_jax.data.passages import PassageTable

FORMAT = "multiret_jax.index.encode/1"
# Settings a resumed job, and every job of a directory, must share.
SETTINGS = ("format", "table_checksum", "num_passages", "model_fingerprint", "tokenizer_sha256",
            "passage_len", "dtype", "shard_size", "num_shards")
MANIFEST_GLOB = "manifest_*-of-*.json"


def job_shards(num_passages: int, shard_size: int, shard_id: int = 0,
               num_shards: int = 1) -> range:
    """Shard indices of job ``shard_id`` of ``num_shards``: a contiguous block (may be empty)."""
    total = -(-num_passages // shard_size)
    return range(shard_id * total // num_shards, (shard_id + 1) * total // num_shards)


def manifest_path(directory: str, shard_id: int = 0, num_shards: int = 1) -> str:
    """``<directory>/manifest_<shard_id>-of-<num_shards>.json`` (3 digits each)."""
    return os.path.join(directory, f"manifest_{shard_id:03d}-of-{num_shards:03d}.json")


def read_all_manifests(directory: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(path, manifest) of every job manifest in ``directory``, by name."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, MANIFEST_GLOB))):
        with open(path) as f:
            try:
                out.append((path, json.load(f)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a valid manifest ({e})") from None
    return out


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (temporary file, then ``os.replace``)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def write_npy(path: str, arr: np.ndarray) -> str:
    """Writes ``arr`` atomically (no pickle) and returns the file's sha256."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def shard_problem(directory: str, entry: Dict[str, Any], want_ids: Optional[np.ndarray],
                  dim: Optional[int] = None, dtype: Optional[str] = None) -> Optional[str]:
    """Why a manifest's shard entry cannot be used, or None if it is sound.

    Args:
      directory: the shard directory.
      entry: the manifest's entry (files, sha256s, ``start``, ``rows``).
      want_ids: the table's passage ids for those rows (None: not compared).
      dim, dtype: the embedding width / dtype expected (None: not compared).
    """
    emb_path, ids_path = (os.path.join(directory, entry[k]) for k in ("emb_file", "ids_file"))
    for path, key in ((emb_path, "emb_sha256"), (ids_path, "ids_sha256")):
        if not os.path.isfile(path):
            return f"{path} is missing"
        if file_sha256(path) != entry[key]:
            return f"{path} does not match its sha256 in the manifest (modified or truncated)"
    emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    ids = np.load(ids_path, allow_pickle=False)
    if (emb.ndim != 2 or len(emb) != entry["rows"] or len(ids) != entry["rows"]
            or (dim is not None and emb.shape[1] != dim)
            or (dtype is not None and emb.dtype != np.dtype(dtype))):
        return (f"{emb_path}: {emb.dtype} {emb.shape} with {len(ids)} ids, the manifest says "
                f"{entry['rows']} rows")
    if want_ids is not None and not np.array_equal(ids, want_ids):
        return f"{ids_path}: passage ids differ from the table's rows {entry['start']}.."
    return None


def conflicts(directory: str, settings: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(manifest path, first differing setting) of the manifests in ``directory`` whose
    ``SETTINGS`` differ from ``settings``."""
    out = []
    for path, m in read_all_manifests(directory):
        diff = [k for k in SETTINGS if m.get(k) != settings[k]]
        if diff:
            out.append((path, f"{diff[0]}: {m.get(diff[0])!r} there, {settings[diff[0]]!r} now"))
    return out


def read_manifests(directory: str) -> Dict[str, Any]:
    """The combined manifest of every job in ``directory``: settings and ``"shards"``, the
    shard entries in row order. Raises ValueError naming the directory if jobs are missing
    or unfinished, disagree, or do not cover every row exactly once."""
    found = read_all_manifests(directory)
    if not found:
        raise ValueError(f"{directory}: no {MANIFEST_GLOB} (not an embedding directory?)")
    paths, manifests = [p for p, _ in found], [m for _, m in found]
    first = manifests[0]
    for path, m in zip(paths, manifests):
        diff = [k for k in SETTINGS if m.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"{directory}: {os.path.basename(path)} and "
                             f"{os.path.basename(paths[0])} differ in {diff} (mixed runs)")
    n, have = first["num_shards"], {m["shard_id"] for m in manifests}
    missing = sorted(set(range(n)) - have)
    unfinished = sorted(m["shard_id"] for m in manifests if not m.get("complete"))
    if missing or unfinished:
        raise ValueError(f"{directory}: incomplete: jobs {missing} of {n} have no manifest, "
                         f"jobs {unfinished} have not finished")
    shards = sorted((e for m in manifests for e in m["shards"].values()), key=lambda e: e["start"])
    row = 0
    for e in shards:
        if e["start"] != row:
            raise ValueError(f"{directory}: rows {min(row, e['start'])}..{max(row, e['start'])} "
                             "are covered twice or not at all by the shards")
        row += e["rows"]
    if row != first["num_passages"]:
        raise ValueError(f"{directory}: shards cover {row} rows of {first['num_passages']}")
    return {**{k: first.get(k) for k in SETTINGS + ("dim",)}, "shards": shards}


def iter_shards(directory: str, table: Optional[PassageTable] = None,
                verify: bool = True) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(ids, emb)`` one shard at a time in row order (emb a read-only memmap), each
    verified just before it is yielded: sha256 of both files, row counts, and the ids
    against ``table``'s rows if given (e.g. FAISS ``add`` shard by shard).

    Raises:
      ValueError: naming the directory, for missing jobs, another table, a bad shard.
    """
    combined = read_manifests(directory)
    if table is not None and (table.checksum != combined["table_checksum"]
                              or len(table) != combined["num_passages"]):
        raise ValueError(f"{directory}: embeddings of another passage table (checksum "
                         f"{combined['table_checksum']}, this table's is {table.checksum})")
    for e in combined["shards"]:
        want = (None if table is None else
                np.asarray(table.ids[e["start"]:e["start"] + e["rows"]], dtype=str))
        why = (shard_problem(directory, e, want, combined["dim"], combined["dtype"])
               if verify else None)
        if why:
            raise ValueError(f"{directory}: shard at row {e['start']} is invalid: {why}")
        yield (np.load(os.path.join(directory, e["ids_file"]), allow_pickle=False),
               np.load(os.path.join(directory, e["emb_file"]), mmap_mode="r"))


def load_shards(directory: str, table: Optional[PassageTable] = None,
                verify: bool = True) -> Tuple[List[np.ndarray], np.ndarray]:
    """Every shard verified up front, as in ``iter_shards``.

    Returns:
      (per-shard embeddings [rows_k, D], read-only memmaps in row order; all passage ids).
    """
    shards = list(iter_shards(directory, table, verify))
    ids = np.concatenate([i for i, _ in shards]) if shards else np.zeros(0, str)
    return [e for _, e in shards], ids


def load_embeddings(directory: str, table: PassageTable, verify: bool = True) -> np.ndarray:
    """All embeddings [P, D] (stored dtype) aligned to ``table``'s rows; the ids are
    compared with the table's even with ``verify=False`` (which skips the sha256)."""
    embs, ids = load_shards(directory, table, verify)
    if not np.array_equal(ids, np.asarray(table.ids, dtype=str)):
        raise ValueError(f"{directory}: stored passage ids differ from the table's")
    return np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)

