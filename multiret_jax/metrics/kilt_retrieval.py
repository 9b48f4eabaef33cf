"""KILT retrieval metrics with the official scorer's semantics (``kilt/eval_retrieval.py``).

Ids: a provenance item's id is ``"+".join(str(prov[key]).strip() for key in rank_keys)``
(``("wikipedia_id",)`` scores pages, ``("wikipedia_id", "start_paragraph_id",
"end_paragraph_id")`` passages); ``1`` and ``"1"`` are equal. Provenance lacking a rank key
is skipped. Each gold output with ``"provenance"`` gives an id list, de-duplicated in
order; one without gives ``None`` (R-precision 0, no evidence set). A guess record has
exactly one output; its de-duplicated ids, in order, are the ranking.

R-precision: for each gold list of length R, hits among the first R guess ids over R (0 if
R == 0); the record's Rprec is the max over its lists (0 with none).

Rank: each distinct gold id set (evidence set; one equal to an earlier set is not added
again) is one point, placed where its *last* id is retrieved. Walking the guess ids, for
each set containing the id: drop the set's earlier partial point, remove the id from the
set, append ``True`` if the set is now empty else a new partial point; an id in no set
appends ``False``. Over the first k points: ``precision@k = #True / k`` (k >= 1),
``recall@k = #True / #sets`` and ``success_rate@k = [any True]`` (k >= 2 only, as
officially). No evidence set or no guess id: these are 0. Averages are over all gold
records; keys are ``Rprec`` then, per sorted k, ``precision@k, recall@k, success_rate@k``.

Files (:func:`evaluate`): JSONL; record ids compared as ``str(id).strip()``, unique on each
side; every gold id needs a guess; guesses are put in gold order, extras ignored with a
warning. As in the official ``filter_answers``, guess outputs without ``"provenance"`` are
dropped first, then exactly one must remain.

Divergences, only where the official scorer misbehaves:
* a gold provenance lacking a rank key is left out of its evidence set too (officially the
  set joins only the keys present, disagreeing with the R-precision lists; older versions
  raised ``KeyError``). An empty provenance list still forms an empty, never-completed
  evidence set that counts in recall's denominator, exactly as officially;
* a gold record without outputs scores Rprec 0 (officially ``max([])`` fails);
* duplicate ks are scored once (officially summed twice); ks must be >= 1;
* errors are ``ValueError`` naming the record id / file / line, not assertions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

Record = Dict[str, Any]
RankKeys = Union[str, Sequence[str]]
DEFAULT_KS: Tuple[int, ...] = (1, 5, 10, 20)
DEFAULT_RANK_KEYS: Tuple[str, ...] = ("wikipedia_id",)


def _dedup(ids: Iterable[Any]) -> List[str]:
    """``str(id).strip()`` each id, keep the first occurrence of each, in order."""
    return list(dict.fromkeys(str(i).strip() for i in ids))


def _normalize_ks(ks: Iterable[Any]) -> List[int]:
    out = sorted({int(k) for k in ks})
    if any(k < 1 for k in out):
        raise ValueError(f"ks must be positive integers, got {out}")
    return out


def _normalize_rank_keys(rank_keys: RankKeys) -> Tuple[str, ...]:
    keys = (rank_keys,) if isinstance(rank_keys, str) else tuple(rank_keys)
    if not keys:
        raise ValueError("rank_keys must name at least one provenance key")
    return keys


def metric_keys(ks: Iterable[int]) -> List[str]:
    """Result keys in the official order: Rprec, then per sorted k P (k>=1), R and S (k>=2)."""
    keys = ["Rprec"]
    for k in _normalize_ks(ks):
        keys.append(f"precision@{k}")
        if k > 1:
            keys += [f"recall@{k}", f"success_rate@{k}"]
    return keys


def provenance_ids(output: Record, rank_keys: RankKeys = DEFAULT_RANK_KEYS) -> Optional[List[str]]:
    """De-duplicated ids of one output's provenance; ``None`` if it has no ``provenance``."""
    if "provenance" not in output:
        return None
    keys = _normalize_rank_keys(rank_keys)
    ids = [
        "+".join(str(prov[key]).strip() for key in keys)
        for prov in output["provenance"]
        if all(key in prov for key in keys)
    ]
    return _dedup(ids)


