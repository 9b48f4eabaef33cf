r"""Retrieve for every task of a KILT-format benchmark, score it and print the papers' table.

    python -m multiret_jax.evaluate                        # BM25 on the generated mini-KILT
    python -m multiret_jax.evaluate --data_dir=/path/kilt --out_dir=runs/bm25_kilt \
        --gin_param="BM25Retriever.k1=1.2"

A benchmark directory holds ``knowledge_source.jsonl`` and KILT task files named as the
task registry says (``nq-dev-kilt.jsonl``, ...). Without ``--data_dir`` the embedded
mini-KILT is generated into ``<out_dir>/minikilt`` first.

Writes to ``--out_dir``: KILT guess files (``guesses/<task>-<split>-guess.jsonl``: one
output, pages de-duplicated in rank order, each with the span of its best passage), TREC
run files (``trec/<task>-<split>.trec``, passage level, ``trec.py``), ``results.json`` (per
task, the official KILT scorer's page-level metrics, computed from the written files,
under "page"; the same metrics over passage ids under "passage", None for a task without
passage-level gold, and its R-precision as "passage_rprec"; a task without any gold, e.g.
a KILT test file, gets guess and run files and None metrics) and ``table.{md,csv,json}``
(page / passage R-precision, recall@5, success@5 per task + Avg). Several runs side by
side: ``python -m multiret_jax.experiments.compare``.

Retrievers (``RETRIEVERS``) have ``search(queries, k)``, or ``search_task(task, queries,
k)`` when the query depends on the task (the dense retriever of ``retrieve.py``, which
shares ``evaluate_tasks`` and so writes the same files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
from absl import flags
from tqdm import tqdm

from multiret_jax import cli, metrics, outputs, tables, trec
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import passage_gold_ids
from multiret_jax.data.tasks import Task, benchmark_tasks, task_path
from multiret_jax.gin_utils import define_gin_flags, parse_gin
from multiret_jax.outputs import check_queries

log = logging.getLogger(__name__)

# name -> builder(table) returning an object with search(queries, k) -> (rows, scores).
RETRIEVERS: Dict[str, Callable[[PassageTable], object]] = {
    "bm25": lambda table: BM25Retriever().index(table),
}


def register_retriever(name: str, builder: Callable[[PassageTable], object]) -> None:
    RETRIEVERS[name] = builder


def read_records(path: str) -> List[kilt.KiltRecord]:
    """A task file's records for retrieval: gold outputs optional (test files have none)."""
    return kilt.read_task_file(path, require_output=False)


def page_guesses(rows: np.ndarray, scores: np.ndarray, table: PassageTable) -> List[List[dict]]:
    """Per query, KILT provenance for the ranked pages (best passage's span for each page)."""
    out = []
    for ranked, sc in zip(rows, scores):
        seen: Dict[str, dict] = {}
        for r, s in zip(ranked, sc):
            if r < 0:  # no result (an approximate index found fewer than k)
                continue
            p = table[int(r)]
            if p.page_id not in seen:
                seen[p.page_id] = {"wikipedia_id": p.page_id, "title": p.title,
                                   "start_paragraph_id": p.start_paragraph_id,
                                   "end_paragraph_id": p.end_paragraph_id,
                                   "passage_id": p.pid, "score": float(s)}
        out.append(list(seen.values()))
    return out


