"""The training plan: what a run will do, computed before it does it.

Both papers state their recipes in epochs and per-task sizes, not in steps:

* TACO (Zhang et al. 2023, Section 4.1, Appendix B, Table 5): T-REx and zsRE randomly
  downsampled (Table 5: 95k and 100k examples), per-task batches with temperature c=4
  (16, 14, 15, 16, 16, 15, 17, 11 of 120), an epoch is the largest ``N_k / B_k`` over
  tasks (smaller tasks shuffle and cycle), a 20-epoch naive warm-up on BM25 negatives, then
  8 ANCE episodes of 3 epochs each, the adaptive update only in the last one with its 10%
  burn-in inside it, a linear schedule with warm-up ratio 0.1 (per episode: the public
  code's ``ance_mt.sh`` starts each 3-epoch episode as a new run).
* MT-DPR (Maillard et al. 2021): batches of 128 from the union of the datasets, one NCE
  over the batch, linear warm-up and decay.

``make_plan`` turns ``train()``'s settings and the tasks' sizes into those numbers: per task
the examples before and after the caps, the sub-batch, the query lengths with and without
the marker; the steps per epoch; the phases (warm-up, each episode: steps, epochs,
negatives, multitask method, LR warm-up); the schedule; the burn-in. ``train --dry_run``
prints it and writes ``<model_dir>/plan.json``; a real run writes the same file and trains
exactly that plan (``phase_schedule``, ``phase_multitask``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import gin
import optax

from multiret_jax.data import minikilt
from multiret_jax.data.mixing import task_batch_sizes
from multiret_jax.data.tasks import QueryFormat, benchmark_tasks, get_task, task_path
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.multitask import build_method, from_step
from multiret_jax.training.run_config import has_training_state
from multiret_jax.training.schedules import make_schedule

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
DRY_RUN_FILE = "plan.dry_run.json"  # a dry run in a started run's directory
BATCHING = ("per_task", "union")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training with one kind of negatives and one multitask method."""
    name: str               # "warm-up" ("train" without ANCE), "ance 1", ...
    negatives: str          # "bm25" or "ance" (mined with the model at the phase start)
    start: int              # first global step
    steps: int
    epochs: Optional[float]  # the length in epochs when the settings gave it so
    multitask: str          # the method applied in this phase
    lr_warmup_steps: int    # with a per-phase schedule: its own warm-up


def capped_sizes(sizes: Mapping[str, int], caps: Optional[Mapping[str, int]]) -> Dict[str, int]:
    """``min(N_k, cap_k)`` per task (``caps`` keyed by task name; others unchanged; a cap
    of a task this run does not train, e.g. a leave-one-out run's held-out task, is
    unused, but its name must be a registered task)."""
    caps = caps or {}
    for name in caps:
        get_task(name)  # an unknown name fails, listing the known ones
    bad = {t: c for t, c in caps.items() if isinstance(c, bool) or not isinstance(c, int) or c < 1}
    if bad:
        raise ValueError(f"train.task_caps must map task names to integers >= 1, got {bad}")
    return {t: min(int(n), int(caps[t])) if t in caps else int(n) for t, n in sizes.items()}