def r_precision(guess_ids: Sequence[Any], gold_id_lists: Sequence[Optional[Sequence[Any]]]) -> float:
    """Max over gold lists of (hits in the first R de-duplicated guess ids) / R."""
    guess = _dedup(guess_ids)
    best = 0.0
    for gold in gold_id_lists:
        gold_ids = set(_dedup(gold or ()))
        if gold_ids:
            hits = sum(1 for g in guess[: len(gold_ids)] if g in gold_ids)
            best = max(best, hits / len(gold_ids))
    return best


def evidence_rank(
    guess_ids: Sequence[Any], gold_id_lists: Sequence[Optional[Sequence[Any]]]
) -> Tuple[List[Union[bool, str]], int]:
    """The rank (``True``, ``False``, ``"evidence_set:i"`` partial points) and the number of sets.

    ``None`` entries in ``gold_id_lists`` (outputs without provenance) form no set.
    An empty guess gives an empty rank and 0 sets, as officially.
    """
    guess = _dedup(guess_ids)
    if not guess:
        return [], 0
    evidence_sets: List[set] = []
    for gold in gold_id_lists:
        if gold is not None:
            e_set = set(_dedup(gold))
            if e_set not in evidence_sets:
                evidence_sets.append(e_set)
    markers = [f"evidence_set:{i}" for i in range(len(evidence_sets))]
    rank: List[Union[bool, str]] = []
    for gid in guess:
        found = False
        for e_set, marker in zip(evidence_sets, markers):
            if gid not in e_set:
                continue
            found = True
            if marker in rank:
                rank.remove(marker)
            e_set.remove(gid)
            rank.append(True if not e_set else marker)
        if not found:
            rank.append(False)
    return rank, len(evidence_sets)


def record_metrics(
    guess_ids: Sequence[Any],
    gold_id_lists: Sequence[Optional[Sequence[Any]]],
    ks: Iterable[int] = DEFAULT_KS,
) -> Dict[str, float]:
    """All metrics of one query from plain id lists (one list per gold output, ``None`` for
    an output without provenance). Keys as in :func:`metric_keys`."""
    ks = _normalize_ks(ks)
    result: Dict[str, float] = {key: 0.0 for key in metric_keys(ks)}
    result["Rprec"] = r_precision(guess_ids, gold_id_lists)
    rank, num_sets = evidence_rank(guess_ids, gold_id_lists)
    if num_sets == 0:
        return result
    for k in ks:
        n_true = sum(1 for point in rank[:k] if point is True)
        result[f"precision@{k}"] = n_true / k
        if k > 1:
            result[f"recall@{k}"] = n_true / num_sets
            result[f"success_rate@{k}"] = float(n_true > 0)
    return result


def _record_id(record: Record) -> str:
    if "id" not in record:
        raise ValueError(f"record without an 'id': {str(record)[:200]}")
    return str(record["id"]).strip()


def guess_ranking(guess_record: Record, rank_keys: RankKeys = DEFAULT_RANK_KEYS) -> List[str]:
    """The guess record's ranked ids; it must have exactly one output."""
    outputs = guess_record.get("output") or []
    if len(outputs) != 1:
        rid = _record_id(guess_record)
        raise ValueError(f"guess record {rid!r} must have exactly one output, has {len(outputs)}")
    return provenance_ids(outputs[0], rank_keys) or []


