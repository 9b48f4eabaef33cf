r"""One command per paper table: train and evaluate every row over several seeds.

    python -m multiret_jax.reproduce --table=taco_ablation --setting=tiny --seeds=3 \
        --out_dir=runs/taco_ablation_tiny

Tables (``TABLES``):

* ``taco_methods``: TACO's Table 1 rows that are ours to train: naive, PCGrad, CGD,
  GradNorm, TACO, all in TACO's setting (prefixes, c=4 per-task batches, 2 negatives).
* ``taco_ablation``: TACO's ablation: TACO, without the prefix, without adaptive learning
  (naive), without both.
* ``mtdpr``: MT-DPR Tables 2-3: task-specific DPR (one run per task), multi-task (union
  batches), multi-task with task-type markers.

Settings (``SETTINGS``): ``tiny`` (the experiments' ``*_tiny.gin`` on one generated
mini-KILT, tiny random models, CPU), ``realmini`` (all-MiniLM-L6-v2 on the shipped real
data, ``realmini_minilm*.gin``), ``kilt`` (the paper configs; ``--data_dir`` and
``--checkpoint_dir`` name the KILT files and the HF checkpoint; an accelerator job).

Every (row, seed) is a ``python -m multiret_jax.train`` subprocess in
``<out_dir>/runs/<row>/seed_<s>`` (``train.seed`` and ``build_biencoder.seed`` = s; the data
is the same for every seed), logged to ``train.log`` there. A finished run is skipped on a
rerun and a killed one resumes. Its score is the run's final validation (KILT page-level
R-precision x100 per task on the dev files; the ``realmini`` and ``tiny`` dev sets are
small, so the seed spread matters). ``<out_dir>/table.{md,csv,json}`` hold per task and on
average the mean and standard deviation over seeds (the average is taken per seed first),
the wall time of each row, and for the rows with a TACO state the fractions of task-specific
(task-distribution entropy < 0.3) and not-activated parameters (TACO Figure 1). The naive
rows of TACO's tables train as TACO with uniform weights throughout (a burn-in of 100%: the
same update as naive), so their sensitivity EMA is measured the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import flags

from multiret_jax import cli, tables
from multiret_jax.data import minikilt
from multiret_jax.data.tasks import benchmark_tasks
from multiret_jax.experiments.zero_few_shot.stages import run_logged, shell_line
from multiret_jax.outputs import read_json
from multiret_jax.models.params_io import PARAMS_FILE
from multiret_jax.train import SUMMARY_FILE

TAU = 2.0  # the task-distribution temperature of the specialisation fractions (TACO's)


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a method and a query marker in TACO's setting, or an MT-DPR variant
    (``kind``: "taco", "mtdpr", "task_specific")."""
    label: str
    kind: str
    method: str = "naive"
    marker: str = "prefix"


