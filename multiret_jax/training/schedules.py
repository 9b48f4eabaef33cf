"""Learning-rate schedules by name (gin: ``train.lr_schedule``).

Both papers use a linear schedule: Adam with a linear warm-up from 0 to the peak over the
first ``warmup_fraction`` of the steps, then a linear decay to 0 at the last step (MT-DPR,
following DPR; TACO Appendix B, warm-up ratio 0.1). ``"cosine"`` (warm-up, then cosine
decay to 0) is kept for the configs tuned with it (the realmini MiniLM runs).
"""

from __future__ import annotations

from typing import Callable, Dict

import optax

Schedule = Callable[[int], float]


def linear(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> ``peak`` linearly over ``warmup_steps``, then linearly to 0 at ``total_steps``."""
    warmup_steps = max(1, warmup_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps),
         optax.linear_schedule(peak, 0.0, max(1, total_steps - warmup_steps))],
        [warmup_steps])


def cosine(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> ``peak`` linearly over ``warmup_steps``, then a cosine decay to 0."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, warmup_steps),
                                              max(total_steps, 2), 0.0)


SCHEDULES: Dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "linear": linear, "cosine": cosine}


def make_schedule(name: str, peak: float, warmup_fraction: float,
                  total_steps: int) -> optax.Schedule:
    """The schedule ``name`` (``SCHEDULES``) with ``round(warmup_fraction * total_steps)``
    warm-up steps.

    Raises:
      ValueError: an unknown name (the known ones are listed).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](peak, int(warmup_fraction * total_steps), total_steps)
