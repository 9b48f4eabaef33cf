"""What an export will write, decided (and every input checked) before anything is written.

``plan_export`` loads the run as ``run_dir.load_run`` does (so queries are formatted,
truncated and routed to towers exactly as training and validation did), and fails with a
message naming the file when the run directory is incomplete, when the format cannot
hold the model, or when ``out_dir`` holds something that is not an export of this run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from multiret_jax.data.tasks import Task, get_task
from multiret_jax.models.encoders import PooledT5
from multiret_jax.models.params_io import PARAMS_FILE
from multiret_jax.outputs import STAGING_PREFIX, read_json
from multiret_jax.run_dir import CONFIG_FILE, TrainedRun, load_run, parse_run_config
from multiret_jax.train import SUMMARY_FILE

FORMATS = ("hf", "sentence-transformers")
MANIFEST = "multiret_export.json"


@dataclasses.dataclass
class Tower:
    """One exported encoder: ``path`` inside ``out_dir`` ("" for a shared tower), its
    ``role`` ("shared", "query" or "passage"), parameters, and the tasks whose queries it
    encodes."""

    path: str
    role: str
    params: Any
    tasks: List[str]


@dataclasses.dataclass
class ExportPlan:
    """Everything ``write.write_export`` needs.

    Attributes:
      run: the loaded run; out_dir: absolute output directory; fmt: one of ``FORMATS``.
      encoder, pooling: "bert"/"t5" and the run's pooling ("cls", "mean", "encdec").
      towers: the towers to write; tasks: the tasks of the run (trained and validated).
      prompts: task -> the text put before its queries (``QueryFormat.text(task, "")``).
      query_lens: task -> token length of its queries; summary: ``summary.json``.
    """

    run: TrainedRun
    out_dir: str
    fmt: str
    encoder: str
    pooling: str
    towers: List[Tower]
    tasks: List[Task]
    prompts: Dict[str, str]
    query_lens: Dict[str, int]
    summary: Dict[str, Any]

    @property
    def hidden_size(self) -> int:
        return int(getattr(self.run.cfg, "hidden_size", None) or self.run.cfg.d_model)


def _require(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ({what})")
    return path


def read_summary(model_dir: str) -> Dict[str, Any]:
    """``summary.json`` of a finished run (every step done), else a ValueError naming it."""
    path = _require(os.path.join(model_dir, SUMMARY_FILE),
                    "written when training finishes; the run is not finished")
    summary = read_json(path)
    if not isinstance(summary, dict) or "completed_steps" not in summary:
        raise ValueError(f"{path}: not a training summary (no 'completed_steps')")
    if summary["completed_steps"] != summary.get("steps"):
        raise ValueError(f"{path}: training stopped at step {summary['completed_steps']} of "
                         f"{summary.get('steps')}; finish the run before exporting it")
    return summary


def run_tasks(summary: Dict[str, Any]) -> List[Task]:
    """The tasks the run trained on, then those it was only validated on (zero-shot)."""
    names = list(summary.get("tasks") or [])
    names += list(((summary.get("validation") or {}).get("tasks") or {}))
    return [get_task(n) for n in dict.fromkeys(names)]


def towers_of(run: TrainedRun, tasks: Sequence[Task]) -> List[Tower]:
    """The run's towers as numpy parameter trees, with the tasks each one serves."""
    model, params = run.model, run.params
    host = lambda tree: jax.tree_util.tree_map(np.asarray, tree)  # noqa: E731
    names = [t.name for t in tasks]
    if model.shared:
        return [Tower("", "shared", host(model.passage_params(params)), names)]
    out = [Tower("passage", "passage", host(model.passage_params(params)), [])]
    if not model.stacked:
        return [Tower("query", "query", host(model.query_params(params)), names)] + out
    index = {t.name: model.tower_index(t) for t in tasks}
    return [Tower(f"query/{name}", "query", host(model.query_params(params, i)),
                  [t for t in names if index[t] == i])
            for i, name in enumerate(model.tower_names)] + out


