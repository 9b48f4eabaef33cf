"""CGD: Common Gradient Descent (Piratla, Netrapalli and Sarawagi).

Reference: V. Piratla, P. Netrapalli, S. Sarawagi. "Focus on the Common Good: Group
Distributional Robustness Follows". ICLR 2022 (arXiv:2110.02619), Algorithm 1; released
code github.com/vihari/CGD (WILDS ``algorithms/CG.py``). TACO (Zhang et al.) uses CGD as a
multi-task baseline (``cgd_backward`` in its ``mt_trainer.py``).

Group (here: task) weights alpha live on the simplex and are updated multiplicatively by
how much each task's gradient aligns with all tasks' gradients, then the model moves along
sum_k alpha_k g_k. With s_k the alignment score below, each step does, in this order::

    alpha_k <- alpha_k * exp(step_size * s_k) / Z        (Z: sum to 1)
    [optional floor]  alpha <- max(alpha, min_weight) / sum(max(alpha, min_weight))
    update = sum_k alpha_k g_k                            (the NEW alpha, as the paper
                                                           and both released codes do)

The alignment score, with ghat_k = g_k / ||g_k|| when ``normalize_grads`` else g_k, and
l_k the task losses (``task_losses`` extra argument, clipped at 0)::

    use_task_losses=False:  s_k = sum_j <ghat_k, ghat_j>
                            (with normalize_grads=False this is the simple form
                             <grad l_k, sum_j grad l_j> of the paper's greedy derivation)
    use_task_losses=True:   s_k = sum_j (l_k * l_j) ** loss_power * <ghat_k, ghat_j>

The defaults (normalize_grads=True, use_task_losses=True, loss_power=0.5) are the authors'
released update, s_k = sum_j sqrt(l_k l_j) cos(g_k, g_j), which concentrates alpha on tasks
that still have loss AND help the others. Differences from that code: it scales s by its
prior group weights (uniform 1/K without group-size adjustment; equivalently its step size
is K times smaller than ``step_size`` here), floors the cosine denominator at 1e-3 (here
``eps``), and floors alpha at 1e-5 without renormalising (here ``min_weight``, then
renormalised so alpha stays on the simplex). TACO's baseline is this update with
step_size = 1/tau_cgd, loss_power = beta_cgd and normalize_grads = norm_grad.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from multiret_jax.multitask import _checks as C
from multiret_jax.multitask.base import num_tasks as _num_tasks
from multiret_jax.multitask.base import register_method, task_losses_array, weighted_sum
from multiret_jax.multitask.pcgrad import ParamFilter, task_gram


class CGDState(NamedTuple):
    """CGD state: step count and the task weights alpha [K] on the simplex (neither
    changes on a skipped step)."""
    count: jax.Array  # int32 []
    alpha: jax.Array  # float32 [K]


def cgd_scores(gram: jax.Array, task_losses: Optional[jax.Array], normalize_grads: bool,
               loss_power: float, eps: float) -> jax.Array:
    """Alignment scores s [K] from the task Gram matrix (see the module docstring)."""
    if normalize_grads:
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        gram = gram / jnp.maximum(jnp.outer(norms, norms), eps)
    if task_losses is not None:
        lo = jnp.maximum(jnp.asarray(task_losses, jnp.float32), 0.0)
        gram = gram * jnp.outer(lo, lo) ** loss_power
    return jnp.sum(gram, axis=1)


@register_method("cgd")
def cgd(num_tasks: int, step_size: float = 0.05, use_task_losses: bool = True,
        loss_power: float = 0.5, normalize_grads: bool = True, min_weight: float = 0.0,
        eps: float = 1e-12, param_filter: ParamFilter = None
        ) -> optax.GradientTransformationExtraArgs:
    """Common Gradient Descent (Piratla et al., ICLR 2022) as a multitask optax transform.

    alpha <- alpha * exp(step_size * s) normalised to the simplex (alpha starts uniform 1/K),
    then update = sum_k alpha_k g_k with the updated alpha; s is defined in the module
    docstring (defaults: s_k = sum_j sqrt(l_k l_j) cos(g_k, g_j), the authors' code).

    Args:
      num_tasks: K >= 1 (the state holds alpha [K]).
      step_size: eta >= 0, the exponentiated-gradient step on alpha (0: alpha stays
        uniform).
      use_task_losses: scale the pairwise alignments by (l_k l_j) ** loss_power; the
        ``task_losses`` [K] extra argument is then required.
      loss_power: exponent >= 0 of the loss product (0.5: sqrt as the released code).
      normalize_grads: cosine similarities instead of raw inner products.
      min_weight: floor in [0, 1) on alpha after each step, then renormalised (so every
        alpha_k >= min_weight / (1 + K min_weight)); 0 disables.
      eps: floor (> 0) on ||g_k|| ||g_j|| in the cosine.
      param_filter: parameter subset for the inner products (see ``pcgrad.select_leaves``;
        the released code uses the top layers); the update always covers all leaves.
    Returns:
      A GradientTransformationExtraArgs with state ``CGDState``; the update of K identical
      task gradients g is g (alpha sums to 1).

    Non-finite values: the step reads the stacked gradients and, with
    ``use_task_losses``, ``task_losses`` (not ``params``). If any of them, or the Gram
    matrix, scores, alpha or update it would produce, holds a NaN or inf, the step is
    skipped: a zero update and the previous state (``count`` and alpha unchanged).

    Raises:
      ValueError: a bad argument, e.g. ``cgd: num_tasks must be an int >= 1, got None``,
        ``cgd: step_size must be a finite number >= 0, got nan``.
    """
    C.check_int("cgd", "num_tasks", num_tasks, low=1)
    C.check_real("cgd", "step_size", step_size, low=0.0)
    C.check_bool("cgd", "use_task_losses", use_task_losses)
    C.check_real("cgd", "loss_power", loss_power, low=0.0)
    C.check_bool("cgd", "normalize_grads", normalize_grads)
    C.check_real("cgd", "min_weight", min_weight, low=0.0, high=1.0, high_open=True)
    C.check_real("cgd", "eps", eps, low=0.0, low_open=True)
    C.check_param_filter("cgd", "param_filter", param_filter)
    k_expected = int(num_tasks)

    def init_fn(params):
        del params
        return CGDState(jnp.zeros([], jnp.int32),
                        jnp.full((k_expected,), 1.0 / k_expected, jnp.float32))

    def update_fn(updates, state, params=None, *, task_losses=None, **extra):
        del params, extra
        k = _num_tasks(updates)
        if k != k_expected:
            raise ValueError(f"cgd: built for {k_expected} tasks, got {k}")
        losses = None
        if use_task_losses:
            losses = task_losses_array(task_losses, k, "cgd(use_task_losses=True)")

        def step():
            gram = task_gram(updates, param_filter)
            s = cgd_scores(gram, losses, normalize_grads, loss_power, eps)
            alpha = jax.nn.softmax(jnp.log(state.alpha) + step_size * s)
            if min_weight > 0:
                alpha = jnp.maximum(alpha, min_weight)
                alpha = alpha / jnp.sum(alpha)
            return weighted_sum(updates, alpha), CGDState(state.count + 1, alpha), (gram, s)

        return C.skip_non_finite(C.all_finite(updates, losses), step,
                                 lambda: (C.zero_update(updates), state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
