"""A trained run's corpus index, made once and reused: embeddings in verified ``.npy``
shards (``encode.py``), a FAISS index built from them shard by shard (``faiss_index.py``),
both checked against the model, tokenizer, passage length and passage table before reuse.

    run = run_dir.load_run(model_dir)
    index, info = corpus_index(run, table, emb_dir="out/emb", index_dir="out/index/HNSW32",
                               spec="HNSW32")
    info["index"]                      # "built" or "loaded"
    info["encoded"], info["reused"]    # shard indices encoded now / reused from emb_dir

``index_dir`` holds the saved ``DenseIndex`` plus ``build.json`` (written last, so a build
interrupted before it is made again): the spec, the embeddings' identity (model
fingerprint, tokenizer, passage length, dtype, table checksum) and, for indexes that need
training, ``train_size`` and ``seed``. An index whose ``build.json`` matches is loaded
without touching the embeddings; one made otherwise is an error naming the differing field
(``overwrite=True`` rebuilds it, and re-encodes shards made otherwise).

``emb_dir`` may hold the complete output of several ``index.encode`` jobs
(``--num_shards``): it is used as it is, each shard verified as it is added (missing or
unfinished jobs are an error naming them). Otherwise ``encode_corpus`` resumes there
(only missing or invalid shards are encoded), with the shard size and dtype of the shards
already there unless given. An index directory without ``build.json`` (saved by other
code) is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import faiss

from multiret_jax.data.passages import PassageTable
from multiret_jax.index.encode import encode_corpus, passage_encoder, tokenizer_fingerprint
from multiret_jax.index.faiss_index import META_FILE, DenseIndex, build_index
from multiret_jax.index.shards import iter_shards, read_all_manifests, read_manifests, write_json

log = logging.getLogger(__name__)

BUILD_FILE = "build.json"
BUILD_FORMAT = "multiret_jax.index.corpus/1"
# Embedding settings that identify an index's vectors.
EMB_KEYS = ("model_fingerprint", "tokenizer_sha256", "passage_len", "table_checksum",
            "num_passages")


def needs_training(spec: str, dim: int) -> bool:
    """Whether a ``faiss.index_factory`` index of ``spec`` must be trained (IVF, PQ, ...)."""
    try:
        return not faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT).is_trained
    except RuntimeError as e:
        raise ValueError(f"bad FAISS index spec {spec!r} for dimension {dim}: {e}") from None


def _differing(recorded: Dict[str, Any], identity: Dict[str, Any]):
    """The embedding-identity keys whose recorded value differs from ``identity``'s."""
    return [k for k in EMB_KEYS if recorded.get(k) != identity[k]]


def _identity(run: Any, table: PassageTable) -> Dict[str, Any]:
    return {"model_fingerprint": run.fingerprint,
            "tokenizer_sha256": tokenizer_fingerprint(run.tokenizer),
            "passage_len": run.passage_len, "table_checksum": table.checksum,
            "num_passages": len(table)}


def _build_key(spec: str, dim: int, identity: Dict[str, Any], train_size: int,
               seed: int) -> Dict[str, Any]:
    key = {"format": BUILD_FORMAT, "spec": spec, "dim": dim, **identity}
    if needs_training(spec, dim):
        key.update(train_size=int(train_size), seed=int(seed))
    return key


def _saved_index(index_dir: str, want: Dict[str, Any], spec: str, train_size: int, seed: int,
                 overwrite: bool) -> Optional[DenseIndex]:
    """The saved index of ``index_dir`` if its build matches, None if there is none (or an
    unfinished one). Raises ValueError for an index made otherwise unless ``overwrite``."""
    path = os.path.join(index_dir, BUILD_FILE)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(index_dir, META_FILE)):
            if not overwrite:
                raise ValueError(f"{index_dir}: an index without {BUILD_FILE} (saved by other "
                                 "code, or an interrupted build): its embeddings are unknown; "
                                 "use another index directory or overwrite")
            log.warning("%s: an index without %s; building it again (overwrite)", index_dir,
                        BUILD_FILE)
        return None
    with open(path) as f:
        try:
            built = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(built.get("dim"), int) or built["dim"] < 1:
        raise ValueError(f"{path}: no valid 'dim' (not written by {__name__}?)")
    key = _build_key(spec, built["dim"], want, train_size, seed)
    diff = [k for k in key if built.get(k) != key[k]]
    if diff:
        why = f"{diff[0]}: {built.get(diff[0])!r} there, {key[diff[0]]!r} now"
        if not overwrite:
            raise ValueError(f"{index_dir}: an index built otherwise ({why}); use another "
                             "index directory or overwrite")
        log.warning("%s: built otherwise (%s); building it again (overwrite)", index_dir, why)
        os.remove(path)
        return None
    return DenseIndex.load(index_dir, expected_checksum=want["table_checksum"])


def _shard_dir_settings(emb_dir: str, shard_size: Optional[int],
                        dtype: Optional[str]) -> Tuple[int, str]:
    """``shard_size`` and ``dtype`` given, else those of the shards in ``emb_dir``, else
    100,000 and float32."""
    found = read_all_manifests(emb_dir) if os.path.isdir(emb_dir) else []
    first = found[0][1] if found else {}
    return (shard_size or first.get("shard_size") or 100_000,
            dtype or first.get("dtype") or "float32")


