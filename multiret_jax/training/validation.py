"""Validation during training with a dense model: encode the (small) validation corpus,
exact search, page- and passage-level R-precision per task; best checkpoint by the
average page R-precision over tasks.

    res = validate(model, params, tokenizer, table, {"nq": nq_dev, "fever": fever_dev})
    res["avg_page_rprec"], res["tasks"]["nq"]["page_rprec"]

Page metrics follow the KILT scorer (``metrics.kilt_retrieval.record_metrics``): the
ranking is the retrieved passages' pages, de-duplicated in rank order; each provenance set
is one gold page list. Passage R-precision is over the records whose provenance has
paragraph spans (``provenance.passage_gold_ids``), as in ``evaluate.py``.

Passages and queries are encoded by ``encoding.py`` (length-bucketed; the jitted encoders
are compiled once per model and reused across validations).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from multiret_jax.data.kilt import KiltRecord
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import passage_gold_ids
from multiret_jax.data.tasks import Task, get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_passages_of, encode_queries_of
from multiret_jax.index.mine import exact_search
from multiret_jax.metrics.kilt_retrieval import record_metrics
from multiret_jax.models.biencoder import BiEncoder

log = logging.getLogger(__name__)


def page_ranking(rows: np.ndarray, table: PassageTable) -> list:
    """Page ids of a passage ranking, de-duplicated in rank order."""
    return list(dict.fromkeys(table.page_ids[int(r)] for r in rows if r >= 0))


def validate(model: BiEncoder, params: Any, tokenizer: Tokenization, table: PassageTable,
             task_records: Mapping[Any, Sequence[KiltRecord]], passage_len: int = 128,
             marker: str = "prefix", k: int = 100, batch_size: int = 64,
             passage_emb: Optional[np.ndarray] = None, progress: bool = True,
             query_len: Optional[int] = None) -> Dict[str, Any]:
    """Dense retrieval metrics per task on a validation corpus.

    Args:
      model, params: the bi-encoder and its parameters.
      tokenizer: the tokenization.
      table: the validation passage table.
      task_records: task name (or ``Task``) -> its dev records (records without input skip).
      passage_len: passage length in tokens.
      query_len: cap on every task's query length (e.g. a model's position limit).
      marker: query marker ("prefix", "type" or "none"; see ``Task.format_query``).
      k: passages retrieved per query.
      batch_size: encoding batch size.
      passage_emb: precomputed [P, D] passage embeddings for ``params`` (skips encoding).
    Returns:
      ``{"tasks": {task: {"page_rprec", "passage_rprec" (None without passage gold),
      "recall@5", "num_queries", "passage_queries"}}, "avg_page_rprec", "passage_emb"}``.
    """
    if passage_emb is None:
        passage_emb = encode_passages_of(model, params, tokenizer, table, passage_len,
                                         batch_size, progress)
    elif len(passage_emb) != len(table):
        raise ValueError(f"{len(passage_emb)} passage embeddings for {len(table)} passages")
    bad = int(np.sum(~np.isfinite(passage_emb).all(axis=1)))
    if bad:
        log.warning("validation: %d of %d passage embeddings are not finite (diverged model?); "
                    "they rank last", bad, len(passage_emb))
    out: Dict[str, Any] = {"tasks": {}}
    for key, records in task_records.items():
        task = key if isinstance(key, Task) else get_task(key)
        records = [r for r in records if r.input is not None]
        if not records:
            log.warning("validation: task %s has no records with input; skipped", task.name)
            continue
        q = encode_queries_of(model, params, tokenizer, task, [r.input for r in records],
                              marker, query_len, batch_size, progress=progress)
        rows, _ = exact_search(q, passage_emb, k)
        res = ranking_metrics(records, rows, table)
        out["tasks"][task.name] = res
        log.info("validation %s: page R-prec %.4f, passage R-prec %s, page recall@5 %.4f (%d queries)",
                 task.name, res["page_rprec"],
                 "n/a" if res["passage_rprec"] is None else f"{res['passage_rprec']:.4f}",
                 res["recall@5"], len(records))
    per_task = [r["page_rprec"] for r in out["tasks"].values()]
    out["avg_page_rprec"] = float(np.mean(per_task)) if per_task else 0.0
    out["passage_emb"] = passage_emb
    log.info("validation: average page R-prec %.4f over %d tasks", out["avg_page_rprec"], len(per_task))
    return out


def ranking_metrics(records: Sequence[KiltRecord], rows: np.ndarray,
                    table: PassageTable) -> Dict[str, Any]:
    """Page / passage R-precision and page recall@5 of passage rankings ``rows`` [Q, k].

    Returns:
      ``{"page_rprec", "passage_rprec" (None without passage gold), "recall@5",
      "num_queries", "passage_queries"}``.
    """
    page_r, rec5, pass_r = [], [], []
    for rec, ranked in zip(records, rows):
        gold_pages = [[p.wikipedia_id for p in s] for s in rec.provenance_sets()]
        m = record_metrics(page_ranking(ranked, table), gold_pages, ks=(1, 5))
        page_r.append(m["Rprec"])
        rec5.append(m["recall@5"])
        gold = passage_gold_ids(rec, table)
        if gold:
            pass_r.append(record_metrics([table.ids[int(i)] for i in ranked], gold, ks=(1,))["Rprec"])
    return {"page_rprec": float(np.mean(page_r)),
            "passage_rprec": float(np.mean(pass_r)) if pass_r else None,
            "recall@5": float(np.mean(rec5)), "num_queries": len(records),
            "passage_queries": len(pass_r)}


def dev_subset(records: Sequence[KiltRecord], max_queries: Optional[int], seed: int,
               name: str) -> list:
    """The records with input, or a seeded subset of ``max_queries`` of them in file order
    (the same on every process and at every validation)."""
    records = [r for r in records if r.input is not None]
    if max_queries is None or len(records) <= max_queries:
        return records
    keep = sorted(random.Random(f"{seed}/{name}/dev").sample(range(len(records)), max_queries))
    return [records[i] for i in keep]


class BestCheckpoint:
    """Tracks the best validation so far by average page R-precision (ties keep the earlier)."""

    def __init__(self, metric: str = "avg_page_rprec"):
        self.metric = metric
        self.best_value: Optional[float] = None
        self.best_step: Optional[int] = None

    def update(self, step: int, result: Mapping[str, Any]) -> bool:
        """Records ``result`` of ``step``; True if it is a new best (save this checkpoint)."""
        value = float(result[self.metric])
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_step = value, int(step)
            return True
        return False
