"""The zero-/few-shot driver: plans, runs (or skips) every stage, writes the table.

    result = run_zero_few_shot(Options(out_dir="runs/zfs", held_out=["nq"]))

The experiment, its stages and its files: ``__main__.py`` (the command line).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, Optional, Sequence

from multiret_jax.data import minikilt
from multiret_jax.experiments import compare
from multiret_jax.experiments.zero_few_shot.plan import (BM25, MULTITASK, ZERO_SHOT, Options,
                                                         PlanError, Stage, held_out_tasks, plan)
from multiret_jax.experiments.zero_few_shot.stages import (check_records, init_check,
                                                           run_stage, shell_line, stage_state,
                                                           validation_on)

__all__ = ["build_table", "run_zero_few_shot"]


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
                (f"{c['epochs']:g} epochs" if st.total_steps is None else
                 f"{st.total_steps} steps") + f" x {c['global_batch']} queries, trains on "
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
