r"""Zero- and few-shot transfer to held-out tasks (MT-DPR Table 5), end to end.

    python -m multiret_jax.zero_few_shot --out_dir=runs/zfs_tiny --held_out=nq,fever \
        --base_gin=leave_one_out_tiny.gin \
        --few_shot_gin=few_shot_128_tiny.gin,few_shot_1024_tiny.gin
    python -m multiret_jax.zero_few_shot --data_dir=/data/kilt --out_dir=runs/zfs \
        --gin_param="build_biencoder.checkpoint_dir='/ckpt/bert-base-uncased'" \
        --multitask_dir=runs/mtdpr            # adds the full multi-task model's row

For every held-out task T (``--held_out``; default every task with a train and a dev file
in the data directory):

1. **leave-one-out**: ``--base_gin`` with ``HELD_OUT=T`` trains on every task but T
   (``<out_dir>/<T>/leave_one_out``). Its final validation covers every dev file, T's too
   (``train.val_tasks`` unset), so
2. **zero-shot** is that run's ``summary.json`` "validation" on T's dev set: no separate
   evaluation run.
3. **few-shot**: each ``--few_shot_gin`` (``TASKS=[HELD_OUT]``, ``MAX_EXAMPLES=N``)
   fine-tunes the leave-one-out model (``train.init_from=<its model_dir>``, and its
   vocabulary when it built one) on a seeded sample of N of T's training examples
   (``train.load_task_data``: ``random.Random(f"{seed}/{task}").sample``, the same for
   every run with that seed) into ``<out_dir>/<T>/<gin name>``. The 128-sample is a subset
   of the 1,024-sample for every KILT training set (> 4,117 examples) but not for all sizes
   (between ~1,050 and ~4,100 ``random.sample`` switches algorithm with the sample size). With
   ``train.eval_at_start`` on (``--check_init``, default), its "initial_validation" must
   equal the leave-one-out validation: the driver checks that it really started from it.
4. **table**: rows BM25 (``evaluate.py`` on the held-out tasks' dev sets, or
   ``--bm25_dir``), zero-shot, one row per few-shot config, and the full multi-task model
   (``--multitask_dir``, optional); columns the held-out tasks (papers' order) + Avg; one
   section per ``--metrics`` (page R-precision first: the papers' metric), signed
   differences to ``--reference`` if given. Printed, and written to
   ``<out_dir>/table.{md,csv,json}`` (``compare.write_comparison``; the JSON also lists
   every cell's source file, the stages, the notes and the initialisation checks).

Fewer than N examples: ``train`` keeps *all* of a task's examples when it has fewer than
``max_examples`` (no error). The driver counts T's training records before anything runs;
with fewer than N, ``--too_few=cap`` (default) runs on all of them and says so in the plan,
the log and the table's notes; ``--too_few=fail`` stops before training. (The count is of
records in the train file; the provenance BLEU filter may drop a few more, the train log
says how many: "kept k/n examples".)

Steps: the plan prints each few-shot stage's passes over its examples (steps x batch /
examples). ``few_shot_128.gin`` / ``few_shot_1024.gin`` make 100 passes each (100 / 800 steps
at batch 128, DPR's 100 epochs for its small training sets); the ``*_tiny`` variants keep
``runs/tiny.gin``'s 300 steps at batch 64. ``--jax_cache_dir`` gives the stages JAX's
persistent compilation cache: stages of equal shapes (few-shot ones) then compile once.

Layout: ``<out_dir>/bm25`` (evaluate.py output), ``<out_dir>/<T>/leave_one_out`` and
``<out_dir>/<T>/<few-shot gin name>`` (train model_dirs, each with ``zero_few_shot.log``:
the stage's output), ``<out_dir>/table.{md,csv,json}``.

Each stage is a subprocess (``python -m multiret_jax.train`` / ``multiret_jax.evaluate``):
gin's configuration is process-global (includes, macros, the operative config each run
writes to ``config.gin``), and so are JAX's compiled executables and live device buffers;
a fresh process per stage starts every run from exactly the state its command describes,
frees the accelerator memory of the previous model, survives a stage that crashes or is
killed (OOM, XLA abort) with the driver still able to report which, and is the very
command (printed, and stored in ``<run_dir>/zero_few_shot.json``) that reruns or debugs that
stage alone. The cost, a few seconds of imports and compilation per stage, is negligible
next to training. The driver parses each stage's gin in-process only to check the plan
(clearing gin after each) before anything runs.

Resuming: a stage whose run directory has a ``summary.json`` with all its steps completed
(BM25: a ``results.json`` with every held-out task) is skipped; an unfinished one is rerun
with the same command, and ``train`` resumes from its latest checkpoint. A directory made
by a *different* command (other gin files or bindings) stops the driver before anything
runs, unless ``--reuse_changed``.
"""

