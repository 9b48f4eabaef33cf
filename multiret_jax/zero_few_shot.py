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

Code: this module has the options, the orchestration (``run_zero_few_shot``), the table
(``build_table``) and the CLI; ``zero_few_shot_plan`` the stages and the checks made before
any runs (``plan``); ``zero_few_shot_stages`` running them (resume/skip, per-stage records
and logs) and the start-point check (``init_check``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from absl import app, flags, logging

from multiret_jax import compare
from multiret_jax.data import minikilt
from multiret_jax.zero_few_shot_plan import (BM25, MULTITASK, ZERO_SHOT, PlanError, Stage,
                                             held_out_tasks, plan)
from multiret_jax.zero_few_shot_stages import (check_records, init_check, run_stage,
                                               shell_line, stage_state, validation_on)

__all__ = ["BM25", "MULTITASK", "ZERO_SHOT", "Options", "PlanError", "Stage", "build_table",
           "init_check", "plan", "run_zero_few_shot"]


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


def build_table(opts: Options, stages: Sequence[Stage], tasks: Sequence[str]) -> dict:
    """The table: rows BM25, zero-shot, the few-shot configs and multi-task (those with
    results), columns the held-out tasks.

    Args:
      opts: the settings (``bm25``, ``bm25_dir``, ``multitask_dir``, ``metrics``,
        ``reference``).
      stages: the planned stages (their run dirs hold the results).
      tasks: the held-out tasks.
    Returns:
      ``compare.compare``'s result, plus "sources" (row -> task -> the file each value
      comes from).
    """
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


def _head(i: int, stages: Sequence[Stage], st: Stage) -> str:
    return f"[{i}/{len(stages)}] {st.task or 'all'}: {st.label}"


def _say_plan(stages: Sequence[Stage], tasks: Sequence[str], out: str, notes: Sequence[str],
              say: Callable[[str], None]) -> None:
    """One line per stage (what it trains, how long, where, its state), then the notes."""
    say(f"zero-/few-shot on {', '.join(tasks)}: {len(stages)} stages in {out}")
    for i, st in enumerate(stages, 1):
        c = st.config
        what = ("BM25 on the held-out dev sets" if st.kind == "bm25" else
                f"{st.total_steps} steps x {c['global_batch']} queries, trains on "
                f"{'all tasks but ' + st.task if st.kind == 'loo' else st.task}" +
                (f", max {c['max_examples']} examples" if c.get("max_examples") else "") +
                (f" (~{st.passes:.0f} passes over them)" if st.kind == "few_shot" else ""))
        say(f"  {_head(i, stages, st)}: {what} -> {st.run_dir} ({stage_state(st, tasks)})")
    for n in notes:
        say(f"  NOTE: {n}")


def run_zero_few_shot(opts: Options, say: Callable[[str], None] = print) -> dict:
    """Plans, runs (or skips) every stage, writes and returns the table.

    Args:
      opts: the settings.
      say: progress lines, the table and the notes.
    Returns:
      ``build_table``'s result with "held_out", "stages", "notes" and "init_checks" (few-shot
      run_dir -> ``init_check``'s answer), as written to ``<out_dir>/table.json``; with
      ``opts.dry_run``, only "held_out" and "stages" (nothing run or written).
    Raises:
      PlanError: before anything runs (``plan``, ``check_records``).
      RuntimeError: a stage failed (rerunning resumes it).
    """
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
    check_records(stages, opts.reuse_changed, say)
    notes = [n for st in stages for n in st.notes]
    _say_plan(stages, tasks, out, notes, say)
    if opts.dry_run:
        for st in stages:
            say("  $ " + shell_line(st.command()))
        return {"held_out": tasks, "stages": [dataclasses.asdict(s) for s in stages]}

    env = None
    if opts.jax_cache_dir:  # stages of equal shapes (the few-shot ones) compile once
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.abspath(opts.jax_cache_dir))
    init_checks: Dict[str, Optional[str]] = {}
    for i, st in enumerate(stages, 1):
        run_stage(st, _head(i, stages, st), tasks, opts.quiet, env, say)
        if st.kind == "bm25":
            continue
        v = validation_on(st.run_dir, st.task)
        if v is None:
            raise RuntimeError(f"{st.run_dir}/summary.json has no validation on {st.task!r}")
        name = "zero-shot" if st.kind == "loo" else st.label
        say(f"  {name} {st.task}: page R-prec {100 * v['page_rprec']:.2f}")
        if st.kind == "few_shot" and opts.check_init:
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
