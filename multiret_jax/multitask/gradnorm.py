"""GradNorm: adaptive loss balancing by gradient normalisation (Chen et al., 2018).

Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich. "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks". ICML 2018
(arXiv:1711.02257), Algorithm 1.

Task weights w [K] (init 1) ARE trained. At step t, with g_k = grad of task k's loss over
the shared parameters W (``param_filter``; all leaves by default, the paper uses the last
shared layer) and L_k(t) the ``task_losses`` extra argument::

    update     = sum_k w_k(t) g_k              (current weights, as the paper: the model
                                                step uses w(t), then w is stepped)
    G_k        = ||w_k(t) g_k||_W = w_k(t) ||g_k||_W,     Gbar = mean_k G_k
    Ltilde_k   = L_k(t) / L_k(0)               (L_k(0): the losses at the first update,
                                                stored in the state)
    r_k        = Ltilde_k / mean_j Ltilde_j
    target_k   = Gbar * r_k ** alpha           (a constant: no gradient flows through it)
    L_grad     = sum_k |G_k - target_k|
    dL/dw_k    = sign(G_k - target_k) * ||g_k||_W     (jax.grad of L_grad)
    w'         = w + weight_optimizer.update(dL/dw)   (Adam(lr_w) by default; any optax
                                                        transform, e.g. optax.sgd(lr_w))
    w(t+1)     = K * max(w', min_weight) / sum_k max(w', min_weight)   (sum_k w_k = K)

``reduction="mean"`` divides the update by K (weights then average to 1). TACO's public
code differs (softmax-parametrised weights that its optimizer never steps); this is the
paper's algorithm.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from multiret_jax.multitask import _checks as C
from multiret_jax.multitask.base import num_tasks as _num_tasks
from multiret_jax.multitask.base import register_method, task_losses_array, weighted_sum
from multiret_jax.multitask.pcgrad import ParamFilter, task_gram


class GradNormState(NamedTuple):
    """GradNorm state: step count, task weights, the first-step losses, inner opt state
    (none of them changes on a skipped step; L_k(0) is taken at the first applied one)."""
    count: jax.Array           # int32 []
    weights: jax.Array         # float32 [K], sum K
    initial_losses: jax.Array  # float32 [K], L_k(0); zeros until the first update
    weight_opt_state: Any      # state of ``weight_optimizer`` over the weights


def gradnorm_weight_grad(weights: jax.Array, grad_norms: jax.Array, losses: jax.Array,
                         initial_losses: jax.Array, alpha: float) -> jax.Array:
    """d L_grad / d w [K] with the targets held constant (see the module docstring)."""
    tiny = jnp.float32(1e-12)
    ratio = losses / jnp.maximum(initial_losses, tiny)
    r = ratio / jnp.maximum(jnp.mean(ratio), tiny)
    target = jax.lax.stop_gradient(jnp.mean(weights * grad_norms) * r ** alpha)

    def l_grad(w):
        return jnp.sum(jnp.abs(w * grad_norms - target))

    return jax.grad(l_grad)(weights)


@register_method("gradnorm")
def gradnorm(num_tasks: int, alpha: float = 1.5, lr_w: float = 0.025,
             weight_optimizer: Optional[optax.GradientTransformation] = None,
             min_weight: float = 1e-4, reduction: str = "sum",
             param_filter: ParamFilter = None) -> optax.GradientTransformationExtraArgs:
    """GradNorm (Chen et al., ICML 2018, Algorithm 1) as a multitask optax transform.

    Args:
      num_tasks: K >= 1 (the state holds w [K]).
      alpha: asymmetry >= 0; the paper's default 1.5 (0.12 for some of its experiments).
      lr_w: learning rate (> 0) of the default weight optimizer ``optax.adam(lr_w)``.
      weight_optimizer: optax transform stepping w on dL_grad/dw (overrides lr_w).
      min_weight: floor in [0, 1) on each w_k before renormalising to sum K (the weights
        average 1).
      reduction: "sum" (paper: sum_k w_k g_k, sum_k w_k = K) or "mean" (that / K).
      param_filter: the shared parameters W for ||g_k||_W (see ``pcgrad.select_leaves``;
        e.g. the last shared layer as the paper); the update always covers all leaves.
    Returns:
      A GradientTransformationExtraArgs with state ``GradNormState``. Its update needs the
      ``task_losses`` [K] extra argument. K identical task gradients g give K g ("sum")
      or g ("mean").

    Non-finite values: the step reads the stacked gradients and ``task_losses`` (not
    ``params``). If any of them, or the task gradient norms, the weight gradient, or the
    update or new state (weights, L_k(0), the weight optimizer's state) it would
    produce, holds a NaN or inf, the step is skipped: a zero update and the previous
    state (``count``, weights, L_k(0) and the weight optimizer's state unchanged; L_k(0)
    is thus taken at the first step actually applied).

    Raises:
      ValueError: a bad argument, e.g. ``gradnorm: lr_w must be a finite number > 0,
        got -0.1``.
    """
    C.check_int("gradnorm", "num_tasks", num_tasks, low=1)
    C.check_real("gradnorm", "alpha", alpha, low=0.0)
    C.check_real("gradnorm", "lr_w", lr_w, low=0.0, low_open=True)
    C.check_optimizer("gradnorm", "weight_optimizer", weight_optimizer)
    C.check_real("gradnorm", "min_weight", min_weight, low=0.0, high=1.0, high_open=True)
    C.check_choice("gradnorm", "reduction", reduction, ("sum", "mean"))
    C.check_param_filter("gradnorm", "param_filter", param_filter)
    k_expected = int(num_tasks)
    w_opt = weight_optimizer if weight_optimizer is not None else optax.adam(lr_w)

    def init_fn(params):
        del params
        w = jnp.ones((k_expected,), jnp.float32)
        return GradNormState(jnp.zeros([], jnp.int32), w,
                             jnp.zeros((k_expected,), jnp.float32), w_opt.init(w))

    def update_fn(updates, state, params=None, *, task_losses=None, **extra):
        del params, extra
        k = _num_tasks(updates)
        if k != k_expected:
            raise ValueError(f"gradnorm: built for {k_expected} tasks, got {k}")
        losses = task_losses_array(task_losses, k, "gradnorm")

        def step():
            w = state.weights
            initial = jnp.where(state.count == 0, losses, state.initial_losses)
            out = weighted_sum(updates, w / k if reduction == "mean" else w)

            norms = jnp.sqrt(jnp.maximum(jnp.diag(task_gram(updates, param_filter)), 0.0))
            grad_w = gradnorm_weight_grad(w, norms, losses, initial, alpha)
            w_step, opt_state = w_opt.update(grad_w, state.weight_opt_state, w)
            new_w = jnp.maximum(optax.apply_updates(w, w_step), min_weight)
            new_w = k * new_w / jnp.sum(new_w)
            new_state = GradNormState(state.count + 1, new_w, initial, opt_state)
            return out, new_state, (norms, grad_w)

        return C.skip_non_finite(C.all_finite(updates, losses), step,
                                 lambda: (C.zero_update(updates), state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
