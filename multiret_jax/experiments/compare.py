r"""Several runs side by side, per task, and their signed differences to a reference run.

    python -m multiret_jax.experiments.compare --runs bm25=runs/bm25_kilt mtdpr=runs/mtdpr \
        taco=runs/taco --reference=mtdpr --metrics=page_rprec,passage_rprec \
        --out=runs/compare/table1

The shape of TACO Tables 1/3 and MT-DPR Tables 5/6 (one row per run, columns FEV AY2
T-REx zsRE NQ HoPo TQA WoW Avg, values x100), and, with ``--reference``, MT-DPR Table 3's
heatmap as numbers: every other row minus the reference row, signed.

A run is ``name=path``. ``path`` is an ``evaluate.py`` output directory (its
``results.json``), a training ``model_dir`` (its ``summary.json``: the final
"validation", or the initial model's with a ``#initial`` suffix, e.g.
``zero_shot=runs/taco#initial``), or either JSON file itself. A directory with both files
is read as an evaluation (``results.json``).

Metrics (``METRIC_HELP``): ``page_rprec``, ``passage_rprec``, ``{page,passage}_recall@k``,
``{page,passage}_success@k`` and ``{page,passage}_precision@k``, with the KILT scorer's
definitions (``metrics/kilt_retrieval.py``: recall@k counts completed evidence sets,
success@k is "some evidence set complete in the top k", both for k >= 2 only). A level
prefix may be left out (page). Training summaries have page/passage R-precision and page
recall@5 only; asking a run for a metric it lacks is an error naming the run.

Missing tasks (a run without a task the others have, or no passage gold) print as "-" and
are left out of that row's average ("Avg" is over the tasks the row has, as in
``tables.py``); the tables then say which rows average fewer tasks. A difference is
defined where both the row and the reference have the task; its "Avg" is the mean of
those differences (the difference of the averages when both rows are complete).

Writes ``<out>.md`` (a section per metric: values, then differences), ``<out>.csv``
(columns ``metric, table, run, FEV, ..., Avg``; ``table`` is "value" or
"minus <reference>") and ``<out>.json`` (unrounded values and differences, run paths).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from absl import app, flags

from multiret_jax import cli, tables
from multiret_jax.outputs import read_json

METRIC_HELP = ("page_rprec, passage_rprec, page_recall@K, passage_recall@K, page_success@K, "
               "passage_success@K, page_precision@K, passage_precision@K (K >= 2 for recall "
               "and success)")
# KILT scorer result key -> our metric kind.
_KILT_KEYS = {"Rprec": "rprec", "precision": "precision", "recall": "recall",
              "success_rate": "success"}


class Run(NamedTuple):
    """One run's per-task metrics (fractions 0..1; None where undefined)."""
    name: str
    path: str
    kind: str  # "evaluate" or "train"
    tasks: Dict[str, Dict[str, Optional[float]]]  # task -> metric -> value


def canonical_metric(name: str) -> str:
    """``"Rprec"`` -> ``"page_rprec"``, ``"passage_success_rate@5"`` -> ``"passage_success@5"``."""
    m = re.fullmatch(r"(?:(page|passage)[_ ])?(r-?prec|success(?:_rate)?@\d+|recall@\d+|"
                     r"precision@\d+)", name.strip().lower())
    if not m:
        raise ValueError(f"unknown metric {name!r}; known: {METRIC_HELP}")
    kind = m.group(2).replace("r-prec", "rprec").replace("success_rate", "success")
    return f"{m.group(1) or 'page'}_{kind}"


def _kilt_metrics(scores: Optional[Mapping[str, float]], level: str) -> Dict[str, float]:
    """KILT scorer keys (``Rprec``, ``recall@5``, ``success_rate@5``, ...) -> our names."""
    out = {}
    for key, value in (scores or {}).items():
        base, _, k = key.partition("@")
        if base in _KILT_KEYS and value is not None:
            out[f"{level}_{_KILT_KEYS[base]}" + (f"@{k}" if k else "")] = float(value)
    return out


def _from_results(results: dict) -> Dict[str, Dict[str, Optional[float]]]:
    tasks = {}
    for task, r in results["tasks"].items():
        vals: Dict[str, Optional[float]] = _kilt_metrics(r.get("page"), "page")
        vals.update(_kilt_metrics(r.get("passage"), "passage"))
        vals["passage_rprec"] = r.get("passage_rprec")
        tasks[task] = vals
    return tasks


