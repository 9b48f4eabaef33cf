r"""TACO analysis plots from a run's checkpoint: task entropy (Figure 1), sensitivities (Figure 2).

    python -m multiret_jax.experiments.plots --model_dir=runs/taco_tiny \
        --out_dir=runs/taco_tiny/analysis
    python -m multiret_jax.experiments.plots --model_dir=runs/taco --gin_file=taco.gin --step=best

Restores the multitask state (TACO's per-task EMA of normalised sensitivities, K x
params) of checkpoint ``--step`` ("latest", the default and, for a finished run, its
final state; "best" by validation average page R-precision; or a step number) from
``<model_dir>/checkpoints`` without rebuilding the model (``Checkpointer.saved_structure``),
and writes to ``--out_dir`` (default ``<model_dir>/analysis``):

* ``task_entropy.png`` / ``.json``: histogram of the per-parameter entropy of
  ``softmax_k(S_k / tau)`` on ``[0, log K]`` (Figure 1), JSON ``{"edges", "counts"}``;
* ``sensitivity.png`` / ``.json``: per task, the density of the EMA values over the
  parameters on log-spaced bins (Figure 2; log x axis, density per decade), JSON
  ``{"tasks", "edges", "counts" [K][bins], "zeros" [K]}`` (zeros: values <= 0, off the
  log axis);
* ``stats.json``: ``analysis.specialization_stats`` plus step, tau and task names;

and prints the summary (mean entropy, fraction of parameters with entropy below
``--specific_entropy``, per task mean / median EMA and dominant fraction).

``tau`` (and ``normalize_after_ema``, whose EMA holds raw sensitivities, normalised here
by the per-task median as the weights are) are not in the checkpoint: they come from
``--tau`` / ``--normalize``, else from the run's gin files given with ``--gin_file`` /
``--gin_param`` (``multitask.options``), else the paper's tau = 2. Task names come from
``<model_dir>/summary.json`` (the K axis is the training task order), else ``--tasks``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from absl import flags
from multiret_jax import cli

from multiret_jax.multitask import analysis
from multiret_jax.multitask.taco import TacoState

DEFAULT_TAU = 2.0
_TACO_FIELDS = {"step", "ema", "skipped"}


def _find_taco(tree: Any) -> Optional[dict]:
    """The first dict with TacoState's fields (NamedTuples are restored as dicts)."""
    if isinstance(tree, TacoState):
        return tree._asdict()
    if isinstance(tree, dict):
        if _TACO_FIELDS <= set(tree):
            return tree
        children = tree.values()
    elif isinstance(tree, (list, tuple)):
        children = tree
    else:
        return None
    for child in children:
        found = _find_taco(child)
        if found is not None:
            return found
    return None


def load_taco_state(model_dir: str, step: Union[str, int] = "latest") -> Tuple[TacoState, int]:
    """The TACO state in a training run's checkpoint.

    Args:
      model_dir: the run's ``model_dir`` (with ``checkpoints/``), or the checkpoints dir.
      step: "latest", "best" (by validation ``avg_page_rprec``) or a step number.
    Returns:
      (TacoState with numpy leaves, the checkpoint step).
    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: the checkpoint has no TACO state (another multitask method).
    """
    from multiret_jax.training.checkpointing import Checkpointer

    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        ckpt_dir = model_dir
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{model_dir}: no such run directory")
    ckpt = Checkpointer(os.path.abspath(ckpt_dir), best_metric="avg_page_rprec")
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
        if step == "latest":
            chosen = steps[-1]
        elif step == "best":
            chosen = ckpt.best_step()
            if chosen is None:
                raise ValueError(f"{ckpt_dir}: no checkpoint with a validation metric "
                                 "(use --step=latest)")
        else:
            chosen = int(step)
            if chosen not in steps:
                raise FileNotFoundError(f"{ckpt_dir}: no checkpoint at step {chosen}; "
                                        f"steps: {steps}")
        structure = ckpt.saved_structure(chosen)
        found = _find_taco(structure.get("opt_state") if isinstance(structure, dict) else None)
        if found is None or found["ema"] is None:
            raise ValueError(f"checkpoint step {chosen} in {ckpt_dir} holds no TACO state "
                             "(no sensitivity EMA in its optimizer state): the run did not "
                             "use multitask.method = 'taco'")
        state, _ = ckpt.restore(chosen, target=structure)
    finally:
        ckpt.close()
    found = _find_taco(state["opt_state"])
    to_np = lambda t: None if t is None else jax.tree_util.tree_map(np.asarray, t)
    return TacoState(np.asarray(found["step"]), to_np(found["ema"]),
                     np.asarray(found["skipped"]), to_np(found.get("sample_idx"))), chosen