def search_task(retriever: Any, task: Task, queries: Sequence[str],
                k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, scores) [Q, k] of ``retriever`` for one task's raw queries: its
    ``search_task(task, queries, k)`` when it has one (queries formatted per task), else
    ``search(queries, k)``."""
    by_task = getattr(retriever, "search_task", None)
    if by_task is not None:
        return by_task(task, queries, k)
    return retriever.search(list(queries), k=k, show_progress=False)


def score_task(task: Task, records: List[kilt.KiltRecord], gold_path: str, rows: np.ndarray,
               scores: np.ndarray, table: PassageTable, guess_path: str, ks: Sequence[int],
               trec_path: Optional[str] = None, run_name: str = "run") -> dict:
    """Writes one task's KILT guess file (and TREC run file) for a passage ranking and
    scores it: page level from the written guess file with the KILT scorer
    (``metrics.evaluate``), passage level over the records with passage gold.

    Args:
      task, records, gold_path: the task, its records and their file.
      rows, scores: [Q, k] passage rows (-1: none) and scores, best first.
      table: the passage table of ``rows``.
      guess_path, trec_path: output files (no TREC file when None).
      ks: cut-offs of precision / recall / success@k.
      run_name: the TREC run name.
    Returns:
      ``{"task", "num_queries", "page", "passage_rprec", "passage", "passage_queries",
      "guess_file", "trec_file"}``; metrics None for records without gold (test files).
    """
    guesses = page_guesses(rows, scores, table)
    kilt.write_jsonl(guess_path, (kilt.guess_record(r.id, g, input_text=r.input)
                                  for r, g in zip(records, guesses)))
    if trec_path is not None:
        ids = [[table.ids[int(i)] if i >= 0 else "" for i in ranked] for ranked in rows]
        trec.write_trec(trec_path, [r.id for r in records], ids, scores, run_name)
    page = None
    if any(r.provenance_sets() for r in records):
        page = metrics.evaluate(gold_path, guess_path, ks=ks, rank_keys=["wikipedia_id"])
    else:
        log.warning("%s: no gold provenance (a test file?): guess file only", gold_path)
    # Passage level: defined for records whose provenance has paragraph spans; the same
    # metrics as the page level (KILT semantics) with passage ids as the ranked ids.
    p_scores = []
    for rec, ranked in zip(records, rows):
        gold = passage_gold_ids(rec, table)
        if gold:
            p_scores.append(metrics.record_metrics([table.ids[i] for i in ranked if i >= 0],
                                                   gold, ks))
    passage = ({key: float(np.mean([s[key] for s in p_scores])) for key in p_scores[0]}
               if p_scores else None)
    return {"task": task.name, "num_queries": len(records), "page": page,
            "passage_rprec": passage["Rprec"] if passage else None, "passage": passage,
            "passage_queries": len(p_scores), "guess_file": guess_path, "trec_file": trec_path}


def evaluate_task(task: Task, records: List[kilt.KiltRecord], gold_path: str, retriever,
                  table: PassageTable, guess_path: str, depth: int, ks: Sequence[int],
                  trec_path: Optional[str] = None, run_name: str = "run") -> dict:
    """Retrieves ``depth`` passages for one task's records (``search_task``), writes its
    guess (and TREC) file and scores it (``score_task``; adds "search_seconds")."""
    t0 = time.time()
    rows, scores = search_task(retriever, task, [r.input for r in records], depth)
    search_s = time.time() - t0
    return {**score_task(task, records, gold_path, rows, scores, table, guess_path, ks,
                         trec_path, run_name), "search_seconds": search_s}


def evaluate_tasks(retriever: Any, table: PassageTable, data_dir: str, out_dir: str,
                   task_list: Sequence[Task], split: str, depth: int, ks: Sequence[int],
                   results: Dict[str, Any], on_empty_query: str = "warn",
                   records: Optional[Dict[str, Tuple[str, List[kilt.KiltRecord]]]] = None
                   ) -> dict:
    """Every task of ``task_list``: guess files, TREC files, scores; then ``results.json``
    and ``table.{md,csv,json}`` in ``out_dir``.

    Every task file is read and validated before anything is written, and the outputs
    are staged (``outputs.staged``): they replace an earlier run's ``guesses/``,
    ``trec/``, ``results.json`` and ``table.*`` in ``out_dir`` only when every task
    succeeded, so a failure leaves the previous complete output as it was.

    Args:
      retriever: ``search(queries, k)`` or ``search_task(task, queries, k)``.
      table: its passage table; data_dir: the task files; split: which ones.
      depth, ks: passages per query; metric cut-offs.
      results: the header of ``results.json``: at least "retriever" (its name; the
        TREC run name unless there is a "run_name").
      on_empty_query: "warn" (count and ids logged) or "fail" for empty / blank queries.
      records: ``read_task_records``'s result when the caller has read them already.
    Returns:
      ``results`` with "data_dir", "split", "num_passages", "passage_checksum" and "tasks".
    """
    check_run_args(depth, ks)
    if records is None:  # read and validate every input first
        records = read_task_records(data_dir, task_list, split, on_empty_query)
    results = {**results, "data_dir": data_dir, "split": split, "num_passages": len(table),
               "passage_checksum": table.checksum, "tasks": {}}
    with outputs.staged(out_dir) as stage:
        for task in tqdm(task_list, desc="tasks"):
            gold_path, recs = records[task.name]
            guess = os.path.join("guesses", f"{task.name}-{split}-guess.jsonl")
            run_file = os.path.join("trec", f"{task.name}-{split}.trec")
            r = evaluate_task(task, recs, gold_path, retriever, table,
                              os.path.join(stage, guess), depth, ks, os.path.join(stage, run_file),
                              results.get("run_name") or results["retriever"])
            results["tasks"][task.name] = {**r, "guess_file": os.path.join(out_dir, guess),
                                           "trec_file": os.path.join(out_dir, run_file)}
        with open(os.path.join(stage, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        tables.write_tables(os.path.join(stage, "table"), result_rows(results),
                            list(results["tasks"]), note=missing_note(results))
    return results


def read_task_records(data_dir: str, task_list: Sequence[Task], split: str,
                      on_empty_query: str = "warn"
                      ) -> Dict[str, Tuple[str, List[kilt.KiltRecord]]]:
    """``{task: (file, records)}`` of every task's ``split`` file, read and validated, with
    blank queries warned about or refused (``outputs.check_queries``)."""
    out = {}
    for task in task_list:
        path = task_path(data_dir, task, split)
        out[task.name] = (path, read_records(path))
        check_queries([r.id for r in out[task.name][1]], [r.input for r in out[task.name][1]],
                      path, on_empty_query)
    return out


def check_run_args(depth: int, ks: Sequence[int]) -> None:
    """``ValueError`` for a depth or cut-off that is not a positive integer."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth (passages per query) must be an integer >= 1, got {depth!r}")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad or not ks:
        raise ValueError(f"ks (metric cut-offs) must be integers >= 1, got {list(ks)!r}")


