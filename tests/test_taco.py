"""TACO (multitask/taco.py) against an independent NumPy implementation of the paper's
Algorithm 1, its properties (K=1, identical tasks, skipped steps, jit, optax chain,
orbax, sharding, approximate median) and the Figure-1 analysis (multitask/analysis.py)."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.multitask import analysis
from multiret_jax.multitask.taco import TacoState, taco

EPS = 1e-12
SHAPES = {"dense": {"kernel": (5, 7), "bias": (7,)}, "embed": (11, 3), "scale": ()}


# ----------------------------------------------------------------------------------------
# Independent NumPy reference, straight from the paper's formulas (float64).
# ----------------------------------------------------------------------------------------
def _flat(tree, k=None):
    leaves = jax.tree_util.tree_leaves(tree)
    if k is None:
        return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])
    return np.concatenate([np.asarray(x, np.float64).reshape(k, -1) for x in leaves], axis=1)


def _softmax0(x):
    z = np.exp(x - x.max(axis=0, keepdims=True))
    return z / z.sum(axis=0, keepdims=True)


def _median(x, zero_median="eps"):
    """Row medians; with "nonzero", a zero median is replaced by that of the non-zeros."""
    med = np.median(x, axis=1, keepdims=True)
    if zero_median == "nonzero":
        for i in np.flatnonzero(med[:, 0] == 0):
            nz = x[i][x[i] != 0]
            med[i] = np.median(nz) if nz.size else 0.0
    return med


def numpy_taco(steps, tau, beta, burn_in, divide_by_k=False, normalize_after_ema=False,
               zero_median="nonzero"):
    """steps: list of (stacked grads tree, params tree). Returns (updates [N], emas [K, N])."""
    k = jax.tree_util.tree_leaves(steps[0][0])[0].shape[0]
    ema = np.zeros_like(_flat(steps[0][0], k))
    ups, emas = [], []
    for t, (grads, params) in enumerate(steps):
        g, theta = _flat(grads, k), _flat(params)
        taus = tau(t) if callable(tau) else tau
        s = np.abs(g * theta[None])
        if normalize_after_ema:
            ema = beta * ema + (1 - beta) * s
            scores = ema / (_median(ema, zero_median) + EPS)
        else:
            ema = beta * ema + (1 - beta) * s / (_median(s, zero_median) + EPS)
            scores = ema
        w = np.full_like(g, 1.0 / k) if t < burn_in else _softmax0(scores / taus)
        u = (w * g).sum(axis=0)
        ups.append(u / k if divide_by_k else u)
        emas.append(ema.copy())
    return ups, emas


def _random_tree(rng, k=None, shapes=SHAPES, scale=1.0):
    lead = () if k is None else (k,)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal(lead + s), jnp.float32),
        shapes, is_leaf=lambda s: isinstance(s, tuple))


def _steps(k=3, n=7, seed=0):
    rng = np.random.default_rng(seed)
    return [(_random_tree(rng, k), _random_tree(rng)) for _ in range(n)]


def _run(tx, steps, jit=True):
    state = tx.init(steps[0][1])
    update = jax.jit(tx.update) if jit else tx.update
    ups, states = [], []
    for grads, params in steps:
        u, state = update(grads, state, params)
        ups.append(u)
        states.append(state)
    return ups, states


@pytest.mark.parametrize("opts", [{}, {"divide_by_k": True}, {"normalize_after_ema": True},
                                  {"median": "sort"}])
def test_matches_numpy_reference(opts):
    steps = _steps()
    ref_opts = {k: v for k, v in opts.items() if k != "median"}
    want_u, want_e = numpy_taco(steps, tau=0.5, beta=0.9, burn_in=2, **ref_opts)
    tx = taco(tau=0.5, beta=0.9, burn_in_steps=2, num_tasks=3, **opts)
    ups, states = _run(tx, steps, jit=True)
    for t in range(len(steps)):
        np.testing.assert_allclose(_flat(ups[t]), want_u[t], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(_flat(states[t].ema, 3), want_e[t], rtol=2e-5, atol=1e-7)
        assert int(states[t].step) == t + 1 and int(states[t].skipped) == 0
    # after burn-in the weights are not uniform: the update differs from the mean
    mean = _flat(jax.tree_util.tree_map(lambda g: g.mean(0), steps[-1][0]))
    assert np.abs(_flat(ups[-1]) - mean).max() > 1e-3


def test_jit_matches_eager():
    steps = _steps(n=3, seed=9)
    tx = taco(tau=0.5, beta=0.9, burn_in_steps=1, num_tasks=3)
    eager, se = _run(tx, steps, jit=False)
    jitted, sj = _run(tx, steps, jit=True)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_flat(se[-1].ema, 3), _flat(sj[-1].ema, 3), rtol=1e-6)


def test_tau_schedule_and_burn_in_sum():
    steps = _steps(n=6, seed=1)
    sched = lambda t: 0.5 + 0.25 * t
    want_u, _ = numpy_taco(steps, tau=sched, beta=0.8, burn_in=2)
    ups, _ = _run(taco(beta=0.8, burn_in_steps=2, num_tasks=3, tau_schedule=sched), steps)
    for t in range(6):
        np.testing.assert_allclose(_flat(ups[t]), want_u[t], rtol=2e-5, atol=1e-6)
    ups, _ = _run(taco(burn_in_steps=2, num_tasks=3, burn_in_weights="sum"), steps)
    np.testing.assert_allclose(_flat(ups[0]), _flat(steps[0][0], 3).sum(0), rtol=1e-5)


def test_single_task_is_plain_gradient():
    steps = _steps(k=1, n=4)
    ups, _ = _run(taco(tau=0.1, beta=0.5, num_tasks=1), steps)
    for u, (g, _) in zip(ups, steps):
        np.testing.assert_allclose(_flat(u), _flat(g, 1)[0], rtol=1e-6)


def test_identical_tasks_give_that_gradient():
    rng = np.random.default_rng(2)
    tx = taco(tau=0.3, beta=0.5, num_tasks=4)
    params = _random_tree(rng)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(4):
        g = _random_tree(rng)
        stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), g)
        u, state = update(stacked, state, params)
        np.testing.assert_allclose(_flat(u), _flat(g), rtol=1e-5, atol=1e-7)


def test_nonfinite_gradients_skip_the_step():
    steps = _steps(n=4, seed=3)
    bad = jax.tree_util.tree_map(lambda x: x, steps[1][0])
    bad["dense"]["bias"] = bad["dense"]["bias"].at[1, 2].set(jnp.nan)
    bad["embed"] = bad["embed"].at[0, 0, 0].set(jnp.inf)
    tx = taco(tau=0.5, beta=0.9, num_tasks=3)
    update = jax.jit(tx.update)
    state = tx.init(steps[0][1])
    u0, s0 = update(steps[0][0], state, steps[0][1])
    u1, s1 = update(bad, s0, steps[1][1])
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u1))
    np.testing.assert_array_equal(_flat(s1.ema, 3), _flat(s0.ema, 3))
    assert (int(s1.step), int(s1.skipped)) == (1, 1)
    # the run continues as if the bad step never happened
    rest, _ = _run(tx, [steps[0], steps[2], steps[3]])
    u2, s2 = update(steps[2][0], s1, steps[2][1])
    np.testing.assert_allclose(_flat(u2), _flat(rest[1]), rtol=1e-6)
    assert (int(s2.step), int(s2.skipped)) == (2, 1)


def test_errors():
    steps = _steps(n=1)
    tx = taco(num_tasks=3)
    with pytest.raises(ValueError, match="params"):
        tx.update(steps[0][0], tx.init(steps[0][1]))
    with pytest.raises(ValueError, match="num_tasks"):
        taco().init(steps[0][1])
    with pytest.raises(ValueError, match="tasks"):
        taco(num_tasks=2).update(steps[0][0], taco(num_tasks=2).init(steps[0][1]),
                                 steps[0][1])
    with pytest.raises(ValueError, match="median"):
        taco(median="mean")
    with pytest.raises(ValueError, match=r"median_thresholds must be None or one of .*got 16"):
        taco(median_thresholds=16)
    assert isinstance(multitask.get_method("taco", num_tasks=3), optax.GradientTransformation)


def test_in_optax_chain_with_adamw():
    rng = np.random.default_rng(4)
    params = _random_tree(rng)
    targets = _random_tree(rng, k=3)

    def loss(p, target):
        return sum(jnp.sum((a - b) ** 2) for a, b in
                   zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target)))

    tx = optax.chain(taco(tau=1.0, beta=0.9, burn_in_steps=1, num_tasks=3),
                     optax.adamw(1e-2))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        losses, grads = multitask.stacked_task_grads(loss, params, targets)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, losses.sum()

    first = None
    for _ in range(20):
        new, state, total = step(params, state)
        first = total if first is None else first
        params = new
    assert float(total) < float(first)
    assert int(state[0].step) == 20
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("median", ["exact", "approx"])
def test_orbax_round_trip(tmp_path, median):
    import orbax.checkpoint as ocp
    steps = _steps(n=2)
    big = {"w": (300, 20), "b": (20,)}
    rng = np.random.default_rng(5)
    if median == "approx":  # more elements than the sample, so a sample is drawn
        steps = [(_random_tree(rng, 3, big), _random_tree(rng, None, big)) for _ in range(2)]
    _, states = _run(taco(num_tasks=3, median=median, sample_size=1000), steps)
    state = states[-1]
    if median == "approx":
        assert state.sample_idx is not None
    ckpt = ocp.StandardCheckpointer()
    path = tmp_path / "taco_state"
    ckpt.save(path, state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(path, jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state))
    restored = TacoState(*restored) if not isinstance(restored, TacoState) else restored
    a, ta = jax.tree_util.tree_flatten(state)
    b, tb = jax.tree_util.tree_flatten(restored)
    assert ta == tb
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from multiret_jax.multitask.taco import taco
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    shapes = {"w": (64, 48), "e": (40, 8), "b": (48,)}
    specs = {"w": P("data", None), "e": P("data", None), "b": P()}
    K = 3
    for median in ("exact", "approx"):
        tx = taco(tau=0.5, beta=0.9, burn_in_steps=1, num_tasks=K, median=median,
                  sample_size=512)
        st_plain = st_shard = None
        for t in range(3):
            params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            grads = {n: rng.standard_normal((K,) + s).astype(np.float32)
                     for n, s in shapes.items()}
            p_sh = {n: jax.device_put(v, NamedSharding(mesh, specs[n]))
                    for n, v in params.items()}
            g_sh = {n: jax.device_put(v, NamedSharding(mesh, P(None, *specs[n])))
                    for n, v in grads.items()}
            assert len(p_sh["w"].sharding.device_set) == 8
            if st_plain is None:
                st_plain, st_shard = tx.init(params), jax.jit(tx.init)(p_sh)
            u_plain, st_plain = jax.jit(tx.update)(grads, st_plain, params)
            u_shard, st_shard = jax.jit(tx.update)(g_sh, st_shard, p_sh)
            for n in shapes:
                np.testing.assert_allclose(np.asarray(u_shard[n]), np.asarray(u_plain[n]),
                                           rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(np.asarray(st_shard.ema[n]),
                                           np.asarray(st_plain.ema[n]), rtol=1e-5, atol=1e-7)
    print("SHARDED_OK")
""")


