"""KILT retrieval metrics with the official scorer's semantics (``kilt/eval_retrieval.py``).

Ids: a provenance item's id is ``"+".join(str(prov[key]).strip() for key in rank_keys)``
(``("wikipedia_id",)`` scores pages, ``("wikipedia_id", "start_paragraph_id",
"end_paragraph_id")`` passages); ``1`` and ``"1"`` are equal. :func:`provenance_ids` skips
provenance lacking a rank key, as officially; :func:`compute` and :func:`evaluate` check for
such items first (see "Bad input"). Each gold output with ``"provenance"`` gives an id list,
de-duplicated in order; one without gives ``None`` (R-precision 0, no evidence set). A guess
record has exactly one output; its de-duplicated ids, in order, are the ranking.

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

Bad input (:func:`evaluate`, and :func:`compute` for in-memory records) is never scored
silently. Always a ``ValueError`` naming the file (``file:line`` and record where there is
one):

* a gold file without records (empty ``gold_records``);
* rank keys that no gold provenance item has (the message lists the keys present, sorted),
  or no gold provenance item at all;
* a line that is not UTF-8, not JSON or not a JSON object (:func:`load_jsonl`);
* a record without ``"id"``, a gold record without an ``"output"`` list, an output that is
  not an object, a ``"provenance"`` that is not a list.

A provenance item, gold or guess, that is not a JSON object or lacks a rank key follows
``on_error``: ``"raise"`` (default) raises naming ``file:line``, record, output and item;
``"skip"`` drops it, as the official scorer does, counts it and logs ONE warning per file.

Divergences, only where the official scorer misbehaves:
* a gold provenance lacking a rank key (some other gold item having it) raises unless
  ``on_error="skip"``; skipped, it is left out of its evidence set too (officially the set
  joins only the keys present, disagreeing with the R-precision lists; older versions raised
  ``KeyError``). An empty provenance list still forms an empty, never-completed evidence set
  that counts in recall's denominator, exactly as officially;
* a guess provenance lacking a rank key raises unless ``on_error="skip"`` (officially
  skipped with a printed warning); a provenance item that is not a JSON object likewise
  (officially skipped silently, or a ``TypeError``);
* rank keys that no gold provenance item has raise (officially every score is 0); so does
  a gold file without records or without provenance (officially a ``ZeroDivisionError`` /
  all zeros);
* a gold record without outputs scores Rprec 0 (officially ``max([])`` fails);
* duplicate ks are scored once (officially summed twice); ks must be >= 1;
* errors are ``ValueError`` naming the record id / file / line, not assertions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from multiret_jax.data.kilt import KiltFormatError, check_on_error, iter_json_lines

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
    """De-duplicated ids of one output's provenance; ``None`` if it has no ``provenance``.

    As officially, items lacking a rank key (and items that are not objects) give no id;
    :func:`compute` and :func:`evaluate` report such items before scoring.
    """
    if "provenance" not in output:
        return None
    keys = _normalize_rank_keys(rank_keys)
    ids = [
        "+".join(str(prov[key]).strip() for key in keys)
        for prov in output["provenance"]
        if isinstance(prov, dict) and all(key in prov for key in keys)
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


# --- checking records before scoring -----------------------------------------------------

_SKIP_HINT = " (on_error='skip' drops such items, as the official scorer does)"


@dataclasses.dataclass
class _Side:
    """One side of a scoring, for messages: ``kind`` ("gold" or "guess"), ``source`` (its
    file, or a name for in-memory records) and each record's line number when read from a
    file."""

    kind: str
    source: str
    lines: Optional[Sequence[int]] = None

    def where(self, index: int) -> str:
        """``file:line`` of record ``index``; just the source without line numbers."""
        return self.source if self.lines is None else f"{self.source}:{self.lines[index]}"

    def first(self, index: int, rid: str) -> str:
        """Record ``index`` for a warning's "first:" note: ``line 4, record 'x'``."""
        line = "" if self.lines is None else f"line {self.lines[index]}, "
        return f"{line}record {rid!r}"