def _from_validation(validation: dict) -> Dict[str, Dict[str, Optional[float]]]:
    return {task: {"page_rprec": r.get("page_rprec"), "passage_rprec": r.get("passage_rprec"),
                   "page_recall@5": r.get("recall@5")}
            for task, r in validation["tasks"].items()}


def load_run(name: str, spec: str) -> Run:
    """Reads a run from an evaluate.py output / train model_dir / their JSON file.

    Args:
      name: the row name.
      spec: a path, optionally with ``#initial`` (train runs: the initial validation).
    Returns:
      The ``Run``.
    Raises:
      FileNotFoundError: neither ``results.json`` nor ``summary.json`` at ``spec``.
      ValueError: the file has no per-task results (e.g. a summary of an unfinished run).
    """
    path, _, which = spec.partition("#")
    if which not in ("", "initial"):
        raise ValueError(f"run {name!r}: unknown selector #{which} in {spec!r}; only #initial")
    candidates = ([path] if os.path.isfile(path) else
                  [os.path.join(path, f) for f in ("results.json", "summary.json")])
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise FileNotFoundError(f"run {name!r}: {path} is neither an evaluate.py output "
                                "directory (results.json) nor a training model_dir "
                                "(summary.json), nor one of those files")
    data = read_json(found)
    if not isinstance(data, dict):
        raise ValueError(f"run {name!r}: {found} holds a JSON {type(data).__name__}, not the "
                         "object evaluate.py / train.py write")
    if isinstance(data.get("tasks"), dict):  # evaluate.py results.json
        if which:
            raise ValueError(f"run {name!r}: #initial applies to training runs, {found} is "
                             "an evaluation")
        return Run(name, found, "evaluate", _from_results(data))
    if "validation" in data or "initial_validation" in data:  # train summary.json
        key = "initial_validation" if which else "validation"
        if data.get(key) is None:
            raise ValueError(f"run {name!r}: {found} has no {key!r} (validation was off or "
                             "the run did not finish)")
        return Run(name, found, "train", _from_validation(data[key]))
    raise ValueError(f"run {name!r}: {found} is neither an evaluate.py results.json (no "
                     "'tasks' dict) nor a training summary.json (no 'validation')")


def metric_rows(runs: Sequence[Run], metric: str) -> Dict[str, Dict[str, Optional[float]]]:
    """Rows ``{run name: {task: value x100 or None}}`` of one metric.

    Raises:
      ValueError: a run has the metric for none of its tasks (names the run, its file and
        the metrics it has).
    """
    metric = canonical_metric(metric)
    rows = {}
    for run in runs:
        if not any(metric in vals for vals in run.tasks.values()):
            have = sorted({m for vals in run.tasks.values() for m in vals})
            raise ValueError(f"run {run.name!r} ({run.path}) has no {metric}; it has: "
                             f"{', '.join(have)}")
        rows[run.name] = {t: None if vals.get(metric) is None else 100.0 * vals[metric]
                          for t, vals in run.tasks.items()}
    return rows


def difference_rows(rows: Mapping[str, Mapping[str, Optional[float]]],
                    reference: str) -> Dict[str, Dict[str, Optional[float]]]:
    """Every row but ``reference`` minus the reference row, per task (None unless both
    have the task)."""
    if reference not in rows:
        raise KeyError(f"reference run {reference!r} is not among the runs {list(rows)}")
    ref = rows[reference]
    return {name: {t: None if v is None or ref.get(t) is None else v - ref[t]
                   for t, v in vals.items()}
            for name, vals in rows.items() if name != reference}


def all_tasks(runs: Sequence[Run]) -> List[str]:
    """The union of the runs' tasks, in the papers' column order."""
    seen: Dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run.tasks))
    return tables.ordered_tasks(list(seen))


def compare(runs: Sequence[Run], metrics: Sequence[str] = ("page_rprec",),
            reference: Optional[str] = None) -> dict:
    """Values (and differences to ``reference``) of each metric for every run.

    Returns:
      ``{"tasks": [...], "reference": name or None, "runs": {name: {"path", "kind"}},
      "metrics": {metric: {"values": rows, "differences": rows or None}}}``; rows are
      ``{run: {task: value x100 or None, ..., "Avg": ...}}`` (tasks of all runs).
    """
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}")
    tasks = all_tasks(runs)
    out = {"tasks": tasks, "reference": reference,
           "runs": {r.name: {"path": r.path, "kind": r.kind} for r in runs}, "metrics": {}}
    for metric in metrics:
        rows = metric_rows(runs, metric)
        full = lambda rs: {n: tables.with_average({t: v.get(t) for t in tasks})
                           for n, v in rs.items()}
        diffs = difference_rows(rows, reference) if reference else None
        out["metrics"][canonical_metric(metric)] = {
            "values": full(rows), "differences": None if diffs is None else full(diffs)}
    return out


