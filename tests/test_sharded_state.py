"""Multitask state split over all devices (FSDP-style): TACO's K x params EMA, the stacked
task gradients and Adam's moments, on 8 simulated CPU devices, equal one device and hold
1/8 of the bytes per device."""

import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from multiret_jax import multitask, partitioning
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training.step import (init_train_state, stacked_grad_shardings,
                                            state_shardings)
    assert jax.device_count() == 8
    K = 8
    rng = np.random.default_rng(0)
    if MODEL_PARALLEL == (1,):  # a small tree of a model's leaf kinds (quick to compile)
        params = {"embed": jnp.ones((96, 32)), "kernel": jnp.ones((32, 64)) * 0.3,
                  "bias": jnp.ones((64,)), "scale": jnp.ones((32,)), "rel": jnp.ones((8, 4))}
        params = jax.tree_util.tree_map(
            lambda p: p * jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    else:
        model, params, _ = build_biencoder("t5", "t5_tiny")
    grads = [jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal((K,) + p.shape) * 1e-2, jnp.float32), params)
        for _ in range(3)]
    tx = optax.chain(multitask.build_method("taco", num_tasks=K,
                                            options={"burn_in_steps": 1, "beta": 0.9}),
                     optax.adamw(1e-3))

    def run(state, grads, gsh=None):
        def one(state, g):
            u, opt = tx.update(g, state["opt_state"], state["params"])
            return dict(state, params=optax.apply_updates(state["params"], u), opt_state=opt)
        step = jax.jit(one, donate_argnums=(0,)) if gsh is None else jax.jit(
            one, donate_argnums=(0,), in_shardings=(SH, gsh), out_shardings=SH)
        for g in grads:
            state = step(state, g if gsh is None else jax.device_put(g, gsh))
        return state

    fresh = lambda: init_train_state(jax.tree_util.tree_map(jnp.array, params), tx)
    ref = jax.tree_util.tree_map(np.asarray, run(fresh(), grads))
    leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)]

    def rel_err(got, want):
        scale = max(np.max(np.abs(b)) for b in leaves(want))
        return max(np.max(np.abs(a - b)) for a, b in zip(leaves(got), leaves(want))) / scale

    for mp in MODEL_PARALLEL:
        mesh = partitioning.make_mesh(mp)
        psh = partitioning.logical_shardings(model.logical_specs(), mesh) if mp > 1 else None
        state = fresh()
        SH = state_shardings(state, mesh, psh)
        gsh = stacked_grad_shardings(grads[0], SH["params"], mesh)
        got = run(jax.device_put(state, SH), grads, gsh)
        ema, ref_ema = got["opt_state"][0].ema, ref["opt_state"][0].ema
        dev0 = jax.devices()[0]
        for name, tree in (("EMA", ema), ("Adam mu", got["opt_state"][1][0].mu)):
            total = sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
            on_dev0 = sum(sh.data.nbytes for x in jax.tree_util.tree_leaves(tree)
                          for sh in x.addressable_shards if sh.device == dev0)
            print(f"model_parallel={mp} {name}: {total} bytes, {on_dev0} on device 0 "
                  f"(1/{total / on_dev0:.2f})")
            assert on_dev0 * 8 == total, (mp, name, on_dev0, total)
        for name, a, b in (("params", got["params"], ref["params"]), ("EMA", ema, ref_ema),
                           ("Adam nu", got["opt_state"][1][0].nu, ref["opt_state"][1][0].nu)):
            err = rel_err(a, b)
            print(f"model_parallel={mp} {name} err / largest {err:.2e}")
            assert err < 1e-5, (mp, name, err)
        assert int(got["opt_state"][0].step) == 3 and int(got["opt_state"][0].skipped) == 0
    print("SHARDED_STATE_OK")
""")


def test_sharded_taco_state_equals_one_device_at_an_eighth_of_the_bytes(run_on_8_devices):
    """8 data-parallel devices: the state split over the data axis (a small tree with a
    model's leaf kinds)."""
    out = run_on_8_devices("MODEL_PARALLEL = (1,)" + SCRIPT, "SHARDED_STATE_OK")
    assert out.count("err / largest") == 3, out
    print(out)


@pytest.mark.slow  # ~100 s more: a second mesh
def test_sharded_taco_state_with_model_parallel_parameters(run_on_8_devices):
    """A 4 x 2 data x model mesh: parameters split on "model" by the logical rules, their
    state split over "data" as well."""
    out = run_on_8_devices("MODEL_PARALLEL = (2,)" + SCRIPT, "SHARDED_STATE_OK")
    assert out.count("err / largest") == 3, out
    print(out)
