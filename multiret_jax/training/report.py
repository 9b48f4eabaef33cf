"""What a training run shows at its end: the table of BM25, the untrained and the trained
model on the dev sets (``<model_dir>/table.{txt,md,csv,json}``), and the final report
printed under it."""

from __future__ import annotations

import os
from typing import Dict, Optional

from multiret_jax import tables
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.passages import PassageTable
from multiret_jax.training.validation import ranking_metrics

TABLE_PREFIX = "table"


def comparison_table(model_dir: str, bm25: BM25Retriever, table: PassageTable, dev, result,
                     initial, step: int) -> str:
    """Per-task R-precision x100 of BM25 next to the model (and its initial state), written
    to ``<model_dir>/table.{txt,md,csv,json}``; returns the text."""
    bm = {}
    for name, records in dev.items():
        records = [r for r in records if r.input is not None]
        ranked, _ = bm25.search([r.input for r in records], k=100, show_progress=False)
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
            "the untrained model):\n\n" + tables.format_table(rows, names))
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
        body = f"validation: average page R-prec {summary['validation']['avg_page_rprec']:.4f}\n"
    else:
        body = (f"{summary['completed_steps']} of {summary['steps']} steps done "
                "(rerun the same command to resume)\n")
    return (f"\n{body}\nThe run's files (checkpoints, final_params.safetensors, summary.json, "
            f"table.*, config.gin, TensorBoard events in tb/) are in {model_dir}")
