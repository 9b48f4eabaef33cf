"""``multitask.from_step``: naive before the start step, the method from it on, one state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax import multitask

K = 3


def _grads(seed, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(K,) + shape), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(K, 5)), jnp.float32)}


PARAMS = {"w": jnp.asarray(np.random.default_rng(9).normal(size=(4, 5)), jnp.float32),
          "b": jnp.asarray(np.random.default_rng(8).normal(size=(5,)), jnp.float32)}


def _mean(g):
    return jax.tree_util.tree_map(lambda x: np.asarray(x).mean(0), g)


def _close(a, b):
    return all(np.allclose(x, y, atol=1e-6) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("use_step", [False, True])
def test_naive_before_then_the_method_with_its_own_clock(use_step):
    """Steps 0-2 give the mean of the task gradients and leave TACO's state at init; from
    step 3 TACO runs, its burn-in (2 updates) counted from there: steps 3-4 the mean,
    step 5 TACO's weighting; the same as a TACO started fresh at step 3."""
    start, burn = 3, 2
    tx = multitask.from_step(multitask.taco(num_tasks=K, burn_in_steps=burn), start)
    ref = multitask.taco(num_tasks=K, burn_in_steps=burn)
    state, ref_state = tx.init(PARAMS), ref.init(PARAMS)
    update = jax.jit(tx.update)
    for step in range(6):
        g = _grads(step)
        extra = {"step": jnp.asarray(step)} if use_step else {}
        out, state = update(g, state, PARAMS, **extra)
        if step < start:
            assert _close(out, _mean(g))
            assert int(state.after.step) == 0 and not np.any(np.asarray(state.after.ema["w"]))
        else:
            expected, ref_state = ref.update(g, ref_state, PARAMS)
            assert _close(out, expected)
            assert int(state.after.step) == step - start + 1
            assert _close(state.after.ema, ref_state.ema)
            assert _close(out, _mean(g)) == (step < start + burn)
        assert int(state.count) == step + 1


def test_the_step_argument_is_the_clock():
    """With ``step`` passed (the trainer's global step), a state restored from elsewhere
    or a skipped step does not shift the switch."""
    tx = multitask.from_step(multitask.taco(num_tasks=K), start_step=5)
    state = tx.init(PARAMS)
    g = _grads(0)
    out, _ = tx.update(g, state, PARAMS, step=jnp.asarray(4))
    assert _close(out, _mean(g))
    _, new = tx.update(g, state, PARAMS, step=jnp.asarray(5))  # TACO's first update
    assert int(new.after.step) == 1 and int(new.before.count) == 0


def test_start_zero_is_the_method_alone_and_bad_starts_fail():
    taco = multitask.taco(num_tasks=K)
    tx = multitask.from_step(taco, 0)
    g = _grads(1)
    out, state = tx.update(g, tx.init(PARAMS), PARAMS)
    ref, _ = taco.update(g, taco.init(PARAMS), PARAMS)
    assert _close(out, ref) and int(state.after.step) == 1
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start_step"):
            multitask.from_step(taco, bad)
