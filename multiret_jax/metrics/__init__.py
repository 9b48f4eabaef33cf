"""Evaluation metrics: KILT retrieval metrics (R-precision, precision/recall/success@k)."""

from multiret_jax.metrics.kilt_retrieval import (
    DEFAULT_KS,
    DEFAULT_RANK_KEYS,
    align_guesses,
    compute,
    evaluate,
    evidence_rank,
    gold_id_lists,
    guess_ranking,
    load_jsonl,
    metric_keys,
    provenance_ids,
    r_precision,
    record_metrics,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_RANK_KEYS",
    "align_guesses",
    "compute",
    "evaluate",
    "evidence_rank",
    "gold_id_lists",
    "guess_ranking",
    "load_jsonl",
    "metric_keys",
    "provenance_ids",
    "r_precision",
    "record_metrics",
]
