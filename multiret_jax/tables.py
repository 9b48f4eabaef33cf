"""Paper-style result tables: one row per system/metric, one column per task, plus Avg.

Column order and headers follow MT-DPR/TACO (FEV AY2 T-REx zsRE NQ HoPo TQA WoW Avg);
tasks outside the 8 KILT ones follow in the order given, headed by their table name.
A missing task (None) prints as "-" and is left out of its row's average, so "Avg" is
over the tasks the row has. Several runs side by side, and their differences to a
reference run: ``experiments/compare.py``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from multiret_jax.data.tasks import KILT_TASK_NAMES, get_task

Rows = Mapping[str, Mapping[str, Optional[float]]]  # row name -> task -> value (0..100)


def ordered_tasks(tasks: Sequence[str]) -> List[str]:
    """KILT tasks in the papers' column order, then any other tasks as given."""
    known = [t for t in KILT_TASK_NAMES if t in tasks]
    return known + [t for t in tasks if t not in known]


def _header(task: str) -> str:
    try:
        return get_task(task).short
    except KeyError:
        return task


def with_average(values: Mapping[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """Adds "Avg" over the tasks with a value (None when no task has one)."""
    present = [v for v in values.values() if v is not None]
    return {**values, "Avg": sum(present) / len(present) if present else None}


def table_cells(rows: Rows, tasks: Sequence[str], digits: int = 2,
                signed: bool = False) -> Tuple[List[str], List[List[str]]]:
    """The header and body cells of a table (tasks ordered, "Avg" appended, None -> "-").

    Args:
      rows: row name -> {task: value}.
      tasks: the task columns (ordered with ``ordered_tasks``).
      digits: decimals.
      signed: always print the sign ("+1.20", "-0.35"; for differences).
    Returns:
      (header, body): header ``["", FEV, ..., "Avg"]``; one list of strings per row.
    """
    tasks = ordered_tasks(tasks)
    spec = f"{'+' if signed else ''}.{digits}f"
    header = [""] + [_header(t) for t in tasks] + ["Avg"]
    body = []
    for name, values in rows.items():
        vals = with_average({t: values.get(t) for t in tasks})
        body.append([name] + ["-" if vals[c] is None else format(vals[c], spec)
                              for c in tasks + ["Avg"]])
    return header, body


def format_table(rows: Rows, tasks: Sequence[str], fmt: str = "text", digits: int = 2,
                 signed: bool = False) -> str:
    """Renders ``rows`` as aligned text, Markdown or CSV.

    Args:
      rows: row name -> {task: value in percent}; missing/None values print as "-".
      tasks: the task columns (ordered with ``ordered_tasks``); "Avg" is appended.
      fmt: "text", "markdown" or "csv".
      digits: decimals.
      signed: always print the sign (tables of differences).
    Returns:
      The table as a string.
    """
    header, body = table_cells(rows, tasks, digits, signed)
    return render(header, body, fmt)


def render(header: Sequence[str], body: Sequence[Sequence[str]], fmt: str = "text") -> str:
    """Header and body cells as aligned text, Markdown or CSV."""
    if fmt not in ("text", "markdown", "csv"):
        raise ValueError(f"unknown table format {fmt!r}; use text, markdown or csv")
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([header] + body)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(r, widths))) for r in [header] + body]
    return "\n".join(out) + "\n"


def seed_statistics(per_seed: Sequence[Mapping[str, Optional[float]]],
                    tasks: Sequence[str]) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean and sample standard deviation over seeds, per task and of the average.

    Args:
      per_seed: one ``{task: value}`` per seed (a missing / None task is left out).
      tasks: the task columns.
    Returns:
      ``{"mean": {task..., "Avg"}, "std": {...}, "n": {...}}``: "Avg" is each seed's
      average over its tasks, then averaged over seeds (so its spread is the seeds'); std
      is None with fewer than 2 values.
    """
    cols = ordered_tasks(tasks)
    values = {c: [] for c in cols + ["Avg"]}
    for run in per_seed:
        row = with_average({t: run.get(t) for t in cols})
        for c, v in row.items():
            if v is not None:
                values[c].append(float(v))
    out = {"mean": {}, "std": {}, "n": {}}
    for c, vs in values.items():
        n = len(vs)
        mean = sum(vs) / n if n else None
        out["mean"][c], out["n"][c] = mean, n
        out["std"][c] = (sum((v - mean) ** 2 for v in vs) / (n - 1)) ** 0.5 if n > 1 else None
    return out


def mean_std_cells(stats: Mapping[str, Mapping[str, Mapping[str, Optional[float]]]],
                   tasks: Sequence[str], digits: int = 2) -> Tuple[List[str], List[List[str]]]:
    """Header and body cells ``"mean ± std"`` for rows of ``seed_statistics``."""
    cols = ordered_tasks(tasks) + ["Avg"]
    header = [""] + [_header(t) for t in cols[:-1]] + ["Avg"]

    def cell(st, c):
        m, sd = st["mean"].get(c), st["std"].get(c)
        if m is None:
            return "-"
        return f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")
    return header, [[name] + [cell(st, c) for c in cols] for name, st in stats.items()]


def write_tables(prefix: str, rows: Rows, tasks: Sequence[str], signed: bool = False,
                 note: Optional[str] = None) -> List[str]:
    """Writes ``prefix.md``, ``prefix.csv`` and ``prefix.json`` (values unrounded, with
    "Avg"); ``note`` goes under the Markdown table. Returns the paths."""
    paths = []
    for ext, fmt in (("md", "markdown"), ("csv", "csv")):
        paths.append(f"{prefix}.{ext}")
        with open(paths[-1], "w") as f:
            f.write(format_table(rows, tasks, fmt, signed=signed))
            if note and fmt == "markdown":
                f.write(f"\n{note}\n")
    paths.append(f"{prefix}.json")
    with open(paths[-1], "w") as f:
        json.dump({name: with_average({t: v.get(t) for t in ordered_tasks(tasks)})
                   for name, v in rows.items()}, f, indent=1)
    return paths