def missing_note(results: dict) -> Optional[str]:
    """A line for under the table when tasks have no score (no gold, e.g. an empty or a
    test file): the average covers only the others."""
    per_task = results["tasks"]
    unscored = [t for t, r in per_task.items() if not r.get("page")]
    if not unscored:
        return None
    scored = len(per_task) - len(unscored)
    return (f"No score for {', '.join(unscored)} (no records with gold provenance): "
            f"Avg covers the other {scored} of {len(per_task)} tasks.")


@gin.configurable
def run_evaluation(data_dir: Optional[str] = None, out_dir: str = "runs/bm25",
                   tasks: Optional[Sequence[str]] = None, split: str = "dev",
                   retriever: str = "bm25", depth: int = 100, ks: Sequence[int] = (1, 5, 10, 20),
                   chunk_mode: str = "page", words_per_passage: int = 100,
                   minikilt_scale: float = 1.0, seed: int = 0,
                   on_empty_query: str = "warn") -> dict:
    """Runs retrieval + KILT scoring for every task; returns the results dict.

    Args:
      data_dir: KILT-format benchmark; None generates the mini-KILT into out_dir/minikilt.
      out_dir: where guess files, results.json and tables go.
      tasks: task names (default: all registered tasks with a file for ``split``).
      split: "dev", "train" or "test" (no gold: guess and run files only).
      retriever: a name in ``RETRIEVERS``.
      depth: passages retrieved per query.
      ks: cut-offs for precision/recall/success@k.
      chunk_mode, words_per_passage: passage chunking (see ``data.passages``).
      minikilt_scale, seed: size and seed of the generated benchmark.
      on_empty_query: "warn" or "fail" when a task has empty or blank queries.
    """
    if retriever not in RETRIEVERS:
        raise KeyError(f"unknown retriever {retriever!r}; known: {sorted(RETRIEVERS)}")
    check_run_args(depth, ks)
    if on_empty_query not in outputs.EMPTY_QUERY_POLICIES:
        raise ValueError(f"on_empty_query must be one of {outputs.EMPTY_QUERY_POLICIES}, "
                         f"got {on_empty_query!r}")
    if not (isinstance(words_per_passage, int) and words_per_passage >= 1):
        raise ValueError(f"words_per_passage must be an integer >= 1, got {words_per_passage!r}")
    os.makedirs(out_dir, exist_ok=True)
    if data_dir is None:
        data_dir = os.path.join(out_dir, "minikilt")
        minikilt.generate(data_dir, scale=minikilt_scale, seed=seed)
    task_list = benchmark_tasks(data_dir, split, tasks)
    ks_path = os.path.join(data_dir, "knowledge_source.jsonl")
    log.info("chunking %s into %d-word passages (%s mode)", ks_path, words_per_passage, chunk_mode)
    pages = tqdm(kilt.iter_knowledge_source(ks_path), desc="pages", unit=" pages", mininterval=2)
    table = PassageTable.from_pages(pages, words_per_passage, chunk_mode)
    t0 = time.time()
    ret = RETRIEVERS[retriever](table)
    return evaluate_tasks(ret, table, data_dir, out_dir, task_list, split, depth, ks,
                          {"retriever": retriever, "index_seconds": time.time() - t0},
                          on_empty_query)