def test_sharded_params_match_unsharded(run_on_8_devices):
    run_on_8_devices(SHARDED_SCRIPT, "SHARDED_OK")


@pytest.mark.parametrize("zero_median", ["nonzero", "eps"])
@pytest.mark.parametrize("median,thresholds", [("exact", None), ("exact", 15), ("sort", None)])
def test_mostly_zero_gradients_match_numpy(zero_median, median, thresholds):
    """Most gradient entries exactly zero (untouched embedding rows): the median is 0."""
    rng = np.random.default_rng(9)
    steps = []
    for grads, params in _steps(k=3, n=5, seed=3):
        grads = jax.tree_util.tree_map(
            lambda g: jnp.where(jnp.asarray(rng.random(g.shape) < 0.7), 0.0, g), grads)
        steps.append((grads, params))
    ups, states = _run(taco(tau=2.0, beta=0.9, num_tasks=3, median=median,
                            zero_median=zero_median, median_thresholds=thresholds), steps)
    want_ups, want_emas = numpy_taco(steps, 2.0, 0.9, 0, zero_median=zero_median)
    for u, s, wu, we in zip(ups, states, want_ups, want_emas):
        np.testing.assert_allclose(_flat(u), wu, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(_flat(s.ema, 3), we, rtol=2e-5)
    ema = _flat(states[-1].ema, 3)
    if zero_median == "nonzero":  # normalised to O(1) where non-zero
        assert np.median(ema[ema > 0]) < 10
    else:  # divided by eps: huge
        assert np.median(ema[ema > 0]) > 1e6


APPROX_MEDIAN_RTOL = 0.02  # measured at 2**18: ~0.4% typical, 1.1% worst (5 sigma ~ 2%)


def test_approx_median_close_to_exact():
    rng = np.random.default_rng(7)
    n = 1_500_000
    g = rng.standard_normal((2, n)).astype(np.float32)
    theta = rng.standard_normal(n).astype(np.float32)
    s = np.abs(g * theta)
    tx = taco(num_tasks=2, median="approx")  # default sample_size 2**18
    tree = {"a": jnp.asarray(theta[:1_000_000]), "b": jnp.asarray(theta[1_000_000:])}
    state = tx.init(tree)
    idx = jax.tree_util.tree_leaves(state.sample_idx)
    assert sum(i.shape[0] for i in idx) == 2 ** 18
    from multiret_jax.multitask.median import median_sample as _median_sample
    leaves = [jnp.asarray(s[:, :1_000_000]), jnp.asarray(s[:, 1_000_000:])]
    approx = np.asarray(_median_sample(leaves, idx))
    exact = np.median(s, axis=1)
    np.testing.assert_allclose(approx, exact, rtol=APPROX_MEDIAN_RTOL)


def test_approx_update_close_to_exact():
    rng = np.random.default_rng(8)
    shapes = {"w": (200, 100), "v": (100, 60), "b": (60,)}
    steps = [(_random_tree(rng, 4, shapes), _random_tree(rng, None, shapes)) for _ in range(4)]
    ue, _ = _run(taco(tau=1.0, beta=0.5, num_tasks=4), steps, jit=True)
    m = 8192
    ua, sa = _run(taco(tau=1.0, beta=0.5, num_tasks=4, median="approx", sample_size=m),
                  steps, jit=True)
    assert sa[-1].sample_idx is not None
    for a, e in zip(ua, ue):
        a, e = _flat(a), _flat(e)
        # stated tolerance 4/sqrt(m); measured ~1.6/sqrt(m) (tau=1; 2**16: 0.5-1%)
        assert np.linalg.norm(a - e) / np.linalg.norm(e) < 4 / np.sqrt(m)


# ----------------------------------------------------------------------------------------
# analysis.py
# ----------------------------------------------------------------------------------------
def test_entropy_uniform_and_one_hot():
    np.testing.assert_allclose(analysis.entropy(jnp.full((4, 3), 0.25)), np.log(4) * np.ones(3),
                               rtol=1e-6)
    np.testing.assert_allclose(analysis.entropy(jnp.eye(5)), np.zeros(5), atol=1e-7)
    dist = analysis.task_distribution({"a": jnp.zeros((3, 2))}, tau=2.0)
    np.testing.assert_allclose(dist[0], np.full((3, 2), 1 / 3), rtol=1e-6)


def _constructed_ema():
    # columns of a: (100, 0) specific, (0, 0) not activated, (1, 1) uniform, (5, 0) specific
    a = jnp.asarray([[100.0, 0.0, 1.0, 5.0], [0.0, 0.0, 1.0, 0.0]])
    b = jnp.asarray([[0.0], [3.0]])  # task 1, H = 0.19 < 0.3: specific
    return {"a": a, "b": b}


def test_specialization_fractions_by_hand():
    stats = analysis.specialization_stats(_constructed_ema(), tau=1.0)
    assert stats["num_params"] == 5 and stats["num_tasks"] == 2
    assert stats["frac_task_specific"] == pytest.approx(3 / 5)
    assert stats["frac_not_activated"] == pytest.approx(1 / 5)
    assert stats["task_dominant_frac"] == pytest.approx([3 / 5, 1 / 5])  # tie -> task 0
    assert stats["task_specific_frac"] == pytest.approx([2 / 5, 1 / 5])
    assert stats["task_mean"] == pytest.approx([106 / 5, 4 / 5])
    assert stats["task_max"] == pytest.approx([100.0, 3.0])
    assert stats["max_entropy"] == pytest.approx(np.log(2))
    # entropy of softmax([d, 0]): log(1 + e^-d) + d e^-d / (1 + e^-d)
    h = lambda d: np.log1p(np.exp(-d)) + d * np.exp(-d) / (1 + np.exp(-d))
    want = (h(100.0) + 2 * np.log(2) + h(5.0) + h(3.0)) / 5
    assert stats["mean_entropy"] == pytest.approx(want, rel=1e-5)
    # a TacoState works as well as its EMA
    state = TacoState(jnp.zeros([], jnp.int32), _constructed_ema(), jnp.zeros([], jnp.int32))
    assert analysis.specialization_stats(state, tau=1.0) == stats


def test_entropy_histogram_by_hand():
    counts, edges = analysis.entropy_histogram(_constructed_ema(), tau=1.0, bins=10)
    assert counts.sum() == 5 and counts[0] >= 2 and counts[-1] == 2


def test_approx_sample_missing_a_leaf_checkpoints_and_skips_it(tmp_path):
    """A leaf that draws no sample element (here the 1-element "b" of 60,001) holds the
    placeholder [-1]: the state checkpoints (orbax refuses zero-size arrays), and the
    median is that of the drawn elements only."""
    from multiret_jax.multitask.median import sample_counts
    from multiret_jax.training.checkpointing import Checkpointer
    rng = np.random.default_rng(11)
    shapes = {"w": (3000, 20), "b": (1,)}
    params = _random_tree(rng, None, shapes)
    grads = _random_tree(rng, 2, shapes)
    tx = taco(num_tasks=2, median="approx", sample_size=1000, seed=0, beta=0.0)
    state = tx.init(params)
    counts = dict(zip(["b", "w"], sample_counts((1, 60000), 1000, 0)))
    assert counts == {"b": 0, "w": 1000}
    np.testing.assert_array_equal(state.sample_idx["b"], [-1])
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(1, {"taco": state})
    ckpt.wait()
    restored, _ = ckpt.restore(1, target={"taco": state})
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, new = jax.jit(tx.update)(grads, state, params)
    sens = np.abs(np.asarray(grads["w"]) * np.asarray(params["w"])[None]).reshape(2, -1)
    med = np.median(sens[:, np.asarray(state.sample_idx["w"])], axis=1)
    # beta 0: the EMA is the normalised sensitivity s / (median + eps)
    np.testing.assert_allclose(np.asarray(new.ema["w"]).reshape(2, -1),
                               sens / (med[:, None] + 1e-12), rtol=1e-5)