def batch_plan(used: Mapping[str, int], global_batch: int, mixing_c: float, batching: str):
    """(per-task batch sizes, steps per epoch). Per task: ``task_batch_sizes`` and the
    largest ``ceil(N_k / B_k)``; union: each task's expected share of a batch (its share
    of the union) and ``ceil(N / B)``."""
    if batching not in BATCHING:
        raise ValueError(f"train.batching must be one of {BATCHING}, got {batching!r}")
    if batching == "union":
        total = sum(used.values())
        return ({t: round(global_batch * n / total, 2) for t, n in used.items()},
                -(-total // global_batch))
    sizes = task_batch_sizes(dict(used), global_batch, mixing_c)
    return sizes, max(-(-used[t] // sizes[t]) for t in used)


def _steps(epochs: Optional[float], steps: int, per_epoch: int) -> int:
    return steps if epochs is None else max(1, int(round(epochs * per_epoch)))


def make_plan(s: Any, sizes: Mapping[str, int], marker_tokens: Mapping[str, int],
              tasks: Mapping[str, Any], method: str, method_options: Optional[dict],
              sizes_from: str, marker_tokens_from: str) -> Dict[str, Any]:
    """The plan (a JSON-ready dict) of a run with settings ``s`` (``train()``'s arguments).

    Args:
      s: the settings (``global_batch``, ``mixing_c``, ``batching``, ``task_caps``,
        ``steps`` / ``epochs``, ``ance_episodes``, ``ance_episode_steps`` /
        ``ance_episode_epochs``, ``multitask_last_phases``, ``lr_schedule``,
        ``learning_rate``, ``warmup_fraction``, ``lr_per_phase``, ``num_negatives``,
        ``marker`` ..., ``query_len``).
      sizes: training examples per task before the caps (task order kept).
      marker_tokens: tokens the marker adds to each task's queries.
      tasks: ``{name: Task}`` (query lengths).
      method, method_options: the multitask method (``multitask.method``) and options.
      sizes_from, marker_tokens_from: where the sizes / marker counts come from (shown).
    Returns:
      The plan; ``plan["phases"]`` and ``plan["total_steps"]`` drive the run.
    """
    if s.batching == "union" and method != "naive":
        raise ValueError(f"train.batching='union' trains one loss over the mixed batch, so "
                         f"there are no per-task gradients for multitask.method={method!r}: "
                         "use multitask.method='naive' or train.batching='per_task'")
    used = capped_sizes(sizes, s.task_caps)
    batch_sizes, per_epoch = batch_plan(used, s.global_batch, s.mixing_c, s.batching)
    fmt = query_format_of(s)
    task_rows = {}
    for name, n in sizes.items():
        task = tasks[name]
        with_marker = fmt.length(task, marker_tokens.get(name, 0), s.query_len)
        without = min(task.max_query_len, s.query_len) if s.query_len else task.max_query_len
        if fmt.marker_in_len and fmt.marker != "none":  # the marker eats into the length
            without = max(0, with_marker - marker_tokens.get(name, 0))
        task_rows[name] = {"examples": int(n), "examples_used": used[name],
                           "batch_size": batch_sizes[name], "query_len": without,
                           "query_len_with_marker": with_marker,
                           "marker": fmt.marker_text(task),
                           "marker_tokens": marker_tokens.get(name, 0)}

    warm = _steps(s.epochs, s.steps, per_epoch)
    episode = _steps(s.ance_episode_epochs, s.ance_episode_steps, per_epoch) \
        if s.ance_episodes else 0
    first = "warm-up" if s.ance_episodes else "train"
    lengths = [(first, "bm25", warm, s.epochs)] + [
        (f"ance {e}", "ance", episode, s.ance_episode_epochs)
        for e in range(1, s.ance_episodes + 1)]
    # the method in the last ``multitask_last_phases`` phases (all of them when there are
    # fewer, or when None), naive before
    last = s.multitask_last_phases or len(lengths)
    first_method_phase = max(0, len(lengths) - last)
    phases, start = [], 0
    for i, (name, negatives, steps, epochs) in enumerate(lengths):
        phases.append(Phase(name, negatives, start, steps, epochs,
                            method if i >= first_method_phase else "naive",
                            int(s.warmup_fraction * steps) if s.lr_per_phase else 0))
        start += steps
    total = start
    method_start = phases[first_method_phase].start
    active = total - method_start
    opts = dict(method_options or {})
    burn_in = opts.get("burn_in_steps", 0)
    if "burn_in_fraction" in opts:
        burn_in = int(round(float(opts["burn_in_fraction"]) * active))
    return {
        "tasks": task_rows,
        "task_sizes_from": sizes_from,
        "marker_tokens_from": marker_tokens_from,
        "batching": s.batching,
        "global_batch": s.global_batch,
        "mixing_c": s.mixing_c if s.batching == "per_task" else None,
        "steps_per_epoch": per_epoch,
        "epoch": ("the largest ceil(N_k / B_k) over tasks, smaller tasks shuffle and cycle"
                  if s.batching == "per_task" else "ceil(N / B) over the union"),
        "phases": [dataclasses.asdict(p) for p in phases],
        "total_steps": total,
        "lr_schedule": {"name": s.lr_schedule, "per_phase": bool(s.lr_per_phase),
                        "peak": s.learning_rate, "end": 0.0,
                        "warmup_fraction": s.warmup_fraction,
                        "warmup_steps": (phases[0].lr_warmup_steps if s.lr_per_phase
                                         else int(s.warmup_fraction * total))},
        "multitask": {"method": method, "from_step": method_start, "active_steps": active,
                      "options": opts},
        "burn_in_steps": burn_in if method == "taco" or "burn_in_steps" in opts else 0,
        "num_negatives": s.num_negatives,
        "grad_cache_chunk": getattr(s, "grad_cache_chunk", None),
        "ance_tasks": list(s.ance_tasks) if s.ance_tasks else "all",
        "query_format": {"marker": fmt.marker, "marker_format": fmt.marker_format,
                         "marker_in_query_len": fmt.marker_in_len},
    }


def query_format_of(s: Any) -> QueryFormat:
    """The run's ``QueryFormat`` (``train.marker``, ``marker_format``,
    ``marker_in_query_len``)."""
    return QueryFormat(s.marker, s.marker_format, s.marker_in_query_len)


def run_plan(s: Any, sizes: Mapping[str, int], data: Mapping[str, Any],
             tokenizer: Tokenization, main_process: bool) -> Dict[str, Any]:
    """The plan of a run from its data (``TaskData`` per task, example counts before the
    caps) and its tokenizer: logged and written to ``<model_dir>/plan.json``."""
    if s.task_sizes:
        log.info("train.task_sizes is for --dry_run; this run counts its data: %s", sizes)
    fmt = query_format_of(s)
    marker_tokens = {n: tokenizer.marker_tokens(d.task, fmt) for n, d in data.items()}
    method, options = multitask_setting()
    plan = make_plan(s, sizes, marker_tokens, {n: d.task for n, d in data.items()}, method,
                     options, "the training data (after the provenance filter)",
                     "the run's tokenizer")
    log.info("training plan:\n%s", format_plan(plan))
    if main_process:
        write_plan(os.path.join(s.model_dir, PLAN_FILE), plan)
    return plan


def multitask_setting() -> Tuple[str, dict]:
    """(method, options) as gin binds ``multitask.method`` / ``multitask.options``."""
    bound = gin.get_bindings(build_method)
    return bound.get("method", "naive"), dict(bound.get("options") or {})


def _count_records(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _dry_run_tokenizer(s: Any) -> Optional[Tokenization]:
    """The tokenizer the run would use, when one is on disk already."""
    dirs = [s.tokenizer_dir]
    if s.init_from:
        dirs.append(os.path.join(s.init_from if os.path.isdir(s.init_from)
                                 else os.path.dirname(s.init_from), "tokenizer"))
    dirs += [gin.get_bindings("build_biencoder").get("checkpoint_dir"),
             os.path.join(s.model_dir, "tokenizer")]
    for d in dirs:
        if d and any(os.path.exists(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.txt")):
            return Tokenization.from_dir(d)
    return None


def dry_run(s: Any, main_process: bool = True) -> Dict[str, Any]:
    """``train --dry_run``: the plan from ``train.task_sizes`` or from the data directory's
    train files (records before the provenance filter; the mini-KILT is generated as a run
    would), printed and written to ``<model_dir>/plan.json`` (``plan.dry_run.json`` in
    the directory of a started run, whose ``plan.json`` it keeps). Trains nothing."""
    excluded = {get_task(n).name for n in s.exclude_tasks}
    if s.task_sizes:
        names = [get_task(n).name for n in (s.tasks or list(s.task_sizes))]
        missing = [n for n in names if n not in s.task_sizes]
        if missing:
            raise ValueError(f"train.task_sizes has no size for task(s) {missing}")
        sizes = {n: int(s.task_sizes[n]) for n in names if n not in excluded}
        sizes_from = "train.task_sizes"
    else:
        data_dir = s.data_dir
        if data_dir is None:
            data_dir = os.path.join(s.model_dir, "minikilt")
            if main_process:
                minikilt.generate(data_dir, scale=s.minikilt_scale, seed=s.seed)
        sizes = {t.name: _count_records(task_path(data_dir, t, "train"))
                 for t in benchmark_tasks(data_dir, "train", s.tasks) if t.name not in excluded}
        sizes_from = f"records of the train files in {data_dir} (before the provenance filter)"
    if not sizes:
        raise ValueError(f"no tasks left to train on (tasks={s.tasks}, "
                         f"exclude_tasks={s.exclude_tasks})")
    if s.max_examples:
        sizes = {n: min(v, s.max_examples) for n, v in sizes.items()}
    tasks = {n: get_task(n) for n in sizes}
    fmt = query_format_of(s)
    tokenizer = _dry_run_tokenizer(s)
    if tokenizer is not None:
        marker_tokens = {n: tokenizer.marker_tokens(t, fmt) for n, t in tasks.items()}
        tokens_from = "the run's tokenizer"
    else:
        marker_tokens = {n: len(fmt.marker_text(t).split()) for n, t in tasks.items()}
        tokens_from = ("words (no tokenizer on disk yet; a subword tokenizer may count "
                       "more)")
    method, options = multitask_setting()
    plan = make_plan(s, sizes, marker_tokens, tasks, method, options, sizes_from, tokens_from)
    path = os.path.join(s.model_dir, PLAN_FILE)
    if has_training_state(s.model_dir):  # a started run's plan.json records what it trains
        path = os.path.join(s.model_dir, DRY_RUN_FILE)
    if main_process:
        os.makedirs(s.model_dir, exist_ok=True)
        write_plan(path, plan)
        print(format_plan(plan) + f"\n\nplan written to {path} (dry run: nothing trained)")
    return plan


def phase_schedule(plan: Dict[str, Any]) -> optax.Schedule:
    """The run's learning rate by global step: one schedule over all steps, or (per phase)
    each phase's own warm-up and decay, joined at the phase starts."""
    lr = plan["lr_schedule"]
    if not lr["per_phase"]:
        return make_schedule(lr["name"], lr["peak"], lr["warmup_fraction"], plan["total_steps"])
    phases = [p for p in plan["phases"] if p["steps"] > 0]
    parts = [make_schedule(lr["name"], lr["peak"], lr["warmup_fraction"], p["steps"])
             for p in phases]
    return parts[0] if len(parts) == 1 else optax.join_schedules(
        parts, [p["start"] for p in phases[1:]])


def phase_multitask(plan: Dict[str, Any], num_tasks: int) -> optax.GradientTransformationExtraArgs:
    """The run's multitask transform: ``multitask.build_method`` (gin) with the burn-in
    counted over the steps it is active, used from its first phase on (``from_step``;
    naive before)."""
    mt = plan["multitask"]
    method = build_method(num_tasks=num_tasks, total_steps=max(1, mt["active_steps"]))
    return method if mt["from_step"] == 0 else from_step(method, mt["from_step"])


def write_plan(path: str, plan: Dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(plan, f, indent=2)
        f.write("\n")


def format_plan(plan: Dict[str, Any]) -> str:
    """The plan as a few readable lines (what ``--dry_run`` prints before the JSON path)."""
    lines = [f"batching: {plan['batching']}, global batch {plan['global_batch']}"
             + (f", mixing c={plan['mixing_c']:g}" if plan["mixing_c"] else "")
             + f"; {plan['steps_per_epoch']} steps per epoch: {plan['epoch']}",
             f"{'task':<22}{'examples':>10}{'used':>10}{'batch':>7}{'qlen':>6}{'+marker':>8}"]
    for name, t in plan["tasks"].items():
        lines.append(f"{name:<22}{t['examples']:>10}{t['examples_used']:>10}"
                     f"{t['batch_size']:>7}{t['query_len']:>6}{t['query_len_with_marker']:>8}")
    for p in plan["phases"]:
        ep = "" if p["epochs"] is None else f" ({p['epochs']:g} epochs)"
        lines.append(f"{p['name']:<10} steps {p['start']}-{p['start'] + p['steps'] - 1}{ep}, "
                     f"{p['negatives']} negatives, multitask {p['multitask']}")
    lr = plan["lr_schedule"]
    lines.append(f"learning rate: {lr['name']}, peak {lr['peak']:g}, warm-up "
                 f"{lr['warmup_fraction']:g} ({'each phase' if lr['per_phase'] else 'the run'})"
                 f"; burn-in {plan['burn_in_steps']} steps; "
                 f"{plan['num_negatives']} hard negatives per query; "
                 f"{plan['total_steps']} steps in all")
    chunk = plan.get("grad_cache_chunk")
    lines.append("gradients: " + (f"gradient cache, encoders run {chunk} rows at a time"
                                  if chunk else "plain backprop (no gradient cache)"))
    return "\n".join(lines)


def _is_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_plan_settings(s: Any) -> List[str]:
    """Problems with the plan's own settings (``training/settings.py`` reports them)."""
    bad = []
    for name in ("epochs", "ance_episode_epochs"):
        v = getattr(s, name)
        if v is not None and not (_is_finite(v) and v > 0):
            bad.append(f"train.{name} must be None or a finite number > 0, got {v!r}")
    v = s.multitask_last_phases
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        bad.append(f"train.multitask_last_phases must be None or an integer >= 1, got {v!r}")
    if s.batching not in BATCHING:
        bad.append(f"train.batching must be one of {BATCHING}, got {s.batching!r}")
    for name in ("task_caps", "task_sizes", "ance_tasks"):
        for task in getattr(s, name) or ():
            try:
                get_task(task)
            except KeyError as e:
                bad.append(f"train.{name}: {e.args[0]}")
    for name in ("task_caps", "task_sizes"):
        v = getattr(s, name)
        if v is not None and not (isinstance(v, dict) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v.values())):
            bad.append(f"train.{name} must be None or a dict of task name -> integer >= 1, "
                       f"got {v!r}")
    return bad
