"""Every multitask method chosen by name (gin) and run with params sharded on 8 CPU devices
equals its unsharded run."""

import textwrap

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax import multitask



def test_gin_selects_method_by_name():
    gin.clear_config()
    try:
        gin.parse_config('multitask.method = "pcgrad"\nmultitask.options = {"reduction": "mean"}')
        tx = multitask.build_method(num_tasks=3)
        ref = multitask.get_method("pcgrad", reduction="mean")
        params = {"w": jnp.ones((4,))}
        grads = {"w": jnp.asarray([[1.0, 0, 0, 0], [-1.0, 1, 0, 0], [0, 0, 1, 0]])}
        got = tx.update(grads, tx.init(params), params)[0]["w"]
        np.testing.assert_allclose(got, ref.update(grads, ref.init(params), params)[0]["w"])
        # "mean" of the projected gradients, unlike naive's plain mean.
        assert not np.allclose(got, grads["w"].mean(0))
        gin.parse_config('multitask.method = "nope"')
        with pytest.raises(KeyError, match="unknown multitask method.*taco"):
            multitask.build_method()
    finally:
        gin.clear_config()


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from multiret_jax import multitask, partitioning
    assert jax.device_count() == 8
    K = 3
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
    grads = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(size=(K,) + x.shape), jnp.float32), params)
    losses = jnp.asarray([1.0, 2.0, 0.5])
    mesh = partitioning.make_mesh()
    p_sh = {"w": NamedSharding(mesh, P("data")), "b": NamedSharding(mesh, P())}
    g_sh = {"w": NamedSharding(mesh, P(None, "data")), "b": NamedSharding(mesh, P())}
    for name, opts in (("naive", {}), ("pcgrad", {}), ("cgd", {}), ("gradnorm", {}),
                       ("taco", {"burn_in_steps": 1})):
        tx = optax.chain(multitask.get_method(name, num_tasks=K, **opts), optax.adamw(1e-2))
        def run(p, g):
            s = tx.init(p)
            for _ in range(3):
                u, s = tx.update(g, s, p, task_losses=losses)
                p = optax.apply_updates(p, u)
            return p
        ref = jax.jit(run)(params, grads)
        out = jax.jit(run, in_shardings=(p_sh, g_sh), out_shardings=p_sh)(
            jax.device_put(params, p_sh), jax.device_put(grads, g_sh))
        assert len(out["w"].sharding.device_set) == 8
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                  zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)))
        print(name, err)
        assert err < 1e-5, (name, err)
    print("SHARDED_OK")
""")


def test_all_methods_sharded_equal_unsharded(run_on_8_devices):
    run_on_8_devices(SCRIPT, "SHARDED_OK")
