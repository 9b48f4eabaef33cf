"""A multitask method that starts part-way through training.

TACO (Zhang et al. 2023, Section 4.1) trains naive multitask learning through the BM25
warm-up and the first seven ANCE episodes and applies its sensitivity-guided update only in
the last episode (a variant: the last four). ``from_step`` expresses such a schedule as ONE
transform, so the optimizer state has a single structure for the whole run (a checkpoint
from any phase restores into it) and the later method's state (TACO's EMA) starts from its
``init`` value exactly at ``start_step``:

    tx = optax.chain(from_step(taco(num_tasks=8, burn_in_steps=b), start_step=s),
                     optax.adamw(5e-6))

Steps before ``start_step`` apply ``before`` (default ``naive``: the mean of the task
gradients, the same as TACO's uniform burn-in weights); from ``start_step`` on, ``method``.
Each inner state advances only on the steps its method runs, so the later method's own step
count (TACO's burn-in, a temperature schedule) counts from ``start_step``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from multiret_jax.multitask import _checks as C
from multiret_jax.multitask.base import naive


class FromStepState(NamedTuple):
    """State of ``from_step``.

    Attributes:
      count: int32 scalar, the updates seen so far (the clock, unless the caller passes
        ``step``).
      before: the state of the method used before ``start_step``.
      after: the state of the method used from ``start_step`` on.
    """
    count: jax.Array
    before: Any
    after: Any


def from_step(method: optax.GradientTransformationExtraArgs, start_step: int,
              before: Optional[optax.GradientTransformationExtraArgs] = None
              ) -> optax.GradientTransformationExtraArgs:
    """``before`` for the first ``start_step`` steps, then ``method``.

    Args:
      method: the multitask transform used from ``start_step`` on (e.g. ``taco(...)``).
      start_step: the first step (0-based) that uses ``method``; 0 uses it throughout.
      before: the transform used until then (default ``naive()``, the mean of the task
        gradients).
    Returns:
      A GradientTransformationExtraArgs over stacked task gradients. Its ``update`` takes
      the inner methods' extra arguments (``params``, ``task_losses`` ...) and an optional
      ``step`` extra argument (the trainer's global step); without it the state's own
      ``count`` is the clock. Both methods compile; only the current one runs
      (``jax.lax.cond``), and only its state changes.
    Raises:
      ValueError: ``start_step`` not an int >= 0.
    """
    C.check_int("from_step", "start_step", start_step, low=0)
    before = naive() if before is None else before

    def init_fn(params):
        return FromStepState(jnp.zeros([], jnp.int32), before.init(params), method.init(params))

    def update_fn(updates, state, params=None, *, step=None, **extra):
        clock = state.count if step is None else jnp.asarray(step, jnp.int32)

        def run_before():
            out, new = before.update(updates, state.before, params, **extra)
            return out, FromStepState(state.count + 1, new, state.after)

        def run_after():
            out, new = method.update(updates, state.after, params, **extra)
            return out, FromStepState(state.count + 1, state.before, new)

        if start_step == 0:
            return run_after()
        return jax.lax.cond(clock >= start_step, run_after, run_before)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
