"""TACO: task-specialising gradient weighting by parameter sensitivity.

Algorithm 1 of Zhang et al. 2023, "Improving Multitask Retrieval by Promoting Task
Specialization" (TACL). For every task k and every parameter element theta_j:

1. sensitivity      s_k = |g_k * theta|                    (g_k: task k's gradient)
2. normalisation    s_k <- s_k / median(s_k)               (median over ALL elements of
                                                             the model, per task)
3. EMA              S_k <- beta * S_k + (1 - beta) * s_k   (state, K x params, fp32, init 0)
4. task weights     w_k = softmax_k(S_k / tau)             (per parameter element)
5. update           sum_k w_k * g_k                        (uniform w_k = 1/K in burn-in)

The EMA keeps updating during burn-in; burn-in only replaces the weights.

Where TACO's public PyTorch code (``MTDenseTrainer.taco_backward``) differs from the paper,
an option reproduces it; the defaults are the paper's:

* ``normalize_after_ema``: the public code with ``--norm_ipt False`` accumulates the RAW
  sensitivity in the EMA and divides the EMA by its per-task median when forming the
  weights; the paper (and ``--norm_ipt True``) normalises s_k before the EMA.
* ``divide_by_k``: divide the combined gradient by K at every step. (In the versions of
  the public code read for this port the 1/K appears in the PCGrad branch and in the
  non-finite fallback, not in the TACO branch; the option is there to match runs that
  used it.)
* ``burn_in_weights="sum"``: the public code's burn-in uses the plain SUM of the task
  gradients (weights 1, i.e. K times the paper's uniform 1/K).
* ``tau_schedule``: a temperature schedule (the paper uses a constant tau).
* Non-finite values: the public code falls back to a naive mean update when a gradient
  is non-finite; here the step is skipped (zero update, EMA and ``step`` unchanged,
  ``skipped`` + 1) when any input the step reads is non-finite (a task gradient,
  ``params``, the temperature of this step, which must also be > 0) or when the step
  would produce a non-finite median, EMA or update (e.g. an overflow of |g * theta| or
  of ``S_k / tau``). So a NaN or inf never enters the state or the update.
* The public code ties burn-in to the LR warm-up (``warmup_ratio * max_steps``) and
  re-creates the EMA every ANCE episode; here both are the caller's choice
  (``burn_in_steps``, and keep or re-``init`` the state).

Median (``median=``), all per task over all K-th-task elements of every leaf:

* "exact" (default): the paper's exact median, computed without copying or sorting by
  ``median.select_middle``: rounds that each read the K x N sensitivities once and count
  ``median_thresholds`` candidate float32 bit patterns (for x >= 0 the int32 bit pattern
  sorts like the value), narrowing a bracket until it holds the middle value(s): at most
  8 rounds with 15 candidates (the default on GPU/TPU), up to 32 with 1 (bisection, the
  default on CPU, where the counting work rather than the reads bounds the time). O(1) extra
  memory and sharding-friendly (a sharded leaf costs an all-reduce of K counts per
  count); equal to ``jnp.median`` up to the rounding of the mean of the two middle values.
* "sort": literally ``jnp.median`` of the concatenation of all leaves: a K x N copy and
  a sort each step (24x slower than "exact" on a 2-core CPU for K=8 x 18.6M, and the
  copy does not fit next to the gradients and the EMA of a T5-base-sized model on a
  24 GiB host). Kept as the reference.
* "approx": the exact median of a fixed uniform random sample of ``sample_size``
  elements (with replacement; drawn once in ``init`` with numpy ``seed`` and kept in the
  state as per-leaf flat indices). Rank error ~0.5/sqrt(sample_size); measured relative
  error of the median of |g * theta| over 4M elements at 2**18: ~0.4% typical, 1.1% worst
  of 4 tasks x 3 seeds (Gaussian or heavy-tailed g); it only rescales a task's
  normalised sensitivities by that factor for that step (the EMA averages it out). The
  relative error of the combined update is ~1.6/sqrt(sample_size) (0.3% at 2**18). Cost is independent of the
  model size (a gather of K x sample_size values), so it is the choice for large models
  when the rounds of "exact" matter: on a 2-core CPU, K=8 x 55.7M params (1/4 of
  T5-base), one update took 4.0-11.1 s with "exact" by bisection and 1.3 s with "approx" (two runs on
  a shared host; the elementwise EMA/softmax/sum part alone is ~1.2 s); see
  ``benchmarks/multitask_overhead.py``.
  Default stays "exact" (the paper's definition; exact and affordable); use "approx"
  above ~10M parameters when the update time matters.

The median is guarded as ``s / (median + eps)`` with ``eps = 1e-12`` (the public code's
epsilon). A median of 0 happens whenever more than half of a task's sensitivities are
exactly zero, e.g. a BERT with a 30k vocabulary, whose untouched word-embedding rows are
over half its parameters (all-MiniLM-L6-v2: 11.7M of 22.7M). Dividing by ``eps`` then
makes the normalised sensitivities ~1e6-1e8 where non-zero, so the softmax weights are
one-hot per parameter: measured on the realmini MiniLM run, after 60 steps 29-49% of each
task's EMA was exactly 0 and the rest 1e6-1e8. The paper's division is undefined there;
``zero_median="nonzero"`` (default) divides such a task by the median of its non-zero
sensitivities instead (the same as the paper's whenever its median is non-zero);
``zero_median="eps"`` keeps the public code's behaviour.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from multiret_jax.multitask import _checks as C
from multiret_jax.multitask.base import num_tasks as _num_tasks
from multiret_jax.multitask.base import register_method
from multiret_jax.multitask.median import (THRESHOLDS, draw_sample, median_sample, median_select,
                                          median_sort, sample_counts)

MEDIANS = ("exact", "sort", "approx")
ZERO_MEDIANS = ("nonzero", "eps")


class TacoState(NamedTuple):
    """State of ``taco``.

    Attributes:
      step: int32 scalar, updates applied so far (skipped steps not counted).
      ema: params-shaped tree, each leaf ``[K, *param.shape]`` float32: the EMA S_k of the
        (normalised, unless ``normalize_after_ema``) sensitivities.
      skipped: int32 scalar, steps skipped for non-finite values (see ``taco``).
      sample_idx: for ``median="approx"``, a params-shaped tree of int32 vectors: flat
        indices into each leaf of the fixed median sample (``[-1]`` where a leaf drew
        none: checkpoints cannot hold zero-size arrays); ``None`` otherwise.
    """
    step: jax.Array
    ema: Any
    skipped: jax.Array
    sample_idx: Any = None


@register_method("taco")
def taco(tau: float = 2.0,
         beta: float = 0.999,
         burn_in_steps: int = 0,
         median: str = "exact",
         *,
         num_tasks: Optional[int] = None,
         sample_size: int = 2 ** 18,
         seed: int = 0,
         eps: float = 1e-12,
         divide_by_k: bool = False,
         normalize_after_ema: bool = False,
         burn_in_weights: str = "uniform",
         tau_schedule: Optional[Union[optax.Schedule, Callable[[jax.Array], Any]]] = None,
         zero_median: str = "nonzero",
         median_thresholds: Optional[int] = None,
         ) -> optax.GradientTransformationExtraArgs:
    """TACO's sensitivity-weighted combination of stacked task gradients (Algorithm 1).

    Args:
      tau: softmax temperature over tasks (ignored when ``tau_schedule`` is given).
      beta: EMA decay of the sensitivities.
      burn_in_steps: the first ``burn_in_steps`` applied updates use uniform weights 1/K
        (the EMA still updates).
      median: "exact" (default: the exact median over all elements, the paper's
        definition, by bit bisection), "sort" (``jnp.median`` of the concatenation; same
        value, slower, K x N copy), or "approx" (exact median of a fixed random sample of
        ``sample_size`` elements). See the module doc.
      num_tasks: K; required by ``init`` to size the K x params EMA.
      sample_size: elements in the "approx" sample (when the model has no more elements
        than this, "approx" falls back to "exact").
      seed: seed of the "approx" sample (numpy, drawn once in ``init``).
      eps: the median guard, ``s / (median + eps)``.
      divide_by_k: divide the combined gradient by K (public-code option; paper: False).
      normalize_after_ema: EMA of the raw sensitivity, normalised by the EMA's median
        when forming the weights (public code ``--norm_ipt False``; paper: False).
      burn_in_weights: "uniform" (1/K, the paper) or "sum" (1, the public code).
      tau_schedule: optax schedule or callable ``step -> tau`` (step = applied updates).
      zero_median: when a task's median is 0 (more than half of its sensitivities are
        exactly zero): "nonzero" (default) divides by the median of its non-zero
        sensitivities instead; "eps" divides by ``0 + eps`` as the public code does. See
        the module doc.
      median_thresholds: candidates counted per read of the K x N sensitivities by the
        exact median (``median.select_middle``): 15 takes at most 8 reads, the choice
        where the step is memory-bound (GPU/TPU); 1 is bisection (up to 32 reads of one
        count each), the least total work, which is what XLA CPU is bound by. None
        (default): 15 on GPU/TPU, 1 on CPU (the backend the step is traced for).
    Returns:
      A GradientTransformationExtraArgs whose ``update(stacked_grads, state, params)``
      (leaves ``[K, ...]``; ``params`` required) returns the unstacked update.

    Non-finite values: the step reads the stacked gradients, ``params`` and this step's
    temperature. If any of them is NaN or inf (or the temperature is <= 0), or the
    median, EMA or update it would produce is, the step is skipped: zero update, ``ema``
    and ``step`` unchanged, ``skipped`` + 1. The state and the update are therefore always
    finite (given a finite initial state); finite steps are computed exactly as without
    the guard.

    Raises:
      ValueError: a bad argument (checked here, before any step), e.g.
        ``taco: tau must be a finite number > 0, got 0.0``,
        ``taco: beta must be a finite number in [0, 1), got 1.0``,
        ``taco: burn_in_steps must be an int >= 0, got -1``.
    """
    C.check_real("taco", "tau", tau, low=0.0, low_open=True)
    C.check_real("taco", "beta", beta, low=0.0, high=1.0, high_open=True)
    C.check_int("taco", "burn_in_steps", burn_in_steps, low=0)
    C.check_choice("taco", "median", median, MEDIANS)
    C.check_optional_int("taco", "num_tasks", num_tasks, low=1)
    C.check_int("taco", "sample_size", sample_size, low=1)
    C.check_int("taco", "seed", seed, low=0)
    C.check_real("taco", "eps", eps, low=0.0, low_open=True)
    C.check_bool("taco", "divide_by_k", divide_by_k)
    C.check_bool("taco", "normalize_after_ema", normalize_after_ema)
    C.check_choice("taco", "burn_in_weights", burn_in_weights, ("uniform", "sum"))
    C.check_optional_callable("taco", "tau_schedule", tau_schedule)
    C.check_choice("taco", "zero_median", zero_median, ZERO_MEDIANS)
    if median_thresholds is not None and (isinstance(median_thresholds, bool)
                                          or median_thresholds not in THRESHOLDS):
        C._fail("taco", "median_thresholds", f"None or one of {THRESHOLDS}", median_thresholds)

    def init_fn(params):
        if num_tasks is None:
            raise ValueError("taco(num_tasks=K) is required: the state holds a K x params "
                             "sensitivity EMA")
        leaves, treedef = jax.tree_util.tree_flatten(params)
        ema = jax.tree_util.tree_map(
            lambda p: jnp.zeros((num_tasks,) + tuple(p.shape), jnp.float32), params)
        sample_idx = None
        sizes = [int(np.prod(p.shape)) for p in leaves]
        if median == "approx" and sum(sizes) > sample_size:
            sample_idx = jax.tree_util.tree_unflatten(
                treedef, draw_sample(sizes, sample_size, seed))
        return TacoState(step=jnp.zeros([], jnp.int32), ema=ema,
                         skipped=jnp.zeros([], jnp.int32), sample_idx=sample_idx)

    def _thresholds():
        if median_thresholds is not None:
            return median_thresholds
        return 1 if jax.default_backend() == "cpu" else 15

    def _median_of(leaves, state, exclude_zeros):
        if median == "approx" and state.sample_idx is not None:
            sizes = tuple(int(np.prod(x.shape[1:])) for x in leaves)
            drawn = [c > 0 for c in sample_counts(sizes, sample_size, seed)]
            idx = jax.tree_util.tree_leaves(state.sample_idx)  # [-1] where none drawn
            return median_sample([x for x, d in zip(leaves, drawn) if d],
                                 [i for i, d in zip(idx, drawn) if d],
                                 exclude_zeros, _thresholds())
        if median == "sort":
            return median_sort(leaves, exclude_zeros)
        return median_select(leaves, exclude_zeros, _thresholds())

    def _median(leaves, state):
        med = _median_of(leaves, state, False)
        if zero_median == "eps":
            return med
        return jax.lax.cond(jnp.any(med == 0),  # the second pass only when needed
                            lambda: jnp.where(med == 0, _median_of(leaves, state, True), med),
                            lambda: med)

    def update_fn(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("taco needs the current params: call "
                             "tx.update(stacked_grads, state, params)")
        k = _num_tasks(updates)
        g_leaves, treedef = jax.tree_util.tree_flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        e_leaves = treedef.flatten_up_to(state.ema)
        if e_leaves[0].shape[0] != k:
            raise ValueError(f"taco state was built for {e_leaves[0].shape[0]} tasks, "
                             f"got stacked gradients for {k}")
        t = jnp.asarray(tau if tau_schedule is None else tau_schedule(state.step), jnp.float32)
        # Gradients and params need no separate K x N pass: a NaN/inf in g_k or theta
        # makes |g_k * theta| non-finite there, and with it that element of the new EMA
        # ((1 - beta) > 0; dividing by a median + eps > 0 keeps it non-finite), which
        # skip_non_finite checks (a separate check would cost one more K x N pass).
        inputs_ok = C.all_finite(t) & jnp.all(t > 0)

        def apply():
            g32 = [g.astype(jnp.float32) for g in g_leaves]
            sens = [jnp.abs(g * p.astype(jnp.float32)[None]) for g, p in zip(g32, p_leaves)]
            if normalize_after_ema:
                ema = [beta * e + (1.0 - beta) * s for e, s in zip(e_leaves, sens)]
                med = _median(ema, state)
                scores = [e / _bcast(med + eps, e) for e in ema]
            else:
                med = _median(sens, state)
                ema = [beta * e + (1.0 - beta) * (s / _bcast(med + eps, s))
                       for e, s in zip(e_leaves, sens)]
                scores = ema
            inv_tau = 1.0 / t
            burn = state.step < burn_in_steps
            burn_w = 1.0 / k if burn_in_weights == "uniform" else 1.0
            out = []
            for g, sc, g_orig in zip(g32, scores, g_leaves):
                u = jnp.where(burn, burn_w * _task_sum(g), softmax_weighted_sum(sc * inv_tau, g))
                if divide_by_k:
                    u = u / k
                out.append(u.astype(g_orig.dtype))
            new_state = TacoState(state.step + 1, treedef.unflatten(ema), state.skipped,
                                  state.sample_idx)
            return treedef.unflatten(out), new_state, med

        def skip():
            return (C.zero_update(treedef.unflatten(g_leaves)),
                    state._replace(skipped=state.skipped + 1))

        return C.skip_non_finite(inputs_ok, apply, skip)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _task_sum(xs: jax.Array) -> jax.Array:
    """sum over the leading (task) axis, unrolled: one fused elementwise pass (XLA CPU runs
    an axis-0 ``jnp.sum`` of a [K, N] array several times slower)."""
    return functools.reduce(jnp.add, [xs[i] for i in range(xs.shape[0])])


def softmax_weighted_sum(logits: jax.Array, g: jax.Array) -> jax.Array:
    """``sum_k softmax_k(logits)[k] * g[k]`` for ``[K, ...]`` arrays, per element.

    Unrolled over K (max, exp, two sums, one divide) so XLA fuses it into one pass over
    the K slices instead of materialising the ``[K, ...]`` weights (13x faster on CPU
    for K=8 x 8M than ``jnp.sum(jax.nn.softmax(logits, 0) * g, 0)``).
    """
    k = logits.shape[0]
    m = functools.reduce(jnp.maximum, [logits[i] for i in range(k)])
    ex = [jnp.exp(logits[i] - m) for i in range(k)]
    num = functools.reduce(jnp.add, [ex[i] * g[i] for i in range(k)])
    return num / functools.reduce(jnp.add, ex)


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """[K] -> [K, 1, ..., 1] to broadcast against a ``[K, ...]`` leaf."""
    return v.reshape(v.shape + (1,) * (like.ndim - 1))
