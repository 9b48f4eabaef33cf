"""Task specialisation of parameters from TACO's sensitivity EMA (TACO paper, Figure 1).

Each parameter element has a distribution over tasks, ``p_k = softmax_k(S_k / tau)`` of
the EMA S (as TACO's weights), and its entropy ``H = -sum_k p_k log p_k`` (nats,
0 <= H <= log K). A parameter is "task-specific" when H < 0.3 and "not activated" when
every task's EMA is below 1e-8 (its distribution is then ~uniform, H ~ log K, so it is
never task-specific). Fractions are over all parameter elements of the model.

Per-task sensitivity densities (Figure 2): ``sensitivity_histogram``. This module only
computes; the figures (PNG) and the command line are ``multiret_jax/experiments/plots.py``.

Everything takes a ``TacoState`` or its ``ema`` tree (leaves ``[K, ...]``). With a state
trained with ``normalize_after_ema=True`` the EMA holds raw sensitivities: pass
``normalize=True`` to divide each task's EMA by its median first, as the weights do.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from multiret_jax.multitask.median import median_select
from multiret_jax.multitask.taco import TacoState

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


def sensitivity_histogram(state_or_ema: Any, bins: int = 60, normalize: bool = False):
    """Per-task histograms of the (normalised) sensitivity EMA on common log-spaced bins
    (TACO Figure 2), leaf by leaf.

    Args:
      state_or_ema: a ``TacoState`` or its EMA tree.
      bins: number of bins, log-spaced from the smallest to the largest positive value
        over all tasks (both included).
      normalize: normalise each task's EMA by its median first.
    Returns:
      (counts [K, bins] int64 of positive values, zeros [K] int64 (values <= 0, which a
      log axis cannot show), edges [bins + 1] float64).
    """
    leaves = [np.asarray(x) for x in _ema_leaves(state_or_ema, normalize)]
    k = leaves[0].shape[0]
    pos = [x[x > 0] for x in leaves]
    lo = min((float(p.min()) for p in pos if p.size), default=1.0)
    hi = max((float(p.max()) for p in pos if p.size), default=1.0)
    hi = max(hi, lo * (1 + 1e-6))  # one positive value: a non-empty range
    edges = np.geomspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi  # exactly, so the extremes are counted
    counts = np.zeros((k, bins), np.int64)
    zeros = np.zeros(k, np.int64)
    for x in leaves:
        x = x.reshape(k, -1)
        for t in range(k):
            v = x[t]
            zeros[t] += int(np.sum(v <= 0))
            counts[t] += np.histogram(v[v > 0], bins=edges)[0]
    return counts, zeros, edges