from __future__ import annotations

import codecs
import dataclasses
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app, flags, logging

from multiret_jax import compare
from multiret_jax.data import minikilt
from multiret_jax.data.tasks import get_task, registered_tasks

RECORD = "zero_few_shot.json"  # per run dir: the command that made it
ZERO_SHOT = "zero-shot (leave-one-out)"
MULTITASK = "multi-task"
BM25 = "BM25"


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
    def total_steps(self) -> int:
        c = self.config
        return c["steps"] + (c["ance_episodes"] or 0) * (c["ance_episode_steps"] or 0)


# --------------------------------------------------------------------------- gin plan

def _resolve(value):
    """Evaluates gin macro references (``%TRAIN_STEPS``, ``[%HELD_OUT]``) to values."""
    import gin
    if isinstance(value, gin.config.ConfigurableReference):
        return _resolve(value.scoped_configurable_fn()) if value.evaluate else value
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


TRAIN_KEYS = ("data_dir", "tasks", "exclude_tasks", "val_tasks", "max_examples", "steps",
              "global_batch", "ance_episodes", "ance_episode_steps", "init_from",
              "tokenizer_dir", "eval_at_start", "chunk_mode")


def resolve_train_config(gin_file: str, gin_params: Sequence[str]) -> Dict[str, Any]:
    """The ``train.*`` values a stage's command would run with (gin cleared before/after)."""
    import gin
    from multiret_jax import train as train_lib  # registers the configurables
    from multiret_jax.gin_utils import parse_gin
    defaults = {k: p.default for k, p in inspect.signature(train_lib.train).parameters.items()}
    gin.clear_config()
    try:
        parse_gin([gin_file], list(gin_params))
        out = {}
        for key in TRAIN_KEYS:
            try:
                out[key] = _resolve(gin.query_parameter(f"train.{key}"))
            except ValueError:  # not bound: train's default
                out[key] = defaults[key]
        return out
    finally:
        gin.clear_config()


def _names(tasks) -> Optional[List[str]]:
    return None if tasks is None else [get_task(t).name for t in tasks]


