"""What a training run shows at its end: the table of BM25, the untrained and the trained
model on the dev sets (``<model_dir>/table.{txt,md,csv,json}``), and the final report
printed under it."""

from __future__ import annotations

import os
from typing import Dict, Optional

from multiret_jax import tables
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.passages import PassageTable
from multiret_jax.training.validation import ranking_metrics

TABLE_PREFIX = "table"


def comparison_table(model_dir: str, bm25: BM25Cache, table: PassageTable, dev, result,
                     initial, step: int, corpus: Optional[str] = None) -> str:
    """Per-task R-precision x100 of BM25 next to the model (and its initial state), written
    to ``<model_dir>/table.{txt,md,csv,json}``; returns the text.

    Args:
      bm25, table: BM25 over the passages the model was validated on, and those passages
        (the validation pool, or the whole corpus).
      corpus: what ``table`` is (``CandidatePool.label()``), named in the text.
    """
    bm = {}
    for name, records in dev.items():
        records = [r for r in records if r.input is not None]
        ranked = bm25.rankings(f"{name}-dev", [r.input for r in records], k=100)
        bm[name] = ranking_metrics(records, ranked, table)
    runs = [("BM25", bm)]
    if initial is not None:
        runs.append(("initial", initial["tasks"]))
    if result is not None:
        runs.append((f"trained ({step} steps)", result["tasks"]))
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    for label, per_task in runs:
        rows[f"{label} page R-prec"] = {t: 100 * r["page_rprec"] for t, r in per_task.items()}
    for label, per_task in runs:
        rows[f"{label} passage R-prec"] = {
            t: None if r["passage_rprec"] is None else 100 * r["passage_rprec"]
            for t, r in per_task.items()}
    names = list(dev)
    tables.write_tables(os.path.join(model_dir, TABLE_PREFIX), rows, names)
    text = ("Dev-set KILT R-precision x100 (page level is the main metric; \"initial\" is "
            f"the untrained model){f'; ranked: {corpus}' if corpus else ''}:\n\n"
            + tables.format_table(rows, names))
    if corpus and not corpus.startswith("full"):
        text += ("\nA validation pool has fewer distractors than the corpus: full-corpus "
                 f"figures come from python -m multiret_jax.retrieve --model_dir={model_dir} "
                 f"--out_dir={os.path.join(model_dir, 'retrieval')}\n")
    with open(os.path.join(model_dir, TABLE_PREFIX + ".txt"), "w") as f:
        f.write(text)
    return text


def final_report(model_dir: str, summary: dict) -> str:
    """The last thing on the screen: the comparison table (or the validation figures) and
    where the run's files are."""
    path = os.path.join(model_dir, TABLE_PREFIX + ".txt")
    if os.path.isfile(path):
        with open(path) as f:
            body = f.read()
    elif summary.get("validation"):
        v = summary["validation"]
        label = (v.get("corpus") or {}).get("label")  # (runs from before pools: none)
        body = (f"validation{f' ({label})' if label else ''}: average page R-prec "
                f"{v['avg_page_rprec']:.4f}\n")
    else:
        body = (f"{summary['completed_steps']} of {summary['steps']} steps done "
                "(rerun the same command to resume)\n")
    return (f"\n{body}\nThe run's files (checkpoints, final_params.safetensors, summary.json, "
            f"table.*, config.gin, TensorBoard events in tb/) are in {model_dir}")