def task_names_of(model_dir: str, k: int, given: Optional[Sequence[str]] = None) -> List[str]:
    """``given``, else ``summary.json``'s training tasks (length K), else task0..task{K-1}."""
    if given:
        if len(given) != k:
            raise ValueError(f"{len(given)} task names given for a state of {k} tasks")
        return list(given)
    path = os.path.join(model_dir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            tasks = json.load(f).get("tasks") or []
        if len(tasks) == k:
            return list(tasks)
    return [f"task{i}" for i in range(k)]


def _figure(size=(6, 4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_entropy_histogram(counts: np.ndarray, edges: np.ndarray, path: str, tau: float,
                           stats: Optional[Dict[str, Any]] = None, title: Optional[str] = None,
                           specific_entropy: float = analysis.SPECIFIC_ENTROPY) -> str:
    """Figure 1: fraction of parameters per task-entropy bin (PNG, 600 x 400 pixels).

    Args:
      counts, edges: ``analysis.entropy_histogram``'s output.
      path: the PNG to write.
      tau: the temperature (axis label).
      stats: ``analysis.specialization_stats`` (default title: its fractions).
      title: plot title.
      specific_entropy: where the "task-specific" threshold line is drawn.
    Returns:
      ``path``.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    total = max(int(np.sum(counts)), 1)
    ax.bar(edges[:-1], np.asarray(counts) / total, width=np.diff(edges), align="edge")
    ax.axvline(specific_entropy, color="r", linestyle="--",
               label=f"task-specific (H < {specific_entropy:g})")
    ax.set_xlabel(f"entropy of the task distribution (nats, tau={tau:g})")
    ax.set_ylabel("fraction of parameters")
    if title is None and stats is not None:
        title = (f"task-specific {stats['frac_task_specific']:.1%}, "
                 f"not activated {stats['frac_not_activated']:.1%}")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_entropy_histogram(state_or_ema: Any, path: str, tau: float, bins: int = 50,
                            normalize: bool = False, title: Optional[str] = None) -> str:
    """Figure 1 of a sensitivity EMA (``plot_entropy_histogram`` of
    ``analysis.entropy_histogram``, titled with ``analysis.specialization_stats``).

    Args:
      state_or_ema: a ``TacoState`` or its EMA tree.
      path: output PNG path.
      tau: softmax temperature of the task distribution.
      bins: histogram bins on ``[0, log K]``.
      normalize: normalise each task's EMA by its median first.
      title: plot title (default: the Figure-1 fractions).
    Returns:
      ``path``.
    """
    counts, edges = analysis.entropy_histogram(state_or_ema, tau, bins, normalize)
    stats = analysis.specialization_stats(state_or_ema, tau, normalize)
    return plot_entropy_histogram(counts, edges, path, tau, stats, title)


def plot_sensitivity_density(counts: np.ndarray, zeros: np.ndarray, edges: np.ndarray,
                             path: str, task_names: Sequence[str]) -> str:
    """Figure 2: per task, the density of its EMA values over parameters (log x axis;
    density per decade: fraction of the task's parameters per bin / log10 bin width).

    Returns:
      ``path`` (PNG, 700 x 400 pixels).
    """
    fig = _figure((7, 4))
    ax = fig.add_subplot(1, 1, 1)
    widths = np.diff(np.log10(edges))
    widths = np.where(widths > 0, widths, 1.0)
    for name, c, z in zip(task_names, np.asarray(counts), np.asarray(zeros)):
        n = max(int(c.sum() + z), 1)
        dens = c / n / widths
        ax.stairs(dens, edges, label=name + (f" ({z / n:.0%} zero)" if z else ""))
    ax.set_xscale("log")
    ax.set_xlabel("sensitivity EMA (normalised by the per-task median)")
    ax.set_ylabel("density per decade")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_analysis(state: Any, out_dir: str, tau: float, task_names: Sequence[str],
                   normalize: bool = False, bins: int = 50, sensitivity_bins: int = 60,
                   specific_entropy: float = analysis.SPECIFIC_ENTROPY) -> Dict[str, Any]:
    """Writes both figures with their histogram JSONs and ``stats.json``; returns the stats.

    Args:
      state: a ``TacoState`` or its EMA tree (leaves ``[K, ...]``).
      out_dir: output directory (created).
      tau: softmax temperature of the task distribution.
      task_names: K names (legend, stats).
      normalize: the EMA holds raw sensitivities (``normalize_after_ema``): divide each
        task's by its median first.
      bins, sensitivity_bins: bins of Figure 1 / Figure 2.
      specific_entropy: entropy (nats) below which a parameter counts as task-specific.
    Returns:
      ``analysis.specialization_stats`` plus ``tau``, ``tasks``, ``normalize`` and the
      written ``files``.
    """
    os.makedirs(out_dir, exist_ok=True)
    stats = analysis.specialization_stats(state, tau, normalize, specific_entropy)
    if len(task_names) != stats["num_tasks"]:
        raise ValueError(f"{len(task_names)} task names for a state of {stats['num_tasks']} tasks")
    counts, edges = analysis.entropy_histogram(state, tau, bins, normalize)
    s_counts, zeros, s_edges = analysis.sensitivity_histogram(state, sensitivity_bins, normalize)
    p = lambda name: os.path.join(out_dir, name)
    files = [plot_entropy_histogram(counts, edges, p("task_entropy.png"), tau, stats,
                                    specific_entropy=specific_entropy),
             plot_sensitivity_density(s_counts, zeros, s_edges, p("sensitivity.png"), task_names)]
    dumps = {"task_entropy.json": {"tau": tau, "edges": edges.tolist(), "counts": counts.tolist()},
             "sensitivity.json": {"tasks": list(task_names), "edges": s_edges.tolist(),
                                  "counts": s_counts.tolist(), "zeros": zeros.tolist()}}
    out = {**stats, "tau": tau, "normalize": normalize, "tasks": list(task_names),
           "specific_entropy": specific_entropy}
    dumps["stats.json"] = out
    for name, obj in dumps.items():
        with open(p(name), "w") as f:
            json.dump(obj, f, indent=1)
        files.append(p(name))
    out["files"] = files
    return out


def format_summary(stats: Dict[str, Any]) -> str:
    """The printed summary of ``write_analysis``'s stats."""
    lines = [f"{stats['num_params']} parameters, {stats['num_tasks']} tasks, tau={stats['tau']:g}",
             f"mean task entropy {stats['mean_entropy']:.4f} nats (max log K = "
             f"{stats['max_entropy']:.4f})",
             f"entropy < {stats['specific_entropy']:g} (task-specific): "
             f"{stats['frac_task_specific']:.2%} of parameters; not activated: "
             f"{stats['frac_not_activated']:.2%}",
             f"{'task':<22}{'mean EMA':>12}{'median EMA':>12}{'dominant':>10}{'specific':>10}"]
    for i, name in enumerate(stats["tasks"]):
        lines.append(f"{name:<22}{stats['task_mean'][i]:>12.4g}{stats['task_median'][i]:>12.4g}"
                     f"{stats['task_dominant_frac'][i]:>10.2%}{stats['task_specific_frac'][i]:>10.2%}")
    return "\n".join(lines)


def taco_options_from_gin(files: Sequence[str], bindings: Sequence[str]) -> Dict[str, Any]:
    """``multitask.options`` of a run's gin configuration (macros resolved); ``{}`` when
    no files/bindings are given or the method is not TACO."""
    if not files and not bindings:
        return {}
    import importlib

    import gin

    from multiret_jax.gin_utils import parse_gin

    importlib.import_module("multiret_jax.train")  # registers the configurables the files bind

    parse_gin(files, bindings)
    bound = gin.get_bindings("multitask")  # macros resolved
    if bound.get("method") != "taco":
        return {}
    return dict(bound.get("options") or {})


FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.setup_logging()  # orbax logs every restore detail at INFO: WARNING unless --verbosity
    cli.absolute_flags(FLAGS, "model_dir", "out_dir")
    state, step = load_taco_state(FLAGS.model_dir, FLAGS.step)
    opts = taco_options_from_gin(FLAGS.gin_file, FLAGS.gin_param)
    tau = FLAGS.tau if FLAGS.tau is not None else float(opts.get("tau", DEFAULT_TAU))
    normalize = (FLAGS.normalize if FLAGS.normalize is not None
                 else bool(opts.get("normalize_after_ema", False)))
    k = jax.tree_util.tree_leaves(state.ema)[0].shape[0]
    names = task_names_of(FLAGS.model_dir, k, FLAGS.tasks)
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.model_dir, "analysis")
    stats = write_analysis(state, out_dir, tau, names, normalize, FLAGS.bins,
                           FLAGS.sensitivity_bins, FLAGS.specific_entropy)
    print(f"checkpoint step {step} of {FLAGS.model_dir} (TACO state step {int(state.step)})")
    print(format_summary(stats))
    print("wrote " + ", ".join(stats["files"]))


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    from multiret_jax.gin_utils import define_gin_flags

    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "The TACO run's model_dir.", required=True)
    flags.DEFINE_string("out_dir", None, "Output directory (default <model_dir>/analysis).")
    flags.DEFINE_string("step", "latest", "Checkpoint: latest, best or a step number.")
    flags.DEFINE_float("tau", None, f"Softmax temperature (default: gin, else {DEFAULT_TAU}).",
                       lower_bound=1e-6)
    flags.DEFINE_bool("normalize", None, "Divide the EMA by its per-task median (runs with "
                      "normalize_after_ema; default: from gin, else False).")
    flags.DEFINE_list("tasks", None, "Task names of the K axis (default: summary.json).")
    flags.DEFINE_integer("bins", 50, "Entropy histogram bins.", lower_bound=1)
    flags.DEFINE_integer("sensitivity_bins", 60, "Sensitivity histogram bins (log-spaced).",
                         lower_bound=1)
    flags.DEFINE_float("specific_entropy", analysis.SPECIFIC_ENTROPY,
                       "Entropy (nats) below which a parameter is task-specific.",
                       lower_bound=0.0)
    flags.register_validator("step", lambda v: v in ("latest", "best") or v.isdigit(),
                             message="must be latest, best or a step number")


TOOL = "plots"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
