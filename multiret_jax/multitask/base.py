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

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import optax

METHODS: Dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {}


def register_method(name: str):
    """Decorator adding a multitask transform constructor to ``METHODS``."""
    def wrap(fn):
        METHODS[name] = fn
        return fn
    return wrap


def get_method(name: str, **kwargs) -> optax.GradientTransformationExtraArgs:
    """Builds the registered multitask transform ``name`` with ``kwargs``."""
    try:
        ctor = METHODS[name]
    except KeyError:
        raise KeyError(f"unknown multitask method {name!r}; known: {sorted(METHODS)}") from None
    return ctor(**kwargs)


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
    """
    opts = dict(options or {})
    if "burn_in_fraction" in opts:
        if total_steps is None:
            raise ValueError(f"multitask.options burn_in_fraction needs total_steps ({method})")
        opts["burn_in_steps"] = int(round(float(opts.pop("burn_in_fraction")) * total_steps))
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
    """Naive mixing keeps no state beyond a step count (for logging)."""
    count: jax.Array


@register_method("naive")
def naive(weights: Optional[Sequence[float]] = None, by_task_counts: bool = False,
          num_tasks: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
    """Weighted sum of task gradients (MT-DPR's plain multi-task mixing).

    Args:
      weights: fixed task weights [K] (e.g. N_k / N); None means uniform 1/K.
      by_task_counts: weight by the ``task_counts`` extra argument of each step
        (examples of each task in the step, normalised to sum 1) instead.
      num_tasks: K, checked against the stacked gradients when given (every method
        accepts it, so a trainer builds any of them the same way).
    Returns:
      A GradientTransformationExtraArgs mapping stacked grads to sum_k w_k g_k.
    """
    def init_fn(params):
        del params
        return NaiveState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, task_counts=None, **extra):
        del params, extra
        k = _num_tasks(updates)
        if num_tasks is not None and k != num_tasks:
            raise ValueError(f"naive: built for {num_tasks} tasks, got gradients for {k}")
        if by_task_counts:
            if task_counts is None:
                raise ValueError("naive(by_task_counts=True) needs the task_counts extra argument")
            w = jnp.asarray(task_counts, jnp.float32)
            w = w / jnp.sum(w)
        elif weights is not None:
            w = jnp.asarray(weights, jnp.float32)
            if w.shape != (k,):
                raise ValueError(f"naive: {w.shape[0]} weights for {k} tasks")
        else:
            w = jnp.full((k,), 1.0 / k, jnp.float32)
        return weighted_sum(updates, w), NaiveState(state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
