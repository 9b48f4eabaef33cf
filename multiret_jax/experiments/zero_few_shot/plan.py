"""The zero-/few-shot driver's plan: its options (``Options``, the command-line flags), its
stages and the checks made before any of them runs.

    stages = plan(Options(out_dir=..., data_dir=...))  # raises PlanError, runs nothing

Per held-out task, a leave-one-out stage (``opts.base_gin`` with ``HELD_OUT=<task>``) and a
few-shot stage per ``opts.few_shot_gins`` fine-tuning from it; BM25 first unless off or
given (``opts.bm25_dir``). Each stage's gin is parsed in-process (``resolve_train_config``,
gin cleared before and after) to check that the configs measure what the table says:

- leave-one-out: excludes the held-out task from training, still validates on it (its
  validation there is the zero-shot number);
- few-shot: trains on the held-out task alone, from the leave-one-out model (and its
  vocabulary when it built one), validating on it;
- too few examples (a held-out task with fewer training records than a config's
  ``max_examples``, where ``train`` silently uses all of them): noted (``too_few="cap"``)
  or refused (``"fail"``).

Stages run as ``python -m multiret_jax.train`` / ``multiret_jax.evaluate``
(``Stage.command``; see ``stages.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from multiret_jax.data.tasks import get_task, registered_tasks

ZERO_SHOT = "zero-shot (leave-one-out)"  # table rows / progress labels
MULTITASK = "multi-task"
BM25 = "BM25"

TRAIN_KEYS = ("data_dir", "tasks", "exclude_tasks", "val_tasks", "max_examples", "steps",
              "global_batch", "ance_episodes", "ance_episode_steps", "init_from",
              "tokenizer_dir", "eval_at_start", "chunk_mode", "epochs", "ance_episode_epochs")


class PlanError(ValueError):
    """The configuration cannot produce a valid zero-/few-shot table (nothing was run)."""


@dataclasses.dataclass
class Options:
    """The driver's settings (the command-line flags: ``few_shot_gins`` is
    ``--few_shot_gin``, ``*gin_params`` are ``--*gin_param``)."""
    out_dir: str
    data_dir: Optional[str] = None
    held_out: Optional[Sequence[str]] = None
    base_gin: str = "leave_one_out.gin"
    few_shot_gins: Sequence[str] = ("few_shot_128.gin", "few_shot_1024.gin")
    gin_params: Sequence[str] = ()  # every training stage
    base_gin_params: Sequence[str] = ()  # leave-one-out stages only
    few_shot_gin_params: Sequence[str] = ()  # few-shot stages only
    bm25: bool = True
    bm25_dir: Optional[str] = None  # an existing evaluate.py output (else computed)
    bm25_gin_params: Sequence[str] = ()
    multitask_dir: Optional[str] = None
    metrics: Sequence[str] = ("page_rprec", "passage_rprec")
    reference: Optional[str] = None
    too_few: str = "cap"  # or "fail"
    check_init: bool = True
    reuse_changed: bool = False
    minikilt_scale: float = 1.0
    quiet: bool = False
    jax_cache_dir: Optional[str] = None  # JAX persistent compilation cache for the stages
    dry_run: bool = False



@dataclasses.dataclass
class Stage:
    """One subprocess: a BM25 evaluation or a training run."""
    kind: str  # "bm25", "loo" or "few_shot"
    task: Optional[str]  # held-out task (None for BM25)
    label: str  # table row / progress label
    run_dir: str
    gin_file: str
    gin_params: List[str]
    flags: List[str] = dataclasses.field(default_factory=list)  # other command-line flags
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)  # resolved train.* values
    notes: List[str] = dataclasses.field(default_factory=list)
    status: str = "pending"  # pending | done (found finished) | ran
    seconds: float = 0.0

    @property
    def module(self) -> str:
        return "multiret_jax.evaluate" if self.kind == "bm25" else "multiret_jax.train"

    def command(self) -> List[str]:
        out = [sys.executable, "-m", self.module, f"--gin_file={self.gin_file}"]
        out += ([f"--out_dir={self.run_dir}"] if self.kind == "bm25"
                else [f"--model_dir={self.run_dir}"])
        return out + self.flags + [f"--gin_param={p}" for p in self.gin_params]

    def record(self) -> dict:
        """What identifies the run (the interpreter path may change between sessions)."""
        return {"stage": self.kind, "task": self.task, "gin_file": self.gin_file,
                "flags": self.flags, "gin_params": self.gin_params}

    @property
    def total_steps(self) -> Optional[int]:
        """The run's steps; None when given in epochs (``training/plan.py``: known once
        the data is counted; ``train --dry_run`` prints them)."""
        c = self.config
        if c.get("epochs") is not None or (c["ance_episodes"] and
                                           c.get("ance_episode_epochs") is not None):
            return None
        return c["steps"] + (c["ance_episodes"] or 0) * (c["ance_episode_steps"] or 0)

    @property
    def passes(self) -> float:
        """Passes over a few-shot stage's examples (records count; the BLEU filter may drop
        some)."""
        c = self.config
        n = min(c["max_examples"] or c["train_records"], c["train_records"])
        if self.total_steps is None:
            return float(c["epochs"])
        return self.total_steps * c["global_batch"] / max(n, 1)


# --------------------------------------------------------------------------- gin

def resolve_train_config(gin_file: str, gin_params: Sequence[str]) -> Dict[str, Any]:
    """The ``train.*`` values a stage's command would run with (gin cleared before/after).

    Args:
      gin_file: the stage's gin file (as ``train --gin_file`` takes it).
      gin_params: its bindings.
    Returns:
      ``TRAIN_KEYS`` -> value (``train``'s default where unbound).
    """
    import importlib

    import gin

    from multiret_jax import run_dir
    from multiret_jax.gin_utils import parse_gin
    importlib.import_module("multiret_jax.train")  # registers the configurables
    gin.clear_config()
    try:
        parse_gin([gin_file], list(gin_params))
        return {key: run_dir.train_setting(key) for key in TRAIN_KEYS}
    finally:
        gin.clear_config()


# --------------------------------------------------------------------------- the plan

def _names(tasks) -> Optional[List[str]]:
    return None if tasks is None else [get_task(t).name for t in tasks]


def count_records(path: str) -> int:
    """Non-blank lines of a JSONL file."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _stem(gin_file: str) -> str:
    return re.sub(r"\.gin$", "", os.path.basename(gin_file))


def held_out_tasks(data_dir: str, names: Optional[Sequence[str]]) -> List[str]:
    """``names`` (each needs a train and a dev file) or every task with both files.

    Raises:
      PlanError: a named task lacks a file, or (no names) no task has both.
    """
    def has(t, split):
        return os.path.exists(os.path.join(data_dir, t.filename(split)))
    if names:
        tasks = [get_task(n) for n in names]
        for t in tasks:
            for split in ("train", "dev"):
                if not has(t, split):
                    raise PlanError(f"held-out task {t.name!r}: no {split} file "
                                    f"{os.path.join(data_dir, t.filename(split))}")
        return list(dict.fromkeys(t.name for t in tasks))
    found = [t.name for t in registered_tasks() if has(t, "train") and has(t, "dev")]
    if not found:
        raise PlanError(f"no task has both a train and a dev file in {data_dir}")
    return found


def _leave_one_out_stage(opts: Options, task: str, data_dir: str, out: str) -> Stage:
    """``opts.base_gin`` with ``HELD_OUT=task``, checked to train without ``task`` and to
    validate on it."""
    loo = Stage("loo", task, ZERO_SHOT, os.path.join(out, task, "leave_one_out"),
                opts.base_gin, [f"HELD_OUT={task!r}", *opts.gin_params, *opts.base_gin_params,
                                f"train.data_dir={data_dir!r}"])
    loo.config = cfg = resolve_train_config(loo.gin_file, loo.gin_params)
    if task not in (_names(cfg["exclude_tasks"]) or []):
        raise PlanError(f"{opts.base_gin} with HELD_OUT={task!r} does not exclude {task!r} "
                        f"(train.exclude_tasks={cfg['exclude_tasks']}): the leave-one-out "
                        "model would see its training data")
    if cfg["tasks"] is not None and task in _names(cfg["tasks"]):
        raise PlanError(f"{opts.base_gin}: train.tasks={cfg['tasks']} names the held-out "
                        f"task {task!r}")
    if cfg["val_tasks"] is not None and task not in _names(cfg["val_tasks"]):
        raise PlanError(f"{opts.base_gin}: train.val_tasks={cfg['val_tasks']} leaves out "
                        f"{task!r}: the zero-shot number is the leave-one-out run's "
                        "validation on its dev set")
    return loo


def _few_shot_stage(opts: Options, gin_file: str, loo: Stage, data_dir: str,
                    out: str) -> Stage:
    """``gin_file`` fine-tuning ``loo``'s model on its held-out task, checked to train on that
    task alone, from ``loo``, validating on it."""
    task, loo_dir = loo.task, loo.run_dir
    params = [f"HELD_OUT={task!r}", *opts.gin_params, *opts.few_shot_gin_params,
              f"train.data_dir={data_dir!r}", f"train.init_from={loo_dir!r}"]
    if opts.check_init:
        params.append("train.eval_at_start=True")
    cfg = resolve_train_config(gin_file, params)
    if cfg["tokenizer_dir"] is None and loo.config["tokenizer_dir"] is None:
        # A vocabulary built by the loo run (tiny models without a checkpoint
        # vocabulary): the few-shot run must reuse it, not build its own from
        # other queries (other token ids would scramble the loaded embeddings).
        # Harmless otherwise: train only reads it when the dir has a tokenizer.
        tok = os.path.join(loo_dir, "tokenizer")
        params.append(f"train.tokenizer_dir={tok!r}")
        cfg["tokenizer_dir"] = tok
    n = cfg.get("max_examples")
    label = f"few-shot {n}" if n else f"fine-tuned ({_stem(gin_file)})"
    st = Stage("few_shot", task, label, os.path.join(out, task, _stem(gin_file)), gin_file,
               params, config=cfg)
    if _names(cfg["tasks"]) != [task]:
        raise PlanError(f"{gin_file} with HELD_OUT={task!r} trains on {cfg['tasks']}, "
                        f"not [{task!r}] alone")
    if cfg["val_tasks"] is not None and task not in _names(cfg["val_tasks"]):
        raise PlanError(f"{gin_file}: train.val_tasks={cfg['val_tasks']} leaves out "
                        f"{task!r}: its few-shot number is its validation there")
    if cfg["init_from"] != loo_dir:
        raise PlanError(f"{gin_file}: train.init_from={cfg['init_from']!r}, not the "
                        f"leave-one-out run {loo_dir!r}")
    return st


def _apply_too_few(st: Stage, n_train: int, too_few: str) -> None:
    """Stores ``n_train`` (the held-out task's training records) in ``st.config`` and notes
    (``too_few="cap"``) or refuses (``"fail"``) fewer than its ``max_examples``."""
    n = st.config["max_examples"]
    st.config["train_records"] = n_train
    if n is None:
        st.notes.append(f"{st.label}, {st.task}: no max_examples: all {n_train} records")
    elif n_train < n:
        if too_few == "fail":
            raise PlanError(f"{st.label} ({st.gin_file}): {st.task!r} has only {n_train} "
                            f"training records, fewer than {n} (--too_few=fail; "
                            f"--too_few=cap trains on all of them)")
        st.notes.append(f"{st.label}, {st.task}: only {n_train} training records < {n}: "
                        f"capped, trains on all of them")


def plan(opts: Options) -> List[Stage]:
    """The stages, their resolved configs and checks; raises ``PlanError`` before any run.

    Args:
      opts: the driver's options (``data_dir`` set).
    Returns:
      The stages in running order: BM25 (unless ``opts.bm25`` is off or ``opts.bm25_dir``
      given), then per held-out task its leave-one-out stage and its few-shot stages.
    Raises:
      PlanError: a held-out task without files, a config that would not measure what the
        table says, or (``too_few="fail"``) too few training records.
    """
    data_dir = os.path.abspath(opts.data_dir)
    tasks = held_out_tasks(data_dir, opts.held_out)
    out = os.path.abspath(opts.out_dir)
    stages: List[Stage] = []
    labels: Dict[str, str] = {}
    for task in tasks:
        loo = _leave_one_out_stage(opts, task, data_dir, out)
        stages.append(loo)
        n_train = count_records(os.path.join(data_dir, get_task(task).filename("train")))
        for gin_file in opts.few_shot_gins:
            st = _few_shot_stage(opts, gin_file, loo, data_dir, out)
            if labels.setdefault(st.label, gin_file) != gin_file:
                st.label = f"{st.label} ({_stem(gin_file)})"
            _apply_too_few(st, n_train, opts.too_few)
            stages.append(st)
    if opts.bm25 and not opts.bm25_dir:  # first: cheap, and chunked like the training runs
        chunk = stages[0].config["chunk_mode"]
        stages.insert(0, Stage("bm25", None, BM25, os.path.join(out, "bm25"), "bm25.gin",
                               [f"run_evaluation.chunk_mode={chunk!r}", *opts.bm25_gin_params],
                               [f"--data_dir={data_dir}", f"--tasks={','.join(tasks)}",
                                "--split=dev"]))
    return stages