def _jobs_output(emb_dir: str, identity: Dict[str, Any],
                 overwrite: bool) -> Optional[Dict[str, Any]]:
    """The combined manifest of ``emb_dir`` when several encoding jobs wrote it, else None
    (``encode_corpus`` then resumes a single-job directory). Raises ValueError naming
    missing / unfinished jobs, or the differing setting of embeddings made otherwise
    (unless ``overwrite``: then None, and ``encode_corpus`` replaces them)."""
    found = read_all_manifests(emb_dir) if os.path.isdir(emb_dir) else []
    if not found or found[0][1].get("num_shards", 1) == 1:
        return None
    combined = read_manifests(emb_dir)  # every job there and finished, or a clear error
    diff = _differing(combined, identity)
    if diff and not overwrite:
        raise ValueError(f"{emb_dir}: embeddings of {combined['num_shards']} encoding jobs made "
                         f"otherwise ({diff[0]}: {combined.get(diff[0])!r} there, "
                         f"{identity[diff[0]]!r} now); use another embedding directory or "
                         "overwrite")
    return None if diff else combined


def corpus_index(run: Any, table: PassageTable, emb_dir: str, index_dir: str,
                 spec: str = "Flat", *, train_size: int = 100_000, seed: int = 0,
                 shard_size: Optional[int] = None, dtype: Optional[str] = None,
                 batch_size: int = 128, overwrite: bool = False,
                 progress: bool = True) -> Tuple[DenseIndex, Dict[str, Any]]:
    """Loads the run's saved index of ``table`` from ``index_dir``, or encodes the corpus
    into ``emb_dir`` (resuming) and builds and saves it.

    Args:
      run: a ``run_dir.TrainedRun`` (model, params, tokenizer, passage_len, fingerprint).
      table: the passage table (index row r is table row r).
      emb_dir, index_dir: the shard and index directories (created).
      spec: ``faiss.index_factory`` string ("Flat", "HNSW32", "IVF1024,SQ8", ...).
      train_size, seed: training sample of trainable indexes.
      shard_size, dtype: of new shards (default: those already in ``emb_dir``).
      batch_size: passages per encoder call.
      overwrite: replace shards and an index made otherwise instead of raising.
      progress: tqdm bars.
    Returns:
      (index, info): info has "index" ("built" / "loaded"), "encoded" and "reused" (shard
      indices; both empty when the index was loaded) and the build key.
    Raises:
      ValueError: ``index_dir`` / ``emb_dir`` hold an index / shards made otherwise.
    """
    identity = _identity(run, table)
    index = _saved_index(index_dir, identity, spec, train_size, seed, overwrite)
    if index is not None:
        log.info("%s: reusing the saved %s index (%d vectors)", index_dir, spec, index.ntotal)
        return index, {"index": "loaded", "encoded": [], "reused": [],
                       **_build_key(spec, index.dim, identity, train_size, seed)}
    combined = _jobs_output(emb_dir, identity, overwrite)
    if combined is not None:
        log.info("%s: using the complete output of %d encoding jobs", emb_dir,
                 combined["num_shards"])
        encoded, reused, verify = [], list(range(len(combined["shards"]))), True
    else:
        shard_size, dtype = _shard_dir_settings(emb_dir, shard_size, dtype)
        res = encode_corpus(passage_encoder(run.model, run.params), run.tokenizer, table,
                            emb_dir, fingerprint=run.fingerprint, passage_len=run.passage_len,
                            shard_size=shard_size, batch_size=batch_size, dtype=dtype,
                            overwrite=overwrite, progress=progress,
                            metadata={"params": os.path.abspath(run.params_path)})
        encoded, reused, verify = res["encoded"], res["reused"], False  # just verified
    index = build_index(lambda: iter_shards(emb_dir, table, verify=verify), spec,
                        train_size=train_size, seed=seed, passage_checksum=table.checksum,
                        progress=progress)
    os.makedirs(index_dir, exist_ok=True)
    index.save(index_dir)
    key = _build_key(spec, index.dim, identity, train_size, seed)
    write_json(os.path.join(index_dir, BUILD_FILE), {**key, "emb_dir": os.path.abspath(emb_dir)})
    return index, {"index": "built", "encoded": list(encoded), "reused": list(reused), **key}


def open_saved_index(run: Any, table: PassageTable, index_dir: str,
                     **params) -> Tuple[DenseIndex, Dict[str, Any]]:
    """The run's saved index of ``table`` in ``index_dir``, read only (nothing is written
    there), every checksum verified: ``build.json``'s embedding identity (model
    fingerprint, tokenizer, passage length, table checksum and size) against the run and
    table, and the saved ``DenseIndex``'s files (``index.faiss`` and ``ids.npy`` against
    the sha256 in ``meta.json``, the passage checksum against the table).

    Args:
      run: a ``run_dir.TrainedRun``; table: its passage table; index_dir: what
        ``corpus_index`` (``retrieve.py``) saved.
      **params: search parameters (nprobe, efSearch).
    Returns:
      (index, build): the index and its ``build.json``.
    Raises:
      FileNotFoundError: no index there (the message says how to build one).
      ValueError: naming the file that is damaged, or made for another run or table.
    """
    path = os.path.join(index_dir, BUILD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (not an index saved by retrieve / "
                                "corpus_index); build one with python -m multiret_jax.retrieve "
                                f"--model_dir=... --out_dir=... --index_dir={index_dir}")
    with open(path) as f:
        try:
            built = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    want = _identity(run, table)
    diff = _differing(built, want)
    if diff:
        raise ValueError(f"{path}: an index of other embeddings ({diff[0]}: "
                         f"{built.get(diff[0])!r} there, {want[diff[0]]!r} for this run and "
                         "passage table)")
    index = DenseIndex.load(index_dir, expected_checksum=table.checksum, verify_files=True,
                            **params)
    if index.spec != built.get("spec") or index.dim != built.get("dim"):
        raise ValueError(f"{path}: spec {built.get('spec')!r} / dim {built.get('dim')} but "
                         f"the index is {index.spec!r} / {index.dim}")
    return index, built