@dataclasses.dataclass
class _Skips:
    """Provenance items dropped from one side with ``on_error="skip"``, counted by problem."""

    side: _Side
    counts: Counter = dataclasses.field(default_factory=Counter)
    first: str = ""

    def add(self, problem: str, first: str) -> None:
        if not self.counts:
            self.first = first
        self.counts[problem] += 1

    def log(self) -> None:
        """ONE warning for the side, e.g. ``3 gold provenance item(s) skipped in gold.jsonl:
        2 without 'wikipedia_id', 1 not a JSON object (first: line 4, record 'x')``."""
        if not self.counts:
            return
        detail = ", ".join(f"{n} {problem}" for problem, n in self.counts.items())
        logger.warning("%d %s provenance item(s) skipped in %s: %s (first: %s)",
                       sum(self.counts.values()), self.side.kind, self.side.source, detail,
                       self.first)


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _item_problem(prov: Any, keys: Sequence[str]) -> Optional[Tuple[str, str]]:
    """``(count label, message)`` for a provenance item that gives no id, else None."""
    if not isinstance(prov, dict):
        return "not a JSON object", f"is not a JSON object: {_short(prov)}"
    missing = [key for key in keys if key not in prov]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        return f"without {names}", f"lacks rank key(s) {names}: {_short(prov)}"
    return None


def _checked_output(output: Any, prefix: str, first: str, keys: Sequence[str],
                    on_error: str, skips: _Skips) -> Record:
    """One output with its unscorable provenance items dropped (``on_error="skip"``)."""
    if not isinstance(output, dict):
        raise ValueError(f"{prefix} is not a JSON object: {_short(output)}")
    if "provenance" not in output:
        return output
    items = output["provenance"]
    if not isinstance(items, list):
        raise ValueError(f"{prefix}: 'provenance' must be a list, got {type(items).__name__}")
    kept = []
    for j, prov in enumerate(items):
        problem = _item_problem(prov, keys)
        if problem is None:
            kept.append(prov)
        elif on_error == "raise":
            raise ValueError(f"{prefix}, provenance item {j} {problem[1]}{_SKIP_HINT}")
        else:
            skips.add(problem[0], first)
    return output if len(kept) == len(items) else {**output, "provenance": kept}


def _checked_record(record: Any, index: int, side: _Side, keys: Sequence[str],
                    on_error: str, skips: _Skips) -> Record:
    """One record, structure checked, its unscorable provenance items dropped or raised."""
    where = side.where(index)
    if not isinstance(record, dict):
        raise ValueError(f"{where}: {side.kind} record must be a JSON object, "
                         f"got {type(record).__name__}")
    if "id" not in record:
        raise ValueError(f"{where}: {side.kind} record without an 'id': {_short(record)}")
    rid = _record_id(record)
    outputs = record.get("output")
    if outputs is None and side.kind == "guess":
        return record  # reported when its ranking is needed: "exactly one output"
    if not isinstance(outputs, list):
        raise ValueError(f"{where}: {side.kind} record {rid!r} has no 'output' list")
    first = side.first(index, rid)
    checked = [_checked_output(out, f"{where}: {side.kind} record {rid!r}, output {i}",
                               first, keys, on_error, skips)
               for i, out in enumerate(outputs)]
    return {**record, "output": checked}


def _gold_provenance_items(records: Sequence[Any]) -> Iterator[Record]:
    """The gold provenance items that are objects (malformed structure is reported later)."""
    for record in records:
        outputs = record.get("output") if isinstance(record, dict) else None
        for output in outputs if isinstance(outputs, list) else ():
            items = output.get("provenance") if isinstance(output, dict) else None
            for prov in items if isinstance(items, list) else ():
                if isinstance(prov, dict):
                    yield prov


def _check_gold_keys(records: Sequence[Any], keys: Sequence[str], source: str) -> None:
    """Every rank key must be in some gold provenance item; else every score would be 0."""
    present: set = set()
    n_items = 0
    for prov in _gold_provenance_items(records):
        present.update(prov)
        n_items += 1
    if not n_items:
        raise ValueError(f"no gold provenance item (a JSON object) in {source} "
                         f"({len(records)} records): nothing to score")
    missing = [key for key in keys if key not in present]
    if missing:
        raise ValueError(f"rank key(s) {missing} in no gold provenance item of {source}; "
                         f"keys present: {sorted(present)}")


