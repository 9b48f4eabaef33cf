"""The multitask contract: stacked per-task gradients in, one ordinary update out.

Per-task gradients are ONE pytree whose every leaf has a leading task axis K, as
``jax.vmap(jax.grad(task_loss))`` over K stacked sub-batches produces (see
``stacked_task_grads``). A multitask transform is an
``optax.GradientTransformationExtraArgs`` whose ``update(stacked_grads, state, params,
**extra)`` returns an unstacked update, so it composes in front of any optimizer::

    tx = optax.chain(multitask.taco(tau=2.0, beta=0.999, burn_in_steps=1000),
                     optax.adamw(5e-6))
    updates, opt_state = tx.update(stacked_grads, opt_state, params,
                                   task_losses=losses)

Extra keyword arguments a method may use: ``task_losses`` [K] (GradNorm), ``task_counts``
[K] (naive size weighting). Methods are chosen by name through ``METHODS`` (gin:
``multitask.method = "taco"``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import optax

from multiret_jax.multitask import _checks as C

METHODS: Dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {}


def register_method(name: str):
    """Decorator adding a multitask transform constructor to ``METHODS``."""
    def wrap(fn):
        METHODS[name] = fn
        return fn
    return wrap


class UnknownMethodError(KeyError, ValueError):
    """An unknown multitask method name (a KeyError, and a ValueError like every other
    bad multitask argument)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def get_method(name: str, **kwargs) -> optax.GradientTransformationExtraArgs:
    """Builds the registered multitask transform ``name`` with ``kwargs``.

    Raises:
      UnknownMethodError (a KeyError and a ValueError): ``name`` is not registered.
      ValueError: a keyword the method does not take, or a bad value (the method's own
        construction-time checks).
    """
    ctor = METHODS.get(name) if isinstance(name, str) else None
    if ctor is None:
        raise UnknownMethodError(f"unknown multitask method {name!r}; known: {sorted(METHODS)}")
    allowed = _arg_names(ctor)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; allowed: {allowed}")
    return ctor(**kwargs)


