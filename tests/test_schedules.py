"""training/schedules.py: the papers' linear schedule and the cosine one, by name."""

import numpy as np
import optax
import pytest

from multiret_jax.training.schedules import make_schedule


def test_linear_warmup_then_linear_decay_to_zero():
    """TACO: lr 5e-6, warm-up ratio 0.1 over 1,000 steps: 0 -> peak over 100 steps, then
    a straight line to 0 at step 1,000 (checked against the formula, float32)."""
    peak, total = 5e-6, 1000
    s = make_schedule("linear", peak, 0.1, total)
    for step in (0, 1, 50, 99, 100, 101, 550, 999, 1000):
        want = peak * step / 100 if step < 100 else peak * (total - step) / (total - 100)
        assert float(s(step)) == pytest.approx(want, rel=1e-4, abs=1e-15), step
    assert np.argmax([float(s(i)) for i in range(total)]) == 100


def test_cosine_is_the_previous_default():
    s = make_schedule("cosine", 2e-5, 0.1, 300)
    ref = optax.warmup_cosine_decay_schedule(0.0, 2e-5, 30, 300, 0.0)
    assert all(float(s(i)) == float(ref(i)) for i in range(0, 301, 7))


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="'constant'.*cosine.*linear"):
        make_schedule("constant", 1e-3, 0.1, 10)
