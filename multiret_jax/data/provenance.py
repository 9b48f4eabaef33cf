"""Gold provenance spans -> the passages that cover them; training-example filtering.

A KILT provenance item names a page and, usually, a span ``(start_paragraph_id,
start_character)``-``(end_paragraph_id, end_character)``. Its gold passages are the page's
passages whose span overlaps it. Items with no paragraph ids (AIDA's entity pages) map to
every passage of the page. Items whose page has no passages in the table are "unmapped".

MT-DPR (following DPR on KILT) keeps only provenance with ``bleu_score >= 0.5`` for
training; ``training_examples`` drops records left without provenance and reports counts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Iterable, List, Optional, Tuple

import numpy as np

from multiret_jax.data.kilt import KiltRecord, Provenance
from multiret_jax.data.passages import PassageTable

log = logging.getLogger(__name__)

_INF = np.iinfo(np.int32).max


def provenance_rows(prov: Provenance, table: PassageTable) -> np.ndarray:
    """Rows of ``table`` whose passages overlap the provenance span (page order)."""
    rows = table.rows_of_page(prov.wikipedia_id)
    if rows.size == 0 or prov.start_paragraph_id is None:
        return rows
    start = (prov.start_paragraph_id, prov.start_character or 0)
    end_par = prov.end_paragraph_id if prov.end_paragraph_id is not None else prov.start_paragraph_id
    end = (end_par, _INF if prov.end_character is None else prov.end_character)
    if end <= start:  # a zero-length span still names a place: cover the character at start
        end = (start[0], start[1] + 1)
    s = table.spans[rows]
    # Lexicographic (paragraph, character) comparisons: passage_start < end and start < passage_end.
    ps_lt_end = (s[:, 0] < end[0]) | ((s[:, 0] == end[0]) & (s[:, 1] < end[1]))
    start_lt_pe = (start[0] < s[:, 2]) | ((start[0] == s[:, 2]) & (start[1] < s[:, 3]))
    return rows[ps_lt_end & start_lt_pe]


@dataclasses.dataclass(frozen=True)
class TrainingExample:
    """A query with its gold passages.

    Attributes:
      id: record id.  query: the KILT input (unformatted; the task adds prefixes).
      positives: rows of gold passages (union over kept provenance, first-seen order).
      positive_sets: one row array per kept provenance set (for passage-level metrics).
      gold_pages: gold page ids, de-duplicated in order.
    """

    id: str
    query: str
    positives: np.ndarray
    positive_sets: Tuple[np.ndarray, ...]
    gold_pages: Tuple[str, ...]


@dataclasses.dataclass
class FilterStats:
    total: int = 0
    kept: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    unmapped_provenance: int = 0

    def summary(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"kept {self.kept}/{self.total} examples; dropped {drops}; "
                f"{self.unmapped_provenance} provenance items had no passage in the table")


def gold_passage_sets(record: KiltRecord, table: PassageTable, min_bleu: Optional[float] = None,
                      stats: Optional[FilterStats] = None) -> List[np.ndarray]:
    """Per provenance set of ``record``, the rows covering it (low-BLEU items removed).

    Args:
      record: a task record.
      table: the passage table.
      min_bleu: keep provenance items with ``bleu_score >= min_bleu`` (items without a score
        are kept); None keeps all.
      stats: counts unmapped provenance items when given.
    Returns:
      Non-empty row arrays, one per provenance set that still has mapped passages.
    """
    sets = []
    for prov_set in record.provenance_sets():
        rows: List[int] = []
        for prov in prov_set:
            if min_bleu is not None and prov.bleu_score is not None and prov.bleu_score < min_bleu:
                continue
            r = provenance_rows(prov, table)
            if r.size == 0 and stats is not None:
                stats.unmapped_provenance += 1
            rows.extend(int(x) for x in r)
        if rows:
            sets.append(np.asarray(list(dict.fromkeys(rows)), np.int64))
    return sets


def training_examples(records: Iterable[KiltRecord], table: PassageTable, *,
                      min_bleu: Optional[float] = 0.5, name: str = "",
                      ) -> Tuple[List[TrainingExample], FilterStats]:
    """Maps records to training examples, dropping those without usable provenance.

    Args:
      records: task records (with ``input``).
      table: the passage table.
      min_bleu: MT-DPR's provenance BLEU threshold (0.5); None disables the filter.
      name: task name for the log line.
    Returns:
      (examples, stats); the counts are also logged.
    """
    stats = FilterStats()
    out: List[TrainingExample] = []
    for rec in records:
        stats.total += 1
        if rec.input is None:
            stats.dropped["no input"] += 1
            continue
        if not rec.provenance_sets():
            stats.dropped["no provenance"] += 1
            continue
        sets = gold_passage_sets(rec, table, min_bleu, stats)
        if not sets:
            all_sets = gold_passage_sets(rec, table, None)
            stats.dropped["provenance bleu < min_bleu" if all_sets else "provenance not in passages"] += 1
            continue
        positives = np.asarray(list(dict.fromkeys(int(r) for s in sets for r in s)), np.int64)
        pages = tuple(dict.fromkeys(table.page_ids[r] for r in positives))
        out.append(TrainingExample(rec.id, rec.input, positives, tuple(sets), pages))
        stats.kept += 1
    log.info("%s: %s", name or "training examples", stats.summary())
    return out, stats


def passage_gold_ids(record: KiltRecord, table: PassageTable) -> List[List[str]]:
    """Gold passage-id lists per provenance set (for passage-level R-precision).

    Only provenance with a paragraph span defines passage-level gold; sets without any
    are left out (passage-level metrics are undefined for AIDA-style page-only items).
    """
    out = []
    for prov_set in record.provenance_sets():
        ids: List[str] = []
        for prov in prov_set:
            if prov.start_paragraph_id is None:
                continue
            ids.extend(table.ids[r] for r in provenance_rows(prov, table))
        if ids:
            out.append(list(dict.fromkeys(ids)))
    return out