def _checked_records(records: Sequence[Any], side: _Side, keys: Sequence[str],
                     on_error: str) -> List[Record]:
    """Records checked for scoring (see the module docstring, "Bad input"); with
    ``on_error="skip"`` unscorable provenance items are dropped and ONE warning is logged."""
    if side.kind == "gold":
        _check_gold_keys(records, keys, side.source)
    skips = _Skips(side)
    checked = [_checked_record(r, i, side, keys, on_error, skips) for i, r in enumerate(records)]
    skips.log()
    return checked


# --- scoring -------------------------------------------------------------------------------


def _average(gold_records: Sequence[Record], guess_records: Sequence[Record], ks: List[int],
             keys: Sequence[str]) -> Dict[str, float]:
    """Mean :func:`record_metrics` over checked, aligned, non-empty record lists."""
    totals = {key: 0.0 for key in metric_keys(ks)}
    for gold, guess in zip(gold_records, guess_records):
        gold_id, guess_id = _record_id(gold), _record_id(guess)
        if gold_id != guess_id:
            raise ValueError(f"records must be aligned: gold {gold_id!r}, guess {guess_id!r}")
        scores = record_metrics(guess_ranking(guess, keys), gold_id_lists(gold, keys), ks)
        for key in totals:
            totals[key] += scores[key]
    return {key: value / len(gold_records) for key, value in totals.items()}


def compute(
    gold_records: Sequence[Record],
    guess_records: Sequence[Record],
    ks: Iterable[int] = DEFAULT_KS,
    rank_keys: RankKeys = DEFAULT_RANK_KEYS,
    *,
    on_error: str = "raise",
    gold_source: str = "gold records",
    guess_source: str = "guess records",
) -> Dict[str, float]:
    """Average :func:`record_metrics` over aligned KILT records (same length, same id order).

    The records are checked first (module docstring, "Bad input"): no gold records, rank keys
    in no gold provenance item and malformed records raise ``ValueError``; a provenance item
    that is not an object or lacks a rank key raises with ``on_error="raise"`` (default) or
    is dropped with one warning per side with ``"skip"``. ``gold_source`` and
    ``guess_source`` name the records in messages.
    """
    check_on_error(on_error)
    ks = _normalize_ks(ks)
    keys = _normalize_rank_keys(rank_keys)
    if not gold_records:
        raise ValueError(f"no gold records in {gold_source}: nothing to score")
    if len(gold_records) != len(guess_records):
        raise ValueError(f"different sizes: gold {len(gold_records)}, guess {len(guess_records)}")
    gold = _checked_records(gold_records, _Side("gold", gold_source), keys, on_error)
    guess = _checked_records(guess_records, _Side("guess", guess_source), keys, on_error)
    return _average(gold, guess, ks, keys)


def load_jsonl(path: Union[str, Path], *, with_lines: bool = False) -> List[Any]:
    """Records of a JSONL file (blank lines skipped); with ``with_lines``, ``(line_no,
    record)`` pairs (1-based line numbers).

    Raises:
      KiltFormatError: (a ``ValueError``) naming file and line, for a line that is not
        UTF-8 (``f.jsonl:3: invalid UTF-8 (at byte 0 of the line)``), not JSON
        (``f.jsonl:3: invalid JSON (...)``) or not a JSON object (``f.jsonl:3: record must
        be a JSON object, got list``).
    """
    out: List[Any] = []
    for line_no, obj, err in iter_json_lines(path):
        if err is None and not isinstance(obj, dict):
            err = f"record must be a JSON object, got {type(obj).__name__}"
        if err is not None:
            raise KiltFormatError(path, line_no, err)
        out.append((line_no, obj) if with_lines else obj)
    return out