def _sections(result: dict) -> List[Tuple[str, str, dict, bool]]:
    """(metric, table label, rows without "Avg", signed) per table, in output order."""
    out = []
    for metric, m in result["metrics"].items():
        strip = lambda rs: {n: {t: v for t, v in vals.items() if t != "Avg"}
                            for n, vals in rs.items()}
        out.append((metric, "value", strip(m["values"]), False))
        if m["differences"] is not None:
            out.append((metric, f"minus {result['reference']}", strip(m["differences"]), True))
    return out


def _incomplete_note(rows: Mapping[str, Mapping[str, Optional[float]]], tasks) -> str:
    short = {n: sum(v.get(t) is not None for t in tasks) for n, v in rows.items()}
    notes = [f"{n}: {c} of {len(tasks)}" for n, c in short.items() if c < len(tasks)]
    return ("Avg over the tasks present ('-' excluded): " + "; ".join(notes) + "\n"
            if notes else "")


def format_comparison(result: dict, fmt: str = "text", digits: int = 2) -> str:
    """Renders ``compare``'s result as text, Markdown (sections) or one CSV table."""
    tasks = result["tasks"]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        for i, (metric, label, rows, signed) in enumerate(_sections(result)):
            header, body = tables.table_cells(rows, tasks, digits, signed)
            if i == 0:
                writer.writerow(["metric", "table", "run"] + header[1:])
            writer.writerows([[metric, label] + r for r in body])
        return buf.getvalue()
    parts = []
    for metric, label, rows, signed in _sections(result):
        title = f"{metric} x100" if label == "value" else f"{metric} x100, {label}"
        title = f"### {title}\n\n" if fmt == "markdown" else f"{title}:\n"
        note = _incomplete_note(rows, tasks)
        parts.append(title + tables.format_table(rows, tasks, fmt, digits, signed) +
                     (("\n" if fmt == "markdown" else "") + note if note else ""))
    return "\n".join(parts)


def write_comparison(prefix: str, result: dict) -> List[str]:
    """Writes ``prefix.md``, ``prefix.csv`` and ``prefix.json``; returns the paths."""
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    paths = []
    for ext, fmt in (("md", "markdown"), ("csv", "csv")):
        paths.append(f"{prefix}.{ext}")
        with open(paths[-1], "w") as f:
            f.write(format_comparison(result, fmt))
    paths.append(f"{prefix}.json")
    with open(paths[-1], "w") as f:
        json.dump(result, f, indent=1)
    return paths


def parse_runs(specs: Sequence[str]) -> List[Run]:
    """``["name=path", ...]`` -> runs (a bare path is named by its last component)."""
    runs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(spec.partition("#")[0])), spec
        runs.append(load_run(name, path))
    return runs


FLAGS = flags.FLAGS


def main(argv):
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "out")
    # "--runs a=x b=y": absl takes "a=x" as the flag's value and leaves "b=y" positional.
    runs = parse_runs(FLAGS.runs + list(FLAGS.run) + list(argv[1:]))
    if not runs:
        raise app.UsageError("give at least one run: --runs name=dir [name=dir ...]")
    metrics = FLAGS.metric.split(",") if FLAGS.metric else FLAGS.metrics
    result = compare(runs, metrics, FLAGS.reference)
    print(format_comparison(result, "text"))
    if FLAGS.out:
        print("wrote " + ", ".join(write_comparison(FLAGS.out, result)))


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    flags.DEFINE_list("runs", [], "name=dir entries, comma-separated or space-separated.")
    flags.DEFINE_multi_string("run", [], "name=dir (repeatable; alternative to --runs).")
    flags.DEFINE_string("reference", None, "Run name whose row the others are compared to.")
    flags.DEFINE_list("metrics", ["page_rprec"], f"Metrics: {METRIC_HELP}.")
    flags.DEFINE_string("metric", None, "One metric (alias of --metrics).")
    flags.DEFINE_string("out", None, "Output prefix: writes <out>.md, <out>.csv, <out>.json.")


TOOL = "compare"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
