"""Task specialisation of parameters from TACO's sensitivity EMA (TACO paper, Figure 1).

Each parameter element has a distribution over tasks, ``p_k = softmax_k(S_k / tau)`` of
the EMA S (as TACO's weights), and its entropy ``H = -sum_k p_k log p_k`` (nats,
0 <= H <= log K). A parameter is "task-specific" when H < 0.3 and "not activated" when
every task's EMA is below 1e-8 (its distribution is then ~uniform, H ~ log K, so it is
never task-specific). Fractions are over all parameter elements of the model.

Everything takes a ``TacoState`` or its ``ema`` tree (leaves ``[K, ...]``). With a state
trained with ``normalize_after_ema=True`` the EMA holds raw sensitivities: pass
``normalize=True`` to divide each task's EMA by its median first, as the weights do.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from multiret_jax.multitask.taco import TacoState, median_select

SPECIFIC_ENTROPY = 0.3
INACTIVE_SENSITIVITY = 1e-8


def _ema_leaves(state_or_ema: Any, normalize: bool = False, eps: float = 1e-12):
    ema = state_or_ema.ema if isinstance(state_or_ema, TacoState) else state_or_ema
    leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree_util.tree_leaves(ema)]
    if not leaves:
        raise ValueError("empty sensitivity EMA")
    if normalize:
        med = median_select(leaves) + eps
        leaves = [x / med.reshape((-1,) + (1,) * (x.ndim - 1)) for x in leaves]
    return leaves


def task_distribution(state_or_ema: Any, tau: float, normalize: bool = False) -> Any:
    """Per-parameter distribution over tasks, ``softmax_k(S_k / tau)``.

    Args:
      state_or_ema: a ``TacoState`` or its EMA tree (leaves ``[K, ...]``).
      tau: softmax temperature.
      normalize: divide each task's EMA by its median first (raw-sensitivity EMAs).
    Returns:
      A list (one per EMA leaf, in ``tree_leaves`` order) of ``[K, ...]`` float32 arrays.
    """
    return [jax.nn.softmax(x / tau, axis=0) for x in _ema_leaves(state_or_ema, normalize)]


def entropy(dist: jax.Array, axis: int = 0) -> jax.Array:
    """Entropy in nats of distributions along ``axis`` (0 log 0 = 0)."""
    dist = jnp.asarray(dist, jnp.float32)
    return -jnp.sum(jnp.where(dist > 0, dist * jnp.log(jnp.where(dist > 0, dist, 1.0)), 0.0),
                    axis=axis)


def specialization_stats(state_or_ema: Any, tau: float, normalize: bool = False,
                         specific_entropy: float = SPECIFIC_ENTROPY,
                         inactive: float = INACTIVE_SENSITIVITY) -> Dict[str, Any]:
    """Figure-1 statistics of a sensitivity EMA.

    Args:
      state_or_ema: a ``TacoState`` or its EMA tree.
      tau: softmax temperature of the task distribution.
      normalize: normalise each task's EMA by its median first.
      specific_entropy: entropy (nats) below which a parameter is task-specific.
      inactive: a parameter is not activated when every task's EMA is below this (the
        raw EMA, before ``normalize``).
    Returns:
      dict with ``num_params``, ``num_tasks``, ``frac_task_specific``,
      ``frac_not_activated``, ``mean_entropy``, ``max_entropy`` (log K) and per-task
      lists (length K): ``task_mean``, ``task_median``, ``task_max`` of the EMA,
      ``task_dominant_frac`` (fraction of all parameters, activated ones only, whose
      largest weight is that task's) and ``task_specific_frac`` (task-specific
      parameters dominated by that task).
    """
    raw = _ema_leaves(state_or_ema)
    leaves = _ema_leaves(state_or_ema, normalize) if normalize else raw
    k = raw[0].shape[0]
    n = sum(int(np.prod(x.shape[1:])) for x in raw)
    specific = inactive_n = ent_sum = 0.0
    dominant = np.zeros(k)
    spec_dom = np.zeros(k)
    tmean = np.zeros(k)
    tmax = np.full(k, -np.inf)
    for r, x in zip(raw, leaves):
        h = entropy(jax.nn.softmax(x / tau, axis=0))
        is_spec = h < specific_entropy
        arg = jnp.argmax(x, axis=0)
        off = jnp.all(r < inactive, axis=0)
        onehot = (arg[None] == jnp.arange(k).reshape((k,) + (1,) * (x.ndim - 1))) & ~off[None]
        specific += float(jnp.sum(is_spec))
        inactive_n += float(jnp.sum(off))
        ent_sum += float(jnp.sum(h))
        dominant += np.asarray(jnp.sum(onehot.reshape(k, -1), axis=1))
        spec_dom += np.asarray(jnp.sum((onehot & is_spec[None]).reshape(k, -1), axis=1))
        tmean += np.asarray(jnp.sum(r.reshape(k, -1), axis=1))
        tmax = np.maximum(tmax, np.asarray(jnp.max(r.reshape(k, -1), axis=1)))
    return {
        "num_params": n,
        "num_tasks": k,
        "frac_task_specific": specific / n,
        "frac_not_activated": inactive_n / n,
        "mean_entropy": ent_sum / n,
        "max_entropy": float(np.log(k)),
        "task_mean": (tmean / n).tolist(),
        "task_median": np.asarray(median_select(raw)).tolist(),
        "task_max": tmax.tolist(),
        "task_dominant_frac": (dominant / n).tolist(),
        "task_specific_frac": (spec_dom / n).tolist(),
    }


def entropy_histogram(state_or_ema: Any, tau: float, bins: int = 50,
                      normalize: bool = False):
    """Histogram of per-parameter task entropies on ``[0, log K]`` (leaf by leaf, no copy).

    Returns:
      (counts [bins] int64, edges [bins + 1] float64).
    """
    leaves = _ema_leaves(state_or_ema, normalize)
    edges = np.linspace(0.0, np.log(leaves[0].shape[0]) + 1e-6, bins + 1)
    counts = np.zeros(bins, np.int64)
    for x in leaves:
        h = np.asarray(entropy(jax.nn.softmax(x / tau, axis=0))).ravel()
        counts += np.histogram(np.clip(h, 0.0, edges[-1]), bins=edges)[0]
    return counts, edges


def write_entropy_histogram(state_or_ema: Any, path: str, tau: float, bins: int = 50,
                            normalize: bool = False, title: Optional[str] = None) -> str:
    """Writes a PNG histogram of the per-parameter task entropies (matplotlib Agg).

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts, edges = entropy_histogram(state_or_ema, tau, bins, normalize)
    stats = specialization_stats(state_or_ema, tau, normalize)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    total = max(int(counts.sum()), 1)
    ax.bar(edges[:-1], counts / total, width=np.diff(edges), align="edge")
    ax.axvline(SPECIFIC_ENTROPY, color="r", linestyle="--", label="task-specific (H < 0.3)")
    ax.set_xlabel(f"entropy of the task distribution (nats, tau={tau})")
    ax.set_ylabel("fraction of parameters")
    ax.set_title(title or (f"task-specific {stats['frac_task_specific']:.1%}, "
                           f"not activated {stats['frac_not_activated']:.1%}"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