TABLES: Dict[str, List[Row]] = {
    "taco_methods": [Row("naive", "taco", "naive"), Row("PCGrad", "taco", "pcgrad"),
                     Row("CGD", "taco", "cgd"), Row("GradNorm", "taco", "gradnorm"),
                     Row("TACO", "taco", "taco")],
    "taco_ablation": [Row("TACO", "taco", "taco"), Row("w/o prefix", "taco", "taco", "none"),
                      Row("w/o adaptive learning", "taco", "naive"),
                      Row("w/o both", "taco", "naive", "none")],
    "mtdpr": [Row("task-specific", "task_specific", marker="none"),
              Row("multi-task", "mtdpr", marker="none"),
              Row("multi-task + type markers", "mtdpr", marker="type")],
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where a table's runs train: gin files per row kind / method, and what every run of
    the setting binds."""
    name: str
    taco_file: str                  # TACO's experiment
    method_files: Dict[str, List[str]]  # method -> gin files (TACO's setting, that method)
    mtdpr_file: str
    task_specific_file: str
    ema_beta: float                 # TACO's beta in this setting (the naive rows' EMA too)
    extra: Sequence[str] = ()       # bindings of every run


def _taco_variants(suffix: str) -> Dict[str, List[str]]:
    return {m: [f"taco_{m}{suffix}.gin"] for m in ("pcgrad", "cgd", "gradnorm")}


SETTINGS = {
    "tiny": Setting("tiny", "taco_tiny.gin", _taco_variants("_tiny"), "mtdpr_tiny.gin",
                    "task_specific_tiny.gin", 0.999),
    "realmini": Setting("realmini", "realmini_minilm_taco.gin",
                        {m: ["realmini_minilm.gin", f"methods/{m}.gin"]
                         for m in ("pcgrad", "cgd", "gradnorm")},
                        "realmini_minilm.gin", "realmini_minilm.gin", 0.99),
    "kilt": Setting("kilt", "taco.gin", _taco_variants(""), "mtdpr.gin", "task_specific.gin",
                    0.999),
}


@dataclasses.dataclass
class Run:
    row: Row
    seed: int
    task: Optional[str]  # task-specific runs: the one task
    run_dir: str
    files: List[str]
    bindings: List[str]

    def command(self) -> List[str]:
        return ([sys.executable, "-m", "multiret_jax.train", f"--model_dir={self.run_dir}"]
                + [f"--gin_file={f}" for f in self.files]
                + [f"--gin_param={b}" for b in self.bindings])


def row_config(row: Row, setting: Setting, task: Optional[str] = None):
    """(gin files, bindings) of ``row`` in ``setting`` (without the seed)."""
    realmini = setting.name == "realmini"
    if row.kind == "task_specific":
        files = [setting.task_specific_file]
        binds = ([f"TASKS=['{task}']", "BATCHING='union'"] if realmini else [f"TASK='{task}'"])
    elif row.kind == "mtdpr":
        files = [setting.mtdpr_file]
        binds = ["BATCHING='union'"] if realmini else []
    elif row.method == "taco":
        files, binds = [setting.taco_file], []
    elif row.method == "naive":  # TACO with uniform weights throughout: naive, observed
        files = [setting.taco_file]
        binds = [f"MULTITASK_OPTIONS={{'tau': {TAU}, 'beta': {setting.ema_beta}, "
                 "'burn_in_fraction': 1.0}"]
    else:
        files, binds = list(setting.method_files[row.method]), []
    return files, binds + [f"MARKER='{row.marker}'"] + list(setting.extra)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def plan_runs(table: str, setting: Setting, seeds: int, out_dir: str,
              tasks: Sequence[str], data_bindings: Sequence[str]) -> List[Run]:
    runs = []
    for row in TABLES[table]:
        for task in (tasks if row.kind == "task_specific" else [None]):
            files, binds = row_config(row, setting, task)
            for seed in range(seeds):
                parts = [out_dir, "runs", _slug(row.label)] + ([task] if task else [])
                runs.append(Run(row, seed, task, os.path.join(*parts, f"seed_{seed}"), files,
                                binds + list(data_bindings)
                                + [f"train.seed={seed}", f"build_biencoder.seed={seed}"]))
    return runs


def finished(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a training run that finished all its steps."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(run_dir, PARAMS_FILE))):
        return False
    summary = read_json(path)
    return isinstance(summary, dict) and summary.get("completed_steps") == summary.get("steps")


def run_one(run: Run, head: str, quiet: bool) -> float:
    """Trains ``run`` unless finished; returns its wall time (measured when it ran, or
    read back from its record)."""
    record = os.path.join(run.run_dir, "reproduce.json")
    if finished(run.run_dir):
        seconds = read_json(record).get("seconds", 0.0) if os.path.isfile(record) else 0.0
        print(f"{head}: finished already in {run.run_dir}, skipping", flush=True)
        return seconds
    os.makedirs(run.run_dir, exist_ok=True)
    log_path = os.path.join(run.run_dir, "train.log")
    print(f"{head}: running (log {log_path})\n  $ {shell_line(run.command())}", flush=True)
    t0 = time.time()
    rc = run_logged(run.command(), log_path, quiet)
    seconds = time.time() - t0
    if rc != 0 or not finished(run.run_dir):
        raise RunFailed(f"{head} failed (exit status {rc}); rerun the same command to "
                           f"resume; see {log_path}")
    with open(record, "w") as f:
        json.dump({"command": run.command(), "seconds": seconds}, f, indent=1)
    print(f"{head}: done in {seconds:.0f} s", flush=True)
    return seconds


def scores(run: Run) -> Dict[str, float]:
    """Page R-precision x100 per task of a finished run (its own task only for a
    task-specific run)."""
    summary = read_json(os.path.join(run.run_dir, SUMMARY_FILE))
    per_task = summary["validation"]["tasks"]
    return {t: 100 * r["page_rprec"] for t, r in per_task.items()
            if run.task is None or t == run.task}


def specialisation(run: Run) -> Optional[Dict[str, float]]:
    """TACO Figure 1's fractions (percent) of a run with a TACO state, else None."""
    from multiret_jax.experiments.plots import load_taco_state
    from multiret_jax.multitask.analysis import specialization_stats
    try:
        state, _ = load_taco_state(run.run_dir)
    except ValueError:  # another multitask method: no sensitivity EMA
        return None
    st = specialization_stats(state, TAU)
    return {"task_specific": 100 * st["frac_task_specific"],
            "not_activated": 100 * st["frac_not_activated"]}


class RunFailed(ValueError):
    """A row's training run exited with an error (its log names the cause)."""


def reproduce(table: str, setting_name: str, seeds: int, out_dir: str,
              data_dir: Optional[str] = None, checkpoint_dir: Optional[str] = None,
              quiet: bool = True, gin_params: Sequence[str] = (),
              minikilt_scale: float = 1.0) -> dict:
    """Trains every (row, seed) of ``table`` in the setting, then writes the table.

    Args:
      table, setting_name: keys of ``TABLES`` and ``SETTINGS``.
      seeds: seeds per row (0 .. seeds-1).
      out_dir: ``runs/`` and ``table.{md,csv,json}`` go here.
      data_dir, checkpoint_dir: the KILT data and HF checkpoint (``kilt``); a mini-KILT
        directory to use instead of generating one (``tiny``).
      quiet: the runs' output to their logs only.
      gin_params: bindings added to every run (e.g. shorter runs).
      minikilt_scale: size of the mini-KILT generated for ``tiny`` (1: the tiny configs').
    Returns:
      The table's JSON content.
    Raises:
      ValueError: an unknown table / setting, a ``kilt`` setting without data or
        checkpoint; ``RunFailed`` when a run fails (rerun the command to resume).
    """
    if table not in TABLES:
        raise ValueError(f"unknown --table {table!r}; known: {sorted(TABLES)}")
    if setting_name not in SETTINGS:
        raise ValueError(f"unknown --setting {setting_name!r}; known: {sorted(SETTINGS)}")
    setting = SETTINGS[setting_name]
    out_dir = os.path.abspath(out_dir)
    binds = list(gin_params)
    if setting_name == "tiny" and data_dir is None:  # one mini-KILT for every run and seed
        data_dir = os.path.join(out_dir, "minikilt")
        minikilt.generate(data_dir, scale=minikilt_scale, seed=0)
    elif setting_name == "kilt" and not (data_dir and checkpoint_dir):
        raise ValueError("--setting=kilt needs --data_dir (the KILT files and knowledge "
                         "source) and --checkpoint_dir (the HF checkpoint)")
    if data_dir:
        binds.append(f"DATA_DIR='{os.path.abspath(data_dir)}'")
    if checkpoint_dir:
        binds.append(f"build_biencoder.checkpoint_dir='{os.path.abspath(checkpoint_dir)}'")
    tasks = [t.name for t in benchmark_tasks(data_dir, "train")] if data_dir else None
    if tasks is None:  # realmini: the embedded benchmark
        from multiret_jax.embedded import embedded_data_dir
        tasks = [t.name for t in benchmark_tasks(embedded_data_dir(), "train")]
    runs = plan_runs(table, setting, seeds, out_dir, tasks, binds)
    print(f"reproduce {table} ({setting_name}, {seeds} seed(s)): {len(runs)} runs in "
          f"{out_dir}/runs", flush=True)
    seconds = [run_one(r, f"[{i}/{len(runs)}] {r.row.label}{' ' + r.task if r.task else ''} "
                          f"seed {r.seed}", quiet) for i, r in enumerate(runs, 1)]
    return write_table(table, setting_name, seeds, out_dir, runs, seconds, tasks)


def write_table(table: str, setting: str, seeds: int, out_dir: str, runs: Sequence[Run],
                seconds: Sequence[float], tasks: Sequence[str]) -> dict:
    rows, fractions, walls = {}, {}, {}
    for row in TABLES[table]:
        mine = [(r, s) for r, s in zip(runs, seconds) if r.row == row]
        per_seed = []
        for seed in range(seeds):
            merged = {}
            for r, _ in mine:
                if r.seed == seed:
                    merged.update(scores(r))
            per_seed.append(merged)
        rows[row.label] = tables.seed_statistics(per_seed, tasks)
        walls[row.label] = sum(s for _, s in mine)
        if row.kind == "taco":
            found = [f for f in (specialisation(r) for r, _ in mine) if f is not None]
            if found:
                fractions[row.label] = tables.seed_statistics(found, ["task_specific",
                                                                      "not_activated"])
    header, body = tables.mean_std_cells(rows, tasks)
    header.append("wall time")
    for line, label in zip(body, rows):
        line.append(f"{walls[label] / 60:.1f} min")
    title = (f"{table}, setting {setting}: dev page-level R-precision x100, mean ± standard "
             f"deviation over {seeds} seed(s)")
    md = f"{title}\n\n" + tables.render(header, body, "markdown")
    if fractions:
        md += ("\nParameters (%) with a task-specific distribution (entropy < 0.3) and not "
               "activated, from each run's TACO sensitivity EMA (tau 2):\n\n")
        fcells = [["", "task-specific", "not activated"]] + [
            [label] + [_pm(st, c) for c in ("task_specific", "not_activated")]
            for label, st in fractions.items()]
        md += tables.render(fcells[0], fcells[1:], "markdown")
    content = {"table": table, "setting": setting, "seeds": seeds,
               "metric": "dev page-level R-precision x100",
               "rows": rows, "specialisation_percent": fractions,
               "wall_seconds": walls,
               "runs": [{"row": r.row.label, "task": r.task, "seed": r.seed,
                         "run_dir": r.run_dir, "seconds": s} for r, s in zip(runs, seconds)]}
    prefix = os.path.join(out_dir, "table")
    with open(prefix + ".md", "w") as f:
        f.write(md)
    with open(prefix + ".csv", "w") as f:
        f.write(tables.render(["row", "statistic"] + header[1:-1],
                              [[label, stat] + ["" if st[stat].get(c) is None
                                                else f"{st[stat][c]:.4f}"
                                                for c in tables.ordered_tasks(tasks) + ["Avg"]]
                               for label, st in rows.items() for stat in ("mean", "std")],
                              "csv"))
    with open(prefix + ".json", "w") as f:
        json.dump(content, f, indent=1)
    print("\n" + md + f"\n(written to {prefix}.{{md,csv,json}})", flush=True)
    return content


def _pm(st, c):
    m, sd = st["mean"][c], st["std"][c]
    return f"{m:.1f}" + ("" if sd is None else f" ± {sd:.1f}")


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("table", None, sorted(TABLES), "The paper table to reproduce.")
    flags.DEFINE_enum("setting", "tiny", sorted(SETTINGS), "Where its runs train.")
    flags.DEFINE_integer("seeds", 3, "Seeds per row (0, 1, ...).", lower_bound=1)
    flags.DEFINE_string("out_dir", None, "Output directory (runs/ and table.*).")
    flags.DEFINE_string("data_dir", None, "KILT files (--setting=kilt; tiny: a mini-KILT).")
    flags.DEFINE_string("checkpoint_dir", None, "HF checkpoint directory (--setting=kilt).")
    flags.DEFINE_boolean("quiet", True, "Runs' output to their train.log only.")
    flags.DEFINE_float("minikilt_scale", 1.0, "Size of the mini-KILT generated for "
                       "--setting=tiny.", lower_bound=0.01)
    flags.DEFINE_multi_string("gin_param", [], "A binding added to every run (e.g. "
                              "TRAIN_STEPS=100 for shorter runs).")
    flags.mark_flags_as_required(["table", "out_dir"])


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    reproduce(FLAGS.table, FLAGS.setting, FLAGS.seeds, FLAGS.out_dir, FLAGS.data_dir,
              FLAGS.checkpoint_dir, FLAGS.quiet, FLAGS.gin_param, FLAGS.minikilt_scale)


TOOL = "reproduce"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