def count_records(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _label_for(config: Dict[str, Any], gin_file: str) -> str:
    n = config.get("max_examples")
    return f"few-shot {n}" if n else f"fine-tuned ({_stem(gin_file)})"


def _stem(gin_file: str) -> str:
    return re.sub(r"\.gin$", "", os.path.basename(gin_file))


# --------------------------------------------------------------------------- the driver

@dataclasses.dataclass
class Options:
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


class PlanError(ValueError):
    """The configuration cannot produce a valid zero-/few-shot table (nothing was run)."""


def held_out_tasks(data_dir: str, names: Optional[Sequence[str]]) -> List[str]:
    """``names`` (each needs a train and a dev file) or every task with both files."""
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


def plan(opts: Options) -> List[Stage]:
    """The stages, their resolved configs and checks; raises ``PlanError`` before any run."""
    data_dir = os.path.abspath(opts.data_dir)
    tasks = held_out_tasks(data_dir, opts.held_out)
    out = os.path.abspath(opts.out_dir)
    stages: List[Stage] = []
    labels: Dict[str, str] = {}
    for task in tasks:
        loo_dir = os.path.join(out, task, "leave_one_out")
        loo = Stage("loo", task, ZERO_SHOT, loo_dir, opts.base_gin,
                    [f"HELD_OUT={task!r}", *opts.gin_params, *opts.base_gin_params,
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
        stages.append(loo)
        tok = os.path.join(loo_dir, "tokenizer")
        n_train = count_records(os.path.join(data_dir, get_task(task).filename("train")))
        for gin_file in opts.few_shot_gins:
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
                params.append(f"train.tokenizer_dir={tok!r}")
                cfg["tokenizer_dir"] = tok
            st = Stage("few_shot", task, _label_for(cfg, gin_file),
                       os.path.join(out, task, _stem(gin_file)), gin_file, params, config=cfg)
            if _names(cfg["tasks"]) != [task]:
                raise PlanError(f"{gin_file} with HELD_OUT={task!r} trains on {cfg['tasks']}, "
                                f"not [{task!r}] alone")
            if cfg["val_tasks"] is not None and task not in _names(cfg["val_tasks"]):
                raise PlanError(f"{gin_file}: train.val_tasks={cfg['val_tasks']} leaves out "
                                f"{task!r}: its few-shot number is its validation there")
            if cfg["init_from"] != loo_dir:
                raise PlanError(f"{gin_file}: train.init_from={cfg['init_from']!r}, not the "
                                f"leave-one-out run {loo_dir!r}")
            if labels.setdefault(st.label, gin_file) != gin_file:
                st.label = f"{st.label} ({_stem(gin_file)})"
            n = cfg["max_examples"]
            cfg["train_records"] = n_train
            if n is None:
                st.notes.append(f"{st.label}, {task}: no max_examples: all {n_train} records")
            elif n_train < n:
                if opts.too_few == "fail":
                    raise PlanError(f"{st.label} ({gin_file}): {task!r} has only {n_train} "
                                    f"training records, fewer than {n} (--too_few=fail; "
                                    f"--too_few=cap trains on all of them)")
                st.notes.append(f"{st.label}, {task}: only {n_train} training records < {n}: "
                                f"capped, trains on all of them")
            stages.append(st)
    if opts.bm25 and not opts.bm25_dir:  # first: cheap, and chunked like the training runs
        chunk = stages[0].config["chunk_mode"]
        stages.insert(0, Stage("bm25", None, BM25, os.path.join(out, "bm25"), "bm25.gin",
                               [f"run_evaluation.chunk_mode={chunk!r}", *opts.bm25_gin_params],
                               [f"--data_dir={data_dir}", f"--tasks={','.join(tasks)}",
                                "--split=dev"]))
    return stages


def _epochs(st: Stage) -> float:
    """Passes over a few-shot stage's examples (records count; the BLEU filter may drop some)."""
    c = st.config
    n = min(c["max_examples"] or c["train_records"], c["train_records"])
    return st.total_steps * c["global_batch"] / max(n, 1)


def _stage_state(st: Stage, tasks: Sequence[str]) -> str:
    """"done", "partial" (started, not finished) or "new"."""
    if st.kind == "bm25":
        path = os.path.join(st.run_dir, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                if set(tasks) <= set(json.load(f).get("tasks", {})):
                    return "done"
    else:
        path = os.path.join(st.run_dir, "summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                s = json.load(f)
            if s.get("completed_steps", -1) >= s.get("steps", float("inf")):
                return "done"
    return "partial" if os.path.isdir(st.run_dir) and os.listdir(st.run_dir) else "new"


def _check_records(stages: Sequence[Stage], reuse_changed: bool, say) -> None:
    """Refuses run dirs made by another command (before anything runs)."""
    changed = []
    for st in stages:
        path = os.path.join(st.run_dir, RECORD)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            old = json.load(f)
        new = st.record()
        if {k: old.get(k) for k in new} != new:
            changed.append(f"{st.run_dir}: made with {old.get('gin_file')} "
                           f"{old.get('gin_params')}, now {new['gin_file']} {new['gin_params']}")
    if changed and not reuse_changed:
        raise PlanError("run directories made by a different command (delete them to rerun, "
                        "or --reuse_changed to keep them):\n  " + "\n  ".join(changed))
    for c in changed:
        say(f"WARNING (--reuse_changed): {c}")


def _shell(cmd: Sequence[str]) -> str:
    """The command as one would type it (``"--gin_param=HELD_OUT='nq'"``)."""
    def q(arg):
        if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
            return shlex.quote(arg)
        return f'"{arg}"'
    return " ".join(q(a) for a in cmd)


def _run_logged(cmd: Sequence[str], log_path: str, quiet: bool,
                env: Optional[Dict[str, str]] = None) -> int:
    """Runs ``cmd``, its stdout+stderr to ``log_path`` (appended) and, unless quiet, to ours."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_path, "ab") as log:
        log.write(("$ " + _shell(cmd) + "\n").encode())
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stdout.write(decoder.decode(chunk))
                    sys.stdout.flush()
        finally:
            rc = proc.wait()
    return rc


def _tail(path: str, n: int = 25) -> str:
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines[-n:])


def _load_summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def _task_metrics(validation: Optional[dict], task: str) -> Optional[dict]:
    return None if validation is None else validation["tasks"].get(task)


def init_check(loo_dir: str, few_dir: str, task: str, tol: float = 1e-6) -> Optional[str]:
    """None when the few-shot run's initial validation on ``task`` equals the leave-one-out
    run's final one (it started from those parameters and vocabulary), else the mismatch."""
    a = _task_metrics(_load_summary(loo_dir).get("validation"), task)
    b = _task_metrics(_load_summary(few_dir).get("initial_validation"), task)
    if a is None or b is None:
        return f"{few_dir}: no initial_validation / leave-one-out validation for {task!r}"
    bad = [k for k in ("page_rprec", "passage_rprec", "recall@5")
           if (a.get(k) is None) != (b.get(k) is None)
           or (a.get(k) is not None and abs(a[k] - b[k]) > tol)]
    return (None if not bad else f"{few_dir}: initial {', '.join(f'{k}={b.get(k)}' for k in bad)}"
            f" != leave-one-out {', '.join(f'{k}={a.get(k)}' for k in bad)}: it did not start "
            "from the leave-one-out model")


def build_table(opts: Options, stages: Sequence[Stage], tasks: Sequence[str]) -> dict:
    """compare.compare's result over the rows BM25, zero-shot, the few-shot configs and
    multi-task (those with results), columns the held-out tasks; plus "sources" (row ->
    task -> the file each value comes from)."""
    rows: Dict[str, Dict[str, dict]] = {}
    sources: Dict[str, Dict[str, str]] = {}

    def add(label, run_spec, only):
        run = compare.load_run(label, run_spec)
        for t in only:
            if t in run.tasks:
                rows.setdefault(label, {})[t] = run.tasks[t]
                sources.setdefault(label, {})[t] = run.path

    bm25_dir = opts.bm25_dir or next((s.run_dir for s in stages if s.kind == "bm25"), None)
    if opts.bm25 and bm25_dir:
        add(BM25, bm25_dir, tasks)
    for st in stages:  # in plan order: zero-shot, then the few-shot configs, per task
        if st.kind != "bm25" and os.path.isfile(os.path.join(st.run_dir, "summary.json")):
            add(st.label, st.run_dir, [st.task])
    if opts.multitask_dir:
        add(MULTITASK, opts.multitask_dir, tasks)
    order = [BM25, ZERO_SHOT] + [s.label for s in stages if s.kind == "few_shot"] + [MULTITASK]
    runs = [compare.Run(name, "; ".join(dict.fromkeys(sources[name].values())),
                        "evaluate" if name == BM25 else "train",
                        {t: rows[name].get(t, {}) for t in tasks})
            for name in dict.fromkeys(order) if name in rows]
    result = compare.compare(runs, opts.metrics, opts.reference)
    result["sources"] = sources
    return result


def run_zero_few_shot(opts: Options, say: Callable[[str], None] = print) -> dict:
    """Plans, runs (or skips) every stage, writes and returns the table (``build_table``'s
    result with "held_out", "stages", "notes", "init_checks")."""
    t_start = time.time()
    if opts.too_few not in ("cap", "fail"):
        raise PlanError(f"--too_few must be cap or fail, got {opts.too_few!r}")
    out = os.path.abspath(opts.out_dir)
    os.makedirs(out, exist_ok=True)
    if opts.data_dir is None:
        opts = dataclasses.replace(opts, data_dir=os.path.join(out, "minikilt"))
        minikilt.generate(opts.data_dir, scale=opts.minikilt_scale, seed=0)
        say(f"no --data_dir: the generated mini-KILT (scale {opts.minikilt_scale}) in "
            f"{opts.data_dir}")
    tasks = held_out_tasks(os.path.abspath(opts.data_dir), opts.held_out)
    stages = plan(opts)
    _check_records(stages, opts.reuse_changed, say)
    notes = [n for st in stages for n in st.notes]
    say(f"zero-/few-shot on {', '.join(tasks)}: {len(stages)} stages in {out}")
    for i, st in enumerate(stages, 1):
        c = st.config
        what = ("BM25 on the held-out dev sets" if st.kind == "bm25" else
                f"{st.total_steps} steps x {c['global_batch']} queries, trains on "
                f"{'all tasks but ' + st.task if st.kind == 'loo' else st.task}" +
                (f", max {c['max_examples']} examples" if c.get("max_examples") else "") +
                (f" (~{_epochs(st):.0f} passes over them)" if st.kind == "few_shot" else ""))
        say(f"  [{i}/{len(stages)}] {st.task or 'all'}: {st.label}: {what} -> {st.run_dir}"
            f" ({_stage_state(st, tasks)})")
    for n in notes:
        say(f"  NOTE: {n}")
    if opts.dry_run:
        for st in stages:
            say("  $ " + _shell(st.command()))
        return {"held_out": tasks, "stages": [dataclasses.asdict(s) for s in stages]}

    env = None
    if opts.jax_cache_dir:  # stages of equal shapes (the few-shot ones) compile once
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.abspath(opts.jax_cache_dir))
    init_checks: Dict[str, Optional[str]] = {}
    for i, st in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {st.task or 'all'}: {st.label}"
        state = _stage_state(st, tasks)
        if state == "done":
            st.status = "done"
            say(f"{head}: finished already in {st.run_dir}, skipping")
        else:
            log_path = os.path.join(st.run_dir, "zero_few_shot.log")
            os.makedirs(st.run_dir, exist_ok=True)
            with open(os.path.join(st.run_dir, RECORD), "w") as f:
                json.dump({**st.record(), "command": st.command()}, f, indent=1)
            say(f"{head}: {'resuming' if state == 'partial' else 'running'} "
                f"(log {log_path})\n  $ {_shell(st.command())}")
            t0 = time.time()
            rc = _run_logged(st.command(), log_path, opts.quiet, env)
            st.seconds = time.time() - t0
            if rc != 0 or _stage_state(st, tasks) != "done":
                raise RuntimeError(f"{head} failed (exit status {rc}); rerun the same command "
                                   f"to resume. Last lines of {log_path}:\n{_tail(log_path)}")
            st.status = "ran"
            say(f"{head}: done in {st.seconds:.0f}s")
        if st.kind == "loo":
            v = _task_metrics(_load_summary(st.run_dir)["validation"], st.task)
            if v is None:
                raise RuntimeError(f"{st.run_dir}/summary.json has no validation on {st.task!r}")
            say(f"  zero-shot {st.task}: page R-prec {100 * v['page_rprec']:.2f}")
        elif st.kind == "few_shot":
            v = _task_metrics(_load_summary(st.run_dir)["validation"], st.task)
            say(f"  {st.label} {st.task}: page R-prec {100 * v['page_rprec']:.2f}")
            if opts.check_init:
                loo_dir = next(s.run_dir for s in stages if s.kind == "loo" and s.task == st.task)
                problem = init_check(loo_dir, st.run_dir, st.task)
                init_checks[st.run_dir] = problem
                if problem:
                    say(f"WARNING: {problem}")
                    notes.append(problem)

    result = build_table(opts, stages, tasks)
    result.update(held_out=tasks, notes=notes, init_checks=init_checks,
                  stages=[{"kind": s.kind, "task": s.task, "label": s.label,
                           "run_dir": s.run_dir, "status": s.status,
                           "seconds": round(s.seconds, 1), "command": s.command()}
                          for s in stages])
    prefix = os.path.join(out, "table")
    paths = compare.write_comparison(prefix, result)
    if notes:
        with open(prefix + ".md", "a") as f:
            f.write("\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes))
    say(f"\nZero-/few-shot on held-out tasks, dev-set KILT R-precision x100 "
        f"({time.time() - t_start:.0f}s):\n")
    say(compare.format_comparison(result, "text"))
    for n in notes:
        say(f"note: {n}")
    say("wrote " + ", ".join(paths))
    return result


# --------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the stages log; the driver prints its progress
    opts = Options(
        out_dir=FLAGS.out_dir, data_dir=FLAGS.data_dir, held_out=FLAGS.held_out,
        base_gin=FLAGS.base_gin, few_shot_gins=FLAGS.few_shot_gin, gin_params=FLAGS.gin_param,
        base_gin_params=FLAGS.base_gin_param, few_shot_gin_params=FLAGS.few_shot_gin_param,
        bm25=FLAGS.bm25, bm25_dir=FLAGS.bm25_dir, bm25_gin_params=FLAGS.bm25_gin_param,
        multitask_dir=FLAGS.multitask_dir, metrics=FLAGS.metrics, reference=FLAGS.reference,
        too_few=FLAGS.too_few, check_init=FLAGS.check_init, reuse_changed=FLAGS.reuse_changed,
        minikilt_scale=FLAGS.minikilt_scale, quiet=FLAGS.quiet, dry_run=FLAGS.dry_run,
        jax_cache_dir=FLAGS.jax_cache_dir)
    try:
        run_zero_few_shot(opts)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.DEFINE_string("out_dir", None, "Output directory (a run dir per stage, table.*).",
                        required=True)
    flags.DEFINE_string("data_dir", None, "KILT-format benchmark (default: the generated "
                        "mini-KILT in <out_dir>/minikilt).")
    flags.DEFINE_list("held_out", None, "Held-out tasks (default: every task with a train "
                      "and a dev file).")
    flags.DEFINE_string("base_gin", "leave_one_out.gin", "Leave-one-out experiment (HELD_OUT).")
    flags.DEFINE_list("few_shot_gin", ["few_shot_128.gin", "few_shot_1024.gin"],
                      "Few-shot experiments (HELD_OUT, init_from); empty: zero-shot only.")
    flags.DEFINE_multi_string("gin_param", [], "Gin binding for every training stage.")
    flags.DEFINE_multi_string("base_gin_param", [], "Gin binding for leave-one-out stages.")
    flags.DEFINE_multi_string("few_shot_gin_param", [], "Gin binding for few-shot stages.")
    flags.DEFINE_bool("bm25", True, "Include the BM25 row.")
    flags.DEFINE_string("bm25_dir", None, "An evaluate.py output dir with the held-out tasks "
                        "(default: run evaluate.py into <out_dir>/bm25).")
    flags.DEFINE_multi_string("bm25_gin_param", [], "Gin binding for the BM25 evaluation.")
    flags.DEFINE_string("multitask_dir", None, "The full multi-task model's model_dir (or an "
                        "evaluate.py dir): adds its row.")
    flags.DEFINE_list("metrics", ["page_rprec", "passage_rprec"], "Table sections "
                      f"({compare.METRIC_HELP}; train runs have R-precision and page recall@5).")
    flags.DEFINE_string("reference", None, "Row to subtract from the others (e.g. BM25).")
    flags.DEFINE_enum("too_few", "cap", ["cap", "fail"], "Held-out task with fewer training "
                      "records than a few-shot config's max_examples: train on all of them "
                      "(noted) or stop before training.")
    flags.DEFINE_bool("check_init", True, "Validate few-shot runs at step 0 and check that "
                      "it equals the leave-one-out validation.")
    flags.DEFINE_bool("reuse_changed", False, "Keep run dirs made by a different command.")
    flags.DEFINE_float("minikilt_scale", 1.0, "Size of the generated mini-KILT (no --data_dir).")
    flags.DEFINE_bool("quiet", False, "Stage output to the logs only (not to the terminal).")
    flags.DEFINE_string("jax_cache_dir", None, "JAX persistent compilation cache directory "
                        "for the stages (few-shot stages of one shape then compile once).")
    flags.DEFINE_bool("dry_run", False, "Print the plan and the commands; run nothing.")
    app.run(main)