def check_out_dir(out_dir: str, model_dir: str, fingerprint: str, overwrite: bool) -> None:
    """Refuses an ``out_dir`` that holds the run, that is not empty and not an export (even
    with ``overwrite``: nothing but an export is ever replaced), or that is an export of
    another run or other parameters, unless ``overwrite``."""
    out, run = os.path.realpath(out_dir), os.path.realpath(model_dir)
    if out == run or run.startswith(out.rstrip(os.sep) + os.sep):
        raise ValueError(f"--out_dir {out_dir} holds the run {model_dir}; export into another "
                         "directory (e.g. <model_dir>/export)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--out_dir {out_dir} is a file, not a directory")
    if not os.path.isdir(out_dir):
        return
    if not [e for e in os.listdir(out_dir) if not e.startswith(STAGING_PREFIX)]:
        return
    manifest = os.path.join(out_dir, MANIFEST)
    previous = None
    if os.path.isfile(manifest):
        try:
            previous = read_json(manifest)
        except ValueError:
            previous = None
    if isinstance(previous, dict) and (overwrite or previous.get("fingerprint") == fingerprint):
        return  # a previous export (of this run, or any with overwrite): replaced
    if isinstance(previous, dict):
        raise FileExistsError(f"--out_dir {out_dir}: an export of another run or of other "
                              "parameters; choose another directory or pass --overwrite to "
                              "replace it")
    # never removes what is not an export: a user's own files are not ours to replace
    raise FileExistsError(f"--out_dir {out_dir}: not empty and not an export (no {MANIFEST}); "
                          "export into a new or empty directory")


def plan_export(model_dir: str, out_dir: str, fmt: str = "hf", overwrite: bool = False,
                gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                params_path: Optional[str] = None) -> ExportPlan:
    """Loads and checks the run and the output directory; writes nothing.

    Args:
      model_dir: the trained run; out_dir: where the export goes.
      fmt: "hf" (``transformers`` directories) or "sentence-transformers".
      overwrite: replace a non-empty ``out_dir`` that is not an export of this run.
      gin_files, gin_params: as ``parse_run_config`` (a run without ``config.gin``).
      params_path: default ``<model_dir>/final_params.safetensors``.
    Raises:
      FileNotFoundError / ValueError naming the missing or damaged file; ValueError for a
      format that cannot hold the model; FileExistsError for an ``out_dir`` in use.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: use one of {', '.join(FORMATS)}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir {model_dir}: no such directory")
    if not gin_files:
        _require(os.path.join(model_dir, CONFIG_FILE), "the run's gin config, written by "
                 "train.py; pass --gin_file for a run trained before it was written")
    _require(params_path or os.path.join(model_dir, PARAMS_FILE),
             "the trained parameters, written when training finishes")
    summary = read_summary(model_dir)
    parse_run_config(model_dir, gin_files, gin_params)
    run = load_run(model_dir, params_path)  # checks every parameter, finds the tokenizer
    encoder = "t5" if isinstance(run.model.module, PooledT5) else "bert"
    pooling = run.model.module.pooling
    if fmt == "sentence-transformers" and pooling == "encdec":
        raise ValueError(f"{model_dir}: T5 with ST5-EncDec pooling (one decoder step) has no "
                         "sentence-transformers equivalent; export with --format=hf (a T5Model "
                         "and the documented one-step decoding)")
    tasks = run_tasks(summary)
    prompts = {t.name: run.marker.text(t, "") for t in tasks}
    for t in tasks:  # the prompt is exactly what training puts before a query
        if t.window == "start" and run.marker.text(t, "q w") != prompts[t.name] + "q w":
            raise ValueError(f"task {t.name!r}: its query format is not a prefix")
    query_lens = {t.name: run.tokenizer.query_length(t, run.marker, run.query_len)
                  for t in tasks}
    towers = towers_of(run, tasks)
    check_out_dir(out_dir, model_dir, run.fingerprint, overwrite)
    return ExportPlan(run, os.path.abspath(out_dir), fmt, encoder, pooling, towers, tasks,
                      prompts, query_lens, summary)