def _arg_names(ctor: Callable[..., Any]) -> list:
    return [p.name for p in inspect.signature(ctor).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@gin.configurable("multitask")
def build_method(method: str = "naive", num_tasks: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None,
                 total_steps: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
    """Gin entry point: ``multitask.method = "taco"``, ``multitask.options = {"tau": 2.0}``.

    Args:
      method: a registered name (naive, taco, pcgrad, cgd, gradnorm).
      num_tasks: K, passed to every method (TACO/CGD/GradNorm size their state with it).
      options: keyword arguments of that method's constructor; ``burn_in_fraction`` (e.g.
        TACO's 10%) becomes ``burn_in_steps = round(fraction * total_steps)``.
      total_steps: the run's length (the trainer passes it).
    Returns:
      The multitask transform.
    Raises:
      ValueError: ``options`` not a dict, a bad ``num_tasks`` / ``total_steps`` /
        ``burn_in_fraction`` (a finite number in [0, 1]), ``burn_in_fraction`` together
        with ``burn_in_steps`` or ``num_tasks`` inside ``options``, or any of
        ``get_method``'s errors (UnknownMethodError for an unknown name).
    """
    where = f"multitask.build_method({method!r})"
    C.check_optional_int(where, "num_tasks", num_tasks, low=1)
    C.check_optional_int(where, "total_steps", total_steps, low=1)
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"{where}: options must be None or a dict of {method}'s arguments, "
                         f"got {options!r}")
    opts = dict(options or {})
    if "num_tasks" in opts:
        raise ValueError(f"{where}: num_tasks must be given as multitask.num_tasks, not in "
                         f"options, got options={opts!r}")
    if "burn_in_fraction" in opts:
        fraction = opts.pop("burn_in_fraction")
        C.check_real(where, "burn_in_fraction", fraction, low=0.0, high=1.0)
        if method in METHODS and "burn_in_steps" not in _arg_names(METHODS[method]):
            raise ValueError(f"{where}: burn_in_fraction is an option of methods with "
                             f"burn_in_steps (taco), not of {method}, got {fraction!r}")
        if "burn_in_steps" in opts:
            raise ValueError(f"{where}: options set both burn_in_fraction ({fraction!r}) and "
                             f"burn_in_steps ({opts['burn_in_steps']!r}); give one")
        if total_steps is None:
            raise ValueError(f"multitask.options burn_in_fraction needs total_steps ({method})")
        opts["burn_in_steps"] = int(round(float(fraction) * total_steps))
    return get_method(method, num_tasks=num_tasks, **opts)


def num_tasks(stacked: Any) -> int:
    """K, the leading axis shared by every leaf of a stacked gradient pytree."""
    sizes = {x.shape[0] for x in jax.tree_util.tree_leaves(stacked)}
    if len(sizes) != 1:
        raise ValueError(f"stacked gradients must share one leading task axis, got sizes {sizes}")
    return sizes.pop()


def task_losses_array(task_losses: Any, k: int, method: str) -> jax.Array:
    """The ``task_losses`` extra argument as float32 [K], with a clear error when missing."""
    if task_losses is None:
        raise ValueError(f"{method} needs the task_losses extra argument [K]: "
                         "tx.update(grads, state, params, task_losses=losses)")
    losses = jnp.asarray(task_losses, jnp.float32)
    if losses.shape != (k,):
        raise ValueError(f"{method}: task_losses has shape {losses.shape}, expected ({k},)")
    return losses


def weighted_sum(stacked: Any, weights: jax.Array) -> Any:
    """sum_k weights[k] * g_k for task weights [K] (or a pytree of per-parameter [K, ...]).

    Written as an unrolled sum over K (K is small and static): XLA CPU reduces a leading
    axis of a large array far slower than it adds K slices.
    """
    def comb(g, w):
        w = w.reshape(w.shape + (1,) * (g.ndim - w.ndim)).astype(g.dtype)
        out = w[0] * g[0]
        for k in range(1, g.shape[0]):
            out = out + w[k] * g[k]
        return out
    if hasattr(weights, "shape"):
        return jax.tree_util.tree_map(lambda g: comb(g, weights), stacked)
    return jax.tree_util.tree_map(comb, stacked, weights)


def stacked_task_grads(loss_fn: Callable[..., jax.Array], params: Any, task_batches: Any,
                       *args: Any) -> Tuple[jax.Array, Any]:
    """Per-task losses [K] and stacked gradients from K stacked sub-batches.

    Args:
      loss_fn: ``loss_fn(params, batch, *args) -> scalar`` for ONE task's sub-batch.
      params: model parameters (shared by all tasks).
      task_batches: pytree whose leaves have a leading task axis K.
      *args: broadcast to every task (e.g. an RNG key).
    Returns:
      (losses [K], grads with leaves [K, ...]).
    """
    in_axes = (None, 0) + (None,) * len(args)
    return jax.vmap(jax.value_and_grad(loss_fn), in_axes=in_axes)(params, task_batches, *args)


_num_tasks = num_tasks


class NaiveState(NamedTuple):
    """Naive mixing keeps no state beyond a step count (for logging; skipped steps are
    not counted)."""
    count: jax.Array


@register_method("naive")
def naive(weights: Optional[Sequence[float]] = None, by_task_counts: bool = False,
          num_tasks: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
    """Weighted sum of task gradients (MT-DPR's plain multi-task mixing).

    Non-finite inputs: the step reads the stacked gradients (and ``task_counts`` with
    ``by_task_counts``); if any of them, or the resulting weights or update, holds a NaN
    or inf (e.g. counts summing to 0), the step is skipped: a zero update and the previous
    state (``count`` not advanced). ``params`` is not read.

    Args:
      weights: fixed task weights [K] (e.g. N_k / N), finite, >= 0, positive sum; None
        means uniform 1/K.
      by_task_counts: weight by the ``task_counts`` extra argument of each step
        (examples of each task in the step, normalised to sum 1) instead (not together
        with ``weights``).
      num_tasks: K >= 1, checked against ``weights`` and the stacked gradients when given
        (every method accepts it, so a trainer builds any of them the same way).
    Returns:
      A GradientTransformationExtraArgs mapping stacked grads to sum_k w_k g_k.
    Raises:
      ValueError: a bad argument, e.g. ``naive: num_tasks must be None or an int >= 1,
        got 0``.
    """
    C.check_optional_int("naive", "num_tasks", num_tasks, low=1)
    C.check_bool("naive", "by_task_counts", by_task_counts)
    C.check_weights("naive", "weights", weights, num_tasks)
    if by_task_counts and weights is not None:
        raise ValueError(f"naive: weights must be None with by_task_counts=True (the "
                         f"task_counts of each step are the weights), got {weights!r}")

    def init_fn(params):
        del params
        return NaiveState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, task_counts=None, **extra):
        del params, extra
        k = _num_tasks(updates)
        if num_tasks is not None and k != num_tasks:
            raise ValueError(f"naive: built for {num_tasks} tasks, got gradients for {k}")
        counts = None
        if by_task_counts:
            if task_counts is None:
                raise ValueError("naive(by_task_counts=True) needs the task_counts extra argument")
            counts = jnp.asarray(task_counts, jnp.float32)
            w = counts / jnp.sum(counts)
        elif weights is not None:
            w = jnp.asarray(weights, jnp.float32)
            if w.shape != (k,):
                raise ValueError(f"naive: {w.shape[0]} weights for {k} tasks")
        else:
            w = jnp.full((k,), 1.0 / k, jnp.float32)
        return C.skip_non_finite(
            C.all_finite(updates, counts),
            lambda: (weighted_sum(updates, w), NaiveState(state.count + 1), w),
            lambda: (C.zero_update(updates), state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