def result_rows(results: dict, ks: Sequence[int] = (5,)) -> Dict[str, Dict[str, Optional[float]]]:
    """Table rows (percent) from a results dict: page and passage R-precision, then page and
    passage recall@k and success@k for each k in ``ks`` that was scored (k >= 2; KILT
    defines no recall/success at 1). Passage values are "-" for tasks without passage gold.
    """
    name, per_task = results["retriever"].upper(), results["tasks"]

    def level(r, lvl):
        return (r.get("page") if lvl == "page" else r.get("passage")) or {}

    def row(lvl, key):
        vals = {t: level(r, lvl).get(key) for t, r in per_task.items()}
        return {t: None if v is None else 100 * v for t, v in vals.items()}

    rows = {f"{name} page R-prec": row("page", "Rprec"),
            f"{name} passage R-prec": {t: None if r["passage_rprec"] is None
                                       else 100 * r["passage_rprec"] for t, r in per_task.items()}}
    for k in ks:
        for key, label in ((f"recall@{k}", f"recall@{k}"), (f"success_rate@{k}", f"success@{k}")):
            for lvl in ("page", "passage"):
                if any(key in level(r, lvl) for r in per_task.values()):
                    rows[f"{name} {lvl} {label}"] = row(lvl, key)
    return rows


FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "data_dir", "out_dir")
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    cli.absolute_gin_paths()
    results = run_evaluation(data_dir=FLAGS.data_dir, out_dir=FLAGS.out_dir,
                             tasks=FLAGS.tasks, split=FLAGS.split,
                             **({"on_empty_query": FLAGS.on_empty_query}
                                if FLAGS.on_empty_query else {}))
    print(f"\n{results['retriever']} on {results['data_dir']} ({results['split']}, "
          f"{results['num_passages']} passages), KILT metrics x100:\n")
    print(tables.format_table(result_rows(results), list(results["tasks"])))
    if missing_note(results):
        print(missing_note(results))
    print(f"guess files, TREC run files and tables in {FLAGS.out_dir}")


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    define_gin_flags()
    flags.DEFINE_string("data_dir", None, "KILT-format benchmark dir (default: generated mini-KILT).")
    flags.DEFINE_string("out_dir", "runs/bm25", "Output directory.")
    flags.DEFINE_list("tasks", None, "Task names (default: all with files).")
    flags.DEFINE_string("split", "dev", "Split to evaluate.")
    flags.DEFINE_enum("on_empty_query", None, ["warn", "fail"], "Empty or blank queries: "
                      "warn with their count and ids (default) or fail.")


TOOL = "evaluate"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
