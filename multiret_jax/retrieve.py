r"""Dense retrieval with a trained run on a KILT-format benchmark: encode the corpus, index
it with FAISS, retrieve for every task, write KILT guess and TREC run files, score them.

    python -m multiret_jax.retrieve --model_dir=runs/taco_tiny --out_dir=runs/taco_tiny/dense
    python -m multiret_jax.retrieve --model_dir=RUN --data_dir=/data/kilt --out_dir=OUT \
        --index_spec=HNSW32 --ef_search=256 --tasks=nq,fever --split=dev --k=100
    python -m multiret_jax.retrieve --model_dir=RUN --data_dir=KILT --out_dir=OUT \
        --emb_dir=RUN/emb --index_spec="IVF1024,SQ8" --nprobe=64  # shards of index.encode
    python -m multiret_jax.retrieve --model_dir=RUN --data_dir=KILT --out_dir=OUT --split=test
    python -m multiret_jax.experiments.compare --runs bm25=runs/bm25 taco=OUT

1. The run: ``<model_dir>/config.gin`` (the run's full gin config, written by ``train.py``;
   a run without one needs ``--gin_file``), then ``--gin_file`` / ``--gin_param``
   overrides; the model, ``final_params.safetensors`` and the tokenizer (``run_dir.py``).
2. The corpus (``--data_dir``, default the run's ``train.data_dir`` / ``<model_dir>/minikilt``)
   chunked as in training, encoded into verified shards in ``--emb_dir`` (default
   ``<out_dir>/emb``; resumed, shards already there reused) and indexed shard by shard into
   ``--index_dir`` (default ``<out_dir>/index/<spec>``); a saved index of the same
   embeddings is loaded instead (``index/corpus.py``), so a second run encodes nothing.
3. Queries: each task's ``input`` with the task's prefix or type marker, length and query
   tower exactly as training and validation format them (``encoding.encode_queries_of``).
4. Top-``k`` passages per query, then the files and scores of ``evaluate.py``
   (``evaluate.evaluate_tasks``): ``guesses/<task>-<split>-guess.jsonl`` (one output, pages
   de-duplicated in rank order, each with its best passage's span), ``trec/<task>-<split>.trec``
   (``qid Q0 passage_id rank score run_name``), ``results.json`` (KILT scorer's page metrics
   from the written guess files, passage metrics; None for records without gold, e.g.
   ``--split=test``, which still get guess files) and ``table.{md,csv,json}``.

``--nprobe`` (IVF) and ``--ef_search`` (HNSW; searches use at least ``k``) set search
parameters; they do not change the saved index.

Several processes (``--multihost``, one per host; ``jax.distributed``, like the trainer's
``train.multihost``): each process encodes only its share of the corpus into the shared
``--emb_dir`` (``index/distributed_search.py``; a complete ``--emb_dir`` of the same
embeddings, e.g. from ``index.encode`` jobs, is used as it is), builds an index of
``--index_spec`` over its own block of shards in memory (``--index_dir`` is not used) and
every query is searched by all processes, their top-k merged (score, then row); only
process 0 writes the guess, TREC and results files::

    python -m multiret_jax.retrieve --model_dir=RUN --out_dir=OUT --multihost \
        --coordinator_address=host0:1234 --num_processes=4 --process_id=$I
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from absl import flags

import jax

from multiret_jax import cli, evaluate, processes, tables
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import Task, benchmark_tasks
from multiret_jax.encoding import encode_queries_of
from multiret_jax.gin_utils import define_gin_flags
from multiret_jax.index.corpus import EMB_KEYS, corpus_index
from multiret_jax.index.distributed_search import ShardSearcher, encode_share
from multiret_jax.index.encode import passage_encoder, tokenizer_fingerprint
from multiret_jax.index.faiss_index import DenseIndex, check_index_spec
from multiret_jax.index.shards import read_all_manifests, read_manifests
from multiret_jax.run_dir import TrainedRun, load_run, parse_run_config, run_table

log = logging.getLogger(__name__)


class DenseRetriever:
    """A trained run's query encoder over a ``DenseIndex`` of its passage table (index row
    r = table row r), or a ``ShardSearcher`` over every process's shards, with
    ``search_task`` for ``evaluate.evaluate_tasks``."""

    def __init__(self, run: TrainedRun, index: Union[DenseIndex, ShardSearcher],
                 batch_size: int = 64, progress: bool = True):
        self.run, self.index = run, index
        self.batch_size, self.progress = batch_size, progress

    def encode(self, task: Task, queries: Sequence[str]) -> np.ndarray:
        """[Q, D] embeddings of raw queries of ``task``, formatted as in training."""
        r = self.run
        return encode_queries_of(r.model, r.params, r.tokenizer, task, queries, r.marker,
                                 r.query_len, self.batch_size, progress=self.progress)

    def search_task(self, task: Task, queries: Sequence[str],
                    k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(rows, scores) [Q, k]: table rows best first (-1: none found) and inner products."""
        return self.index.search(self.encode(task, queries), k, progress=self.progress)


