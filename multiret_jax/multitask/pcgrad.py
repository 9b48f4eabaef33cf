"""PCGrad: projecting conflicting gradients (Yu et al., 2020).

Reference: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman, C. Finn. "Gradient Surgery for
Multi-Task Learning". NeurIPS 2020 (arXiv:2001.06782), Algorithm 1.

Every task gradient g_k is the flattening of its WHOLE parameter pytree (all leaves). The
projections are computed in the K-dimensional span of the task gradients: g_i^PC is kept
as coefficients c_i with g_i^PC = sum_m c_im g_m, and <g_i^PC, g_j> = c_i . Gram[:, j],
so no K x params copy is ever made; the result equals the vector formulation up to
floating-point rounding.

This module also holds two helpers shared by ``cgd`` and ``gradnorm``: ``select_leaves``
(a parameter subset by leaf path) and ``task_gram`` (the K x K Gram matrix of the tasks).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from multiret_jax.multitask import _checks as C
from multiret_jax.multitask.base import num_tasks as _num_tasks
from multiret_jax.multitask.base import register_method, weighted_sum

ParamFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


def leaf_path(path: Sequence[Any]) -> str:
    """A pytree key path as ``"params/encoder/layer_11/kernel"`` (dict keys, indices, fields)."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def select_leaves(tree: Any, param_filter: ParamFilter = None) -> List[jax.Array]:
    """The leaves of ``tree`` whose path (``leaf_path``) passes ``param_filter``.

    Args:
      tree: a (stacked) gradient pytree.
      param_filter: None (all leaves); a regex or a sequence of regexes, a leaf is kept when
        any of them ``re.search``-matches its path; or a callable ``path -> bool``.
    Returns:
      The selected leaves, in tree order. Raises ValueError when none is selected.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if param_filter is None:
        return [x for _, x in flat]
    if callable(param_filter):
        keep = param_filter
    else:
        pats = [param_filter] if isinstance(param_filter, str) else list(param_filter)
        keep = lambda p: any(re.search(q, p) for q in pats)  # noqa: E731
    out = [x for p, x in flat if keep(leaf_path(p))]
    if not out:
        raise ValueError(f"param_filter {param_filter!r} selects no leaf; paths are e.g. "
                         f"{[leaf_path(p) for p, _ in flat[:5]]}")
    return out


def task_gram(stacked: Any, param_filter: ParamFilter = None) -> jax.Array:
    """Gram[i, j] = <g_i, g_j> over the selected leaves, float32 [K, K]."""
    k = _num_tasks(stacked)
    gram = jnp.zeros((k, k), jnp.float32)
    for x in select_leaves(stacked, param_filter):
        m = x.reshape(k, -1).astype(jnp.float32)
        gram = gram + jnp.matmul(m, m.T, precision=jax.lax.Precision.HIGHEST)
    return gram


@functools.partial(jax.jit, static_argnums=1)
def pcgrad_orders(key: jax.Array, k: int):
    """The documented per-step randomness of ``pcgrad``.

    ``next_key, sub = jax.random.split(key)``; ``keys = jax.random.split(sub, k)``;
    ``orders[i] = jax.random.permutation(keys[i], k)`` (task i then skips itself).
    Returns (next_key, orders [k, k] int32).
    """
    next_key, sub = jax.random.split(key)
    orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(jax.random.split(sub, k))
    return next_key, orders.astype(jnp.int32)


@jax.jit
def pcgrad_weights(gram: jax.Array, orders: jax.Array, eps: float = 1e-20) -> jax.Array:
    """Coefficients c [K, K] with g_i^PC = sum_m c[i, m] g_m, following ``orders`` [K, K]."""
    k = gram.shape[0]
    eye = jnp.eye(k, dtype=gram.dtype)

    def one_task(i, order):
        def body(p, c):
            j = order[p]
            dot = c @ gram[:, j]
            coef = jnp.where((dot < 0) & (j != i), dot / jnp.maximum(gram[j, j], eps), 0.0)
            return c - coef * eye[j]
        return jax.lax.fori_loop(0, k, body, eye[i])

    return jax.vmap(one_task)(jnp.arange(k), orders)


class PCGradState(NamedTuple):
    """PCGrad state: step count and the PRNG key for the projection orders (neither
    advances on a skipped step)."""
    count: jax.Array  # int32 []
    key: jax.Array    # uint32 [2], a raw jax.random.PRNGKey


@register_method("pcgrad")
def pcgrad(seed: int = 0, reduction: str = "sum", shuffle: bool = True,
           num_tasks: Optional[int] = None,
           eps: float = 1e-20) -> optax.GradientTransformationExtraArgs:
    """PCGrad (Yu et al., 2020, Algorithm 1) as a multitask optax transform.

    For each task i, g_i^PC starts as g_i; for each other task j in a random order, if
    <g_i^PC, g_j> < 0 then g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 * g_j, projecting against
    the ORIGINAL g_j as the paper does. The update is sum_i g_i^PC (the paper's and the
    official code's reduction; TACO's public code then divides by K, i.e. "mean").

    The orders come from the PRNG key in the state, split each step as ``pcgrad_orders``
    documents (one permutation of all K tasks per task i, i itself skipped). Inner products
    run over all parameters (every leaf), in float32.

    Args:
      seed: seed of the initial ``jax.random.PRNGKey`` kept in the state.
      reduction: "sum" (paper: sum_i g_i^PC) or "mean" (sum / K).
      shuffle: False visits the other tasks in ascending index order (deterministic).
      num_tasks: optional K >= 1, checked against the stacked gradients when given.
      eps: floor on ||g_j||^2 (a zero g_j never conflicts, so this only guards 0/0);
        finite, > 0.
    Returns:
      A GradientTransformationExtraArgs mapping stacked grads [K, ...] to the
      unstacked PCGrad update; its state is ``PCGradState``.

    Non-finite values: the step reads only the stacked gradients (not ``params``). If
    any of them, or the Gram matrix, task weights or update it would produce (e.g. an
    overflowing Gram matrix), holds a NaN or inf, the step is skipped: a zero update and
    the previous state (``count`` and the PRNG key not advanced).

    Raises:
      ValueError: a bad argument, e.g. ``pcgrad: reduction must be one of ('sum',
        'mean'), got 'max'``.
    """
    C.check_int("pcgrad", "seed", seed, low=0)
    C.check_choice("pcgrad", "reduction", reduction, ("sum", "mean"))
    C.check_bool("pcgrad", "shuffle", shuffle)
    C.check_optional_int("pcgrad", "num_tasks", num_tasks, low=1)
    C.check_real("pcgrad", "eps", eps, low=0.0, low_open=True)
    expected_k = num_tasks

    def init_fn(params):
        del params
        return PCGradState(jnp.zeros([], jnp.int32), jax.random.PRNGKey(seed))

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        k = _num_tasks(updates)
        if expected_k is not None and k != expected_k:
            raise ValueError(f"pcgrad: built for {expected_k} tasks, got {k}")

        def step():
            next_key, orders = pcgrad_orders(state.key, k)
            if not shuffle:
                orders = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (k, k))
            gram = task_gram(updates)
            coeffs = pcgrad_weights(gram, orders, eps)
            w = jnp.sum(coeffs, axis=0)
            if reduction == "mean":
                w = w / k
            # a NaN Gram entry would read as "no conflict": checked, with the weights
            return weighted_sum(updates, w), PCGradState(state.count + 1, next_key), (gram, w)

        return C.skip_non_finite(C.all_finite(updates), step,
                                 lambda: (C.zero_update(updates), state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

