"""TREC run files: passage-level rankings for trec_eval / ranx / pyserini.

    write_trec("out/trec/nq-dev.trec", qids, ranked_pids, scores, run_name="taco")
    run = read_trec("out/trec/nq-dev.trec")   # {qid: [(pid, rank, score), ...]} in rank order

One line per retrieved passage: ``qid Q0 passage_id rank score run_name`` (rank from 1,
scores non-increasing), whitespace-separated. Query ids are KILT record ids with each
whitespace character replaced by "_" (``trec_qid``: AIDA's ids, "1163testb SOCCER:0",
have spaces; two ids that become equal are an error); passage ids and the run name may not
contain whitespace. Empty slots of a ranking (passage id "", e.g. an approximate index
that found fewer than k) are left out; ranks stay consecutive.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

Run = Dict[str, List[Tuple[str, int, float]]]


def _check_field(value: str, what: str) -> str:
    value = str(value)
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"TREC {what} {value!r} is empty or contains whitespace")
    return value


def trec_qid(record_id: str) -> str:
    """A record id as a TREC query id: whitespace characters replaced by "_"."""
    return re.sub(r"\s", "_", str(record_id))


def write_trec(path: str, qids: Sequence[str], ranked_ids: Sequence[Sequence[str]],
               scores: Sequence[Sequence[float]], run_name: str = "run") -> int:
    """Writes a TREC run file atomically (tmp file + rename).

    Args:
      path: output file (its directory is created).
      qids: query ids (KILT record ids; written as ``trec_qid``).
      ranked_ids: per query, passage ids best first ("" = no result, skipped).
      scores: per query, the scores of ``ranked_ids`` (non-increasing).
      run_name: the last column.
    Returns:
      The number of lines written.
    Raises:
      ValueError: sizes differ, two query ids are equal as ``trec_qid``, or a passage id /
        the run name is empty or contains whitespace.
    """
    if not (len(qids) == len(ranked_ids) == len(scores)):
        raise ValueError(f"{path}: {len(qids)} query ids, {len(ranked_ids)} rankings, "
                         f"{len(scores)} score lists")
    run_name = _check_field(run_name, "run name")
    written = [trec_qid(q) for q in qids]
    if len(set(written)) != len(written):
        dup = next(q for i, q in enumerate(written) if q in written[:i])
        raise ValueError(f"{path}: query id {dup!r} occurs twice (ids differing only in "
                         "whitespace?)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, pids, sc in zip(written, ranked_ids, scores):
            qid = _check_field(qid, "query id")
            rank = 0
            for pid, s in zip(pids, np.asarray(sc, np.float64)):
                if pid == "":
                    continue
                rank += 1
                f.write(f"{qid} Q0 {_check_field(pid, 'passage id')} {rank} {s:.6f} {run_name}\n")
                n += 1
    os.replace(tmp, path)
    return n


def read_trec(path: str) -> Run:
    """Reads and checks a TREC run file: 6 columns, ``Q0``, ranks 1, 2, ... per query,
    scores non-increasing, no passage twice for a query.

    Returns:
      ``{qid: [(passage_id, rank, score), ...]}`` in file order.
    Raises:
      ValueError: naming the file and line of the first bad line.
    """
    run: Run = {}
    seen: Dict[str, set] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            cols = line.split()
            if len(cols) != 6 or cols[1] != "Q0":
                raise ValueError(f"{where}: expected 'qid Q0 docid rank score run', got {line!r}")
            qid, _, pid, rank, score, _ = cols
            try:
                rank_i, score_f = int(rank), float(score)
            except ValueError:
                raise ValueError(f"{where}: rank {rank!r} / score {score!r} not numbers") from None
            got = run.setdefault(qid, [])
            if rank_i != len(got) + 1:
                raise ValueError(f"{where}: rank {rank_i} for {qid!r}, expected {len(got) + 1}")
            if got and score_f > got[-1][2]:
                raise ValueError(f"{where}: score {score_f} above the previous {got[-1][2]}")
            if pid in seen.setdefault(qid, set()):
                raise ValueError(f"{where}: passage {pid!r} twice for {qid!r}")
            seen[qid].add(pid)
            got.append((pid, rank_i, score_f))
    return run