class Rankings:
    """Rankings searched before (``{task: (rows, scores)}``), handed to
    ``evaluate.evaluate_tasks`` by process 0 after every process took part in the searches."""

    def __init__(self, rankings: Dict[str, Tuple[np.ndarray, np.ndarray]]):
        self.rankings = rankings

    def search_task(self, task: Task, queries: Sequence[str],
                    k: int) -> Tuple[np.ndarray, np.ndarray]:
        rows, scores = self.rankings[task.name]
        if len(rows) != len(queries) or rows.shape[1] < k:
            raise ValueError(f"{task.name}: {rows.shape} rankings searched for "
                             f"{len(queries)} queries at k={k}")
        return rows[:, :k], scores[:, :k]


def _shared_embeddings(run: TrainedRun, table: PassageTable, emb_dir: str,
                       shard_size: Optional[int], dtype: Optional[str], **kwargs
                       ) -> Dict[str, Any]:
    """Every process's share of the corpus encoded into ``emb_dir`` (``encode_share``), or
    the complete shards already there when they are of this run's embeddings.

    Args:
      run, table, emb_dir: the run, its passages and the shared shard directory.
      shard_size, dtype: of new shards (default: those of shards there, else 100,000 and
        float32).
      **kwargs: more ``encode_corpus`` options (batch_size, overwrite, progress).
    Returns:
      ``{"encoded": [...], "reused": [...], "verify": bool}`` (this process's shards;
      ``verify``: shards not checked yet).
    """
    identity = {"model_fingerprint": run.fingerprint, "passage_len": run.passage_len,
                "tokenizer_sha256": tokenizer_fingerprint(run.tokenizer),
                "table_checksum": table.checksum, "num_passages": len(table)}
    found = read_all_manifests(emb_dir) if os.path.isdir(emb_dir) else []
    try:
        combined = read_manifests(emb_dir) if found else None
    except ValueError:  # unfinished: encode_share resumes it
        combined = None
    there = found[0][1] if found else {}
    processes.barrier("retrieve_emb_checked")  # nobody writes before everyone has looked
    if combined is not None and all(combined.get(k) == identity[k] for k in EMB_KEYS):
        log.info("%s: using the complete embeddings of %d encoding jobs", emb_dir,
                 combined["num_shards"])
        return {"encoded": [], "reused": list(range(len(combined["shards"]))), "verify": True}
    res = encode_share(passage_encoder(run.model, run.params), run.tokenizer, table, emb_dir,
                       fingerprint=run.fingerprint, passage_len=run.passage_len,
                       shard_size=shard_size or there.get("shard_size") or 100_000,
                       dtype=dtype or there.get("dtype") or "float32",
                       metadata={"params": os.path.abspath(run.params_path)}, **kwargs)
    return {"encoded": res["encoded"], "reused": res["reused"], "verify": False}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "run"