def gold_id_lists(gold_record: Record, rank_keys: RankKeys = DEFAULT_RANK_KEYS) -> List[Optional[List[str]]]:
    """One id list per gold output (``None`` for outputs without provenance)."""
    if not isinstance(gold_record.get("output"), list):
        raise ValueError(f"gold record {_record_id(gold_record)!r} has no 'output' list")
    return [provenance_ids(output, rank_keys) for output in gold_record["output"]]


def compute(
    gold_records: Sequence[Record],
    guess_records: Sequence[Record],
    ks: Iterable[int] = DEFAULT_KS,
    rank_keys: RankKeys = DEFAULT_RANK_KEYS,
) -> Dict[str, float]:
    """Average :func:`record_metrics` over aligned KILT records (same length, same id order)."""
    ks = _normalize_ks(ks)
    rank_keys = _normalize_rank_keys(rank_keys)
    if len(gold_records) != len(guess_records):
        raise ValueError(f"different sizes: gold {len(gold_records)}, guess {len(guess_records)}")
    totals = {key: 0.0 for key in metric_keys(ks)}
    for gold, guess in zip(gold_records, guess_records):
        if _record_id(gold) != _record_id(guess):
            raise ValueError(f"records must be aligned: gold {_record_id(gold)!r}, guess {_record_id(guess)!r}")
        scores = record_metrics(guess_ranking(guess, rank_keys), gold_id_lists(gold, rank_keys), ks)
        for key in totals:
            totals[key] += scores[key]
    n = len(gold_records)
    return {key: (value / n if n else 0.0) for key, value in totals.items()}


def load_jsonl(path: Union[str, Path]) -> List[Record]:
    """Records of a JSONL file (blank lines skipped); bad JSON raises naming file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON: {e}") from e
    return records


def align_guesses(
    gold_records: Sequence[Record], guess_records: Sequence[Record], guess_source: str = "guess"
) -> List[Record]:
    """Guesses in gold order; unique ids on both sides, one guess per gold id, extras warned."""
    gold_ids = [_record_id(gold) for gold in gold_records]
    if len(set(gold_ids)) != len(gold_ids):
        dup = next(gid for i, gid in enumerate(gold_ids) if gid in gold_ids[:i])
        raise ValueError(f"gold ids must be unique, {dup!r} repeats")
    by_id: Dict[str, Record] = {}
    for guess in guess_records:
        gid = _record_id(guess)
        if gid in by_id:
            raise ValueError(f"guess ids must be unique, {gid!r} repeats in {guess_source}")
        by_id[gid] = guess
    missing = [gid for gid in gold_ids if gid not in by_id]
    if missing:
        raise ValueError(f"no guess for gold id {missing[0]!r} in {guess_source} ({len(missing)} missing)")
    extra = len(by_id) - len(gold_ids)
    if extra:
        logger.warning("%d guess record(s) in %s have no gold record and are ignored", extra, guess_source)
    return [by_id[gid] for gid in gold_ids]


def _keep_provenance_outputs(guess: Record) -> Record:
    """Official ``filter_answers``: keep only the guess outputs that carry provenance."""
    outputs = [o for o in guess.get("output") or [] if "provenance" in o]
    if len(outputs) != 1:
        rid = _record_id(guess)
        raise ValueError(f"guess record {rid!r} must have exactly one output with provenance, has {len(outputs)}")
    return {**guess, "output": outputs}


def evaluate(
    gold_path: Union[str, Path],
    guess_path: Union[str, Path],
    ks: Iterable[int] = DEFAULT_KS,
    rank_keys: RankKeys = DEFAULT_RANK_KEYS,
) -> Dict[str, float]:
    """Score a KILT guess JSONL file against a gold JSONL file, like the official scorer."""
    gold_records = load_jsonl(gold_path)
    guess_records = align_guesses(gold_records, load_jsonl(guess_path), str(guess_path))
    guess_records = [_keep_provenance_outputs(g) for g in guess_records]
    return compute(gold_records, guess_records, ks, rank_keys)