def _guess_order(gold_records: Sequence[Record], guess_records: Sequence[Record],
                 guess_source: str) -> List[int]:
    """Indices of the guesses in gold order (see :func:`align_guesses`)."""
    gold_ids = [_record_id(gold) for gold in gold_records]
    if len(set(gold_ids)) != len(gold_ids):
        dup = next(gid for i, gid in enumerate(gold_ids) if gid in gold_ids[:i])
        raise ValueError(f"gold ids must be unique, {dup!r} repeats")
    by_id: Dict[str, int] = {}
    for index, guess in enumerate(guess_records):
        gid = _record_id(guess)
        if gid in by_id:
            raise ValueError(f"guess ids must be unique, {gid!r} repeats in {guess_source}")
        by_id[gid] = index
    missing = [gid for gid in gold_ids if gid not in by_id]
    if missing:
        raise ValueError(f"no guess for gold id {missing[0]!r} in {guess_source} ({len(missing)} missing)")
    extra = len(by_id) - len(gold_ids)
    if extra:
        logger.warning("%d guess record(s) in %s have no gold record and are ignored", extra, guess_source)
    return [by_id[gid] for gid in gold_ids]


def align_guesses(
    gold_records: Sequence[Record], guess_records: Sequence[Record], guess_source: str = "guess"
) -> List[Record]:
    """Guesses in gold order; unique ids on both sides, one guess per gold id, extras warned."""
    return [guess_records[i] for i in _guess_order(gold_records, guess_records, guess_source)]


def _keep_provenance_outputs(guess: Record, where: str = "") -> Record:
    """Official ``filter_answers``: keep only the guess outputs that carry provenance."""
    outputs = [o for o in guess.get("output") or [] if isinstance(o, dict) and "provenance" in o]
    if len(outputs) != 1:
        rid = _record_id(guess)
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}guess record {rid!r} must have exactly one output with provenance, "
                         f"has {len(outputs)}")
    return {**guess, "output": outputs}


def evaluate(
    gold_path: Union[str, Path],
    guess_path: Union[str, Path],
    ks: Iterable[int] = DEFAULT_KS,
    rank_keys: RankKeys = DEFAULT_RANK_KEYS,
    on_error: str = "raise",
) -> Dict[str, float]:
    """Score a KILT guess JSONL file against a gold JSONL file, like the official scorer.

    Args:
      gold_path, guess_path: KILT JSONL files (one JSON object a line).
      ks: cut-offs of precision / recall / success@k.
      rank_keys: the provenance keys that make an id (module docstring).
      on_error: a provenance item, gold or guess, that is not a JSON object or lacks a rank
        key: ``"raise"`` (default) raises ``ValueError`` naming ``file:line``, record,
        output and item; ``"skip"`` drops it as the official scorer does and logs one
        warning per file, e.g. ``3 gold provenance item(s) skipped in gold.jsonl: 3 without
        'start_paragraph_id' (first: line 4, record 'x')``.
    Raises:
      ValueError: an unknown ``on_error``, or bad input (module docstring, "Bad input"),
        e.g. an empty gold file or rank keys that no gold provenance item has.
    """
    check_on_error(on_error)
    ks = _normalize_ks(ks)
    keys = _normalize_rank_keys(rank_keys)
    gold_lines, gold_records = _unzip(load_jsonl(gold_path, with_lines=True))
    if not gold_records:
        raise ValueError(f"gold file {gold_path} has no records: nothing to score")
    gold = _checked_records(gold_records, _Side("gold", str(gold_path), gold_lines), keys, on_error)
    guess_lines, guess_records = _unzip(load_jsonl(guess_path, with_lines=True))
    guesses = _checked_records(guess_records, _Side("guess", str(guess_path), guess_lines), keys,
                               on_error)
    order = _guess_order(gold, guesses, str(guess_path))
    aligned = [_keep_provenance_outputs(guesses[i], f"{guess_path}:{guess_lines[i]}") for i in order]
    return _average(gold, aligned, ks, keys)


def _unzip(pairs: Sequence[Tuple[int, Record]]) -> Tuple[List[int], List[Record]]:
    """``(line_no, record)`` pairs as a list of line numbers and a list of records."""
    return [line for line, _ in pairs], [record for _, record in pairs]