def run_retrieval(model_dir: str, out_dir: str, data_dir: Optional[str] = None, *,
                  emb_dir: Optional[str] = None, index_dir: Optional[str] = None,
                  index_spec: str = "Flat", tasks: Optional[Sequence[str]] = None,
                  split: str = "dev", k: int = 100, ks: Sequence[int] = (1, 5, 10, 20),
                  nprobe: Optional[int] = None, ef_search: Optional[int] = None,
                  gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                  params_path: Optional[str] = None, tokenizer_dir: Optional[str] = None,
                  batch_size: Optional[int] = None, shard_size: Optional[int] = None,
                  dtype: Optional[str] = None, train_size: int = 100_000, seed: int = 0,
                  overwrite: bool = False, run_name: Optional[str] = None,
                  progress: bool = True, on_empty_query: str = "warn") -> Dict[str, Any]:
    """Retrieves with a trained run for every task, writes guess / TREC files, scores them.
    Replaces the process's gin config with the run's (``run_dir.parse_run_config``).

    Args:
      model_dir: the training run directory.
      out_dir: guesses/, trec/, results.json, table.*; default home of emb/ and index/.
      data_dir: KILT directory (default the run's ``train.data_dir`` or its mini-KILT).
      emb_dir, index_dir: shard / index directories (default ``<out_dir>/emb``,
        ``<out_dir>/index/<spec>``).
      index_spec: ``faiss.index_factory`` string ("Flat", "HNSW32", "IVF1024,SQ8").
      tasks, split: tasks (default every task with a ``split`` file) and split ("dev",
        "train", "test": no gold, guess and run files only).
      k, ks: passages per query; metric cut-offs.
      nprobe, ef_search: IVF / HNSW search parameters.
      gin_files, gin_params: after (or, without ``config.gin``, instead of) the run's config.
      params_path, tokenizer_dir: default the run's.
      batch_size: encoder batch (default ``train.eval_batch_size``).
      shard_size, dtype: of new embedding shards (default: those in ``emb_dir``).
      train_size, seed: training sample of trainable indexes (IVF, PQ).
      overwrite: replace shards / an index made otherwise instead of raising.
      run_name: TREC run name (default the run directory's name).
      progress: tqdm bars.
      on_empty_query: "warn" or "fail" when a task has empty or blank queries.
    With several JAX processes (``jax.distributed`` initialised first) every process must
    call it: each encodes its share of the corpus into ``emb_dir`` and indexes its shards
    in memory (``index_dir`` unused); process 0 writes the files.

    Returns:
      The results dict (also ``results.json``): evaluate.py's keys plus the run, index and
      encoding details ("index": built / loaded, "encoded_shards", "reused_shards" of this
      process); on processes other than 0 only those details (nothing written).
    Raises:
      FileNotFoundError: no run directory, no config.gin (without ``gin_files``), no
        parameters / tokenizer / task files. ValueError: shards or an index made otherwise.
    """
    evaluate.check_run_args(k, ks)
    check_index_spec(index_spec)
    parse_run_config(model_dir, gin_files, gin_params)
    run = load_run(model_dir, params_path, tokenizer_dir)
    table, data_dir = run_table(model_dir, data_dir)
    task_list = benchmark_tasks(data_dir, split, tasks)  # fail before encoding
    # every task file read and validated before encoding (and read only once)
    records = evaluate.read_task_records(data_dir, task_list, split, on_empty_query)
    check_index_spec(index_spec, len(table), train_size=train_size)
    batch_size = batch_size or run.batch_size
    emb_dir = emb_dir or os.path.join(out_dir, "emb")
    index_dir = index_dir or os.path.join(out_dir, "index", _slug(index_spec))
    main_process = jax.process_index() == 0
    if main_process:
        os.makedirs(out_dir, exist_ok=True)
    search_params = {name: v for name, v in (("nprobe", nprobe), ("efSearch", ef_search))
                     if v is not None}
    t0 = time.time()
    if jax.process_count() > 1:  # each process encodes and indexes its share
        info = _shared_embeddings(run, table, emb_dir, shard_size, dtype,
                                  batch_size=batch_size, overwrite=overwrite,
                                  progress=progress and main_process)
        index: Any = ShardSearcher(emb_dir, table, index_spec=index_spec,
                                   index_params=search_params, seed=seed,
                                   verify=info["verify"], progress=progress and main_process)
        info["index"], index_dir = "built", None
        log.info("process %d of %d: %s index over %d shards (%d encoded, %d reused) in %.1fs",
                 jax.process_index(), jax.process_count(), index_spec, len(index.entries),
                 len(info["encoded"]), len(info["reused"]), time.time() - t0)
    else:
        index, info = corpus_index(run, table, emb_dir, index_dir, index_spec,
                                   train_size=train_size, seed=seed, shard_size=shard_size,
                                   dtype=dtype, batch_size=batch_size, overwrite=overwrite,
                                   progress=progress)
        index.set_params(**search_params)
        log.info("index %s: %s (%d passages; %d shards encoded, %d reused) in %.1fs",
                 index_dir, info["index"], index.ntotal, len(info["encoded"]),
                 len(info["reused"]), time.time() - t0)
    index_s = time.time() - t0
    header = {"retriever": "dense", "run_name": _slug(run_name or os.path.basename(
                  os.path.normpath(os.path.abspath(model_dir)))),
              "model_dir": os.path.abspath(model_dir), "params": os.path.abspath(run.params_path),
              "index_spec": index_spec, "index_dir": index_dir, "emb_dir": emb_dir,
              "index": info["index"], "encoded_shards": info["encoded"],
              "reused_shards": info["reused"], "search_params": search_params, "k": k,
              "marker": run.marker.marker, "marker_format": run.marker.marker_format,
              "marker_in_query_len": run.marker.marker_in_len, "query_len": run.query_len, "passage_len": run.passage_len,
              "index_seconds": index_s, "processes": jax.process_count()}
    retriever: Any = DenseRetriever(run, index, batch_size, progress and main_process)
    if jax.process_count() > 1:  # every process takes part in every search
        t0 = time.time()
        retriever = Rankings({t.name: retriever.search_task(
            t, [r.input for r in records[t.name][1]], k) for t in task_list})
        header["search_seconds"] = time.time() - t0
        if not main_process:
            processes.barrier("retrieve_written", timeout_s=24 * 3600)
            return header  # process 0 writes and scores
    results = evaluate.evaluate_tasks(retriever, table, data_dir, out_dir, task_list, split, k,
                                      ks, header, records=records)
    processes.barrier("retrieve_written", timeout_s=24 * 3600)
    return results


FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "model_dir", "out_dir", "data_dir", "emb_dir", "index_dir",
                       "params", "tokenizer_dir")
    if FLAGS.multihost:  # before anything starts a JAX backend
        processes.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif any(v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)):
        raise cli.UsageError("--coordinator_address, --num_processes and --process_id need "
                             "--multihost")
    results = run_retrieval(
        FLAGS.model_dir, FLAGS.out_dir, FLAGS.data_dir, emb_dir=FLAGS.emb_dir,
        index_dir=FLAGS.index_dir, index_spec=FLAGS.index_spec, tasks=FLAGS.tasks,
        split=FLAGS.split, k=FLAGS.k, ks=cli.int_list("ks", FLAGS.ks), nprobe=FLAGS.nprobe,
        ef_search=FLAGS.ef_search, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
        params_path=FLAGS.params, tokenizer_dir=FLAGS.tokenizer_dir,
        batch_size=FLAGS.batch_size, shard_size=FLAGS.shard_size, dtype=FLAGS.dtype,
        train_size=FLAGS.train_size, overwrite=FLAGS.overwrite, run_name=FLAGS.run_name,
        on_empty_query=FLAGS.on_empty_query)
    if jax.process_index() != 0:  # process 0 writes and prints
        return
    print(f"\n{results['run_name']} ({results['index_spec']} index, {results['index']}) on "
          f"{results['data_dir']} ({results['split']}, {results['num_passages']} passages), "
          "KILT metrics x100:\n")
    print(tables.format_table(evaluate.result_rows(results), list(results["tasks"])))
    if evaluate.missing_note(results):
        print(evaluate.missing_note(results))
    print(f"guess files, TREC run files and tables in {FLAGS.out_dir}")


def define_flags() -> None:
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Trained run directory.", required=True)
    flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
    flags.DEFINE_string("data_dir", None, "KILT directory (default: the run's data).")
    flags.DEFINE_string("emb_dir", None, "Embedding shards (default: <out_dir>/emb).")
    flags.DEFINE_string("index_dir", None, "FAISS index (default: <out_dir>/index/<spec>).")
    flags.DEFINE_string("index_spec", "Flat", "faiss.index_factory string (Flat, HNSW32, "
                        "IVF1024,SQ8, ...).")
    flags.DEFINE_list("tasks", None, "Task names (default: all with files for --split).")
    flags.DEFINE_string("split", "dev", "dev, train or test (test: guess files only).")
    flags.DEFINE_integer("k", 100, "Passages retrieved per query.", lower_bound=1)
    flags.DEFINE_list("ks", ["1", "5", "10", "20"], "Metric cut-offs.")
    flags.DEFINE_integer("nprobe", None, "IVF lists searched.", lower_bound=1)
    flags.DEFINE_integer("ef_search", None, "HNSW beam width (at least k is used).",
                         lower_bound=1)
    flags.DEFINE_string("params", None, "Parameter file (default: final_params.safetensors).")
    flags.DEFINE_string("tokenizer_dir", None, "Tokenizer directory (default: the run's).")
    flags.DEFINE_integer("batch_size", None, "Encoder batch (default: train.eval_batch_size).",
                         lower_bound=1)
    flags.DEFINE_integer("shard_size", None, "Passages per shard (default: existing / 100000).",
                         lower_bound=1)
    flags.DEFINE_enum("dtype", None, ["float32", "float16"], "Stored embedding dtype.")
    flags.DEFINE_integer("train_size", 100_000, "Training sample of IVF / PQ indexes.",
                         lower_bound=1)
    flags.DEFINE_boolean("overwrite", False, "Replace shards / an index made otherwise.")
    flags.DEFINE_string("run_name", None, "TREC run name (default: the run directory's name).")
    flags.DEFINE_enum("on_empty_query", "warn", ["warn", "fail"], "Empty or blank queries: "
                      "warn with their count and ids, or fail before encoding.")
    flags.DEFINE_boolean("multihost", False, "Several processes (jax.distributed): each "
                         "encodes and searches its share of the corpus; process 0 writes.")
    flags.DEFINE_string("coordinator_address", None, "With --multihost: process 0's host:port "
                        "(default: auto-detected, e.g. on TPU pods or SLURM).")
    flags.DEFINE_integer("num_processes", None, "With --multihost: the process count.",
                         lower_bound=1)
    flags.DEFINE_integer("process_id", None, "With --multihost: this process (0 .. "
                         "num_processes - 1).", lower_bound=0)


TOOL = "retrieve"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
