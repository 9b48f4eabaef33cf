"""PCGrad, CGD, GradNorm and naive mixing against independent NumPy references.

Each reference below is written from the paper's formulas on explicitly flattened task
gradient vectors (float64), not from the library's K x K Gram formulation.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.multitask import cgd, get_method, gradnorm, naive, pcgrad

K = 4
SHAPES = {"dense": {"kernel": (3, 5), "bias": (5,)}, "emb": (6, 2), "scale": ()}


def _params():
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s, jnp.float32), SHAPES,
                                  is_leaf=lambda x: isinstance(x, tuple))


def _stacked(rng, k=K, scale=1.0):
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal((k,) + s), jnp.float32), SHAPES,
        is_leaf=lambda x: isinstance(x, tuple))


def _flat(stacked):
    """[K, D] float64: every leaf (in tree order) flattened and concatenated per task."""
    leaves = jax.tree_util.tree_leaves(stacked)
    k = leaves[0].shape[0]
    return np.concatenate([np.asarray(x, np.float64).reshape(k, -1) for x in leaves], axis=1)


def _flat1(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1)
                           for x in jax.tree_util.tree_leaves(tree)])


def _close(a, b, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, np.abs(b).max()))


# ----------------------------------------------------------------------------- references

def ref_pcgrad(g, orders, reduction="sum"):
    """Yu et al. 2020 Alg. 1: project g_i^PC on the normal plane of each conflicting g_j."""
    k = g.shape[0]
    out = []
    for i in range(k):
        gi = g[i].copy()
        for j in orders[i]:
            if j == i:
                continue
            d = gi @ g[j]
            if d < 0:
                gi = gi - d / (g[j] @ g[j]) * g[j]
        out.append(gi)
    total = np.sum(out, axis=0)
    return total / k if reduction == "mean" else total


def ref_orders(key, k):
    """The documented key procedure: split, split(sub, K), one permutation per task."""
    key, sub = jax.random.split(key)
    keys = jax.random.split(sub, k)
    return key, [np.asarray(jax.random.permutation(keys[i], k)) for i in range(k)]


def ref_cgd_step(alpha, g, losses, eta, use_losses, power, normalize, min_weight):
    """alpha_k <- alpha_k exp(eta * sum_j (l_k l_j)^p <ĝ_k, ĝ_j>) / Z; update sum alpha_k g_k."""
    k = g.shape[0]
    gh = g / np.linalg.norm(g, axis=1, keepdims=True) if normalize else g
    s = np.zeros(k)
    for a in range(k):
        for b in range(k):
            lw = (max(losses[a], 0) * max(losses[b], 0)) ** power if use_losses else 1.0
            s[a] += lw * (gh[a] @ gh[b])
    new = alpha * np.exp(eta * s)
    new = new / new.sum()
    if min_weight > 0:
        new = np.maximum(new, min_weight)
        new = new / new.sum()
    return new, new @ g


def ref_gradnorm_step(w, g_shared, g_all, losses, l0, asym, opt_step, min_weight, mean):
    """Chen et al. 2018 Alg. 1: update with w(t), then one step on L_grad, renormalise."""
    k = len(w)
    update = (w / k if mean else w) @ g_all
    norms = np.linalg.norm(g_shared, axis=1)
    G = w * norms
    lt = losses / l0
    r = lt / lt.mean()
    target = G.mean() * r ** asym
    grad = np.sign(G - target) * norms
    w = np.maximum(w + opt_step(grad), min_weight)
    return w * k / w.sum(), update


class RefAdam:
    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, b1, b2, eps, 0, 0., 0.

    def __call__(self, grad):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad ** 2
        mh, vh = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
        return -self.lr * mh / (np.sqrt(vh) + self.eps)


# ----------------------------------------------------------------------------- PCGrad

@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_pcgrad_matches_reference_over_steps(reduction):
    rng = np.random.default_rng(0)
    tx = pcgrad(seed=3, reduction=reduction)
    state = tx.init(_params())
    key = jax.random.PRNGKey(3)
    for _ in range(4):
        grads = _stacked(rng)
        upd, state = tx.update(grads, state, _params())
        key, orders = ref_orders(key, K)
        _close(_flat1(upd), ref_pcgrad(_flat(grads), orders, reduction))
    assert int(state.count) == 4
    np.testing.assert_array_equal(np.asarray(state.key), np.asarray(key))


def test_pcgrad_fixed_order_and_conflicts_projected():
    rng = np.random.default_rng(1)
    grads = _stacked(rng, k=3)
    tx = pcgrad(shuffle=False)
    upd, _ = tx.update(grads, tx.init(None), None)
    g = _flat(grads)
    _close(_flat1(upd), ref_pcgrad(g, [list(range(3))] * 3))
    # Some pair conflicts in this draw, so the surgery actually changes the plain sum.
    assert any(g[i] @ g[j] < 0 for i in range(3) for j in range(3))
    assert not np.allclose(_flat1(upd), g.sum(0), atol=1e-3)


def test_pcgrad_two_conflicting_tasks_no_negative_inner_product():
    rng = np.random.default_rng(2)
    for trial in range(10):
        a = rng.standard_normal(20)
        b = -0.7 * a + 0.5 * rng.standard_normal(20)
        assert a @ b < 0
        grads = {"w": jnp.asarray(np.stack([a[:12], b[:12]]).reshape(2, 3, 4), jnp.float32),
                 "b": jnp.asarray(np.stack([a[12:], b[12:]]), jnp.float32)}
        tx = pcgrad(seed=trial)
        upd, _ = tx.update(grads, tx.init(None), None)
        out = _flat1(upd)
        for g in _flat(grads):  # each task's gradient, in the same leaf order as `out`
            assert out @ g >= -1e-5 * np.linalg.norm(out) * np.linalg.norm(g)


# ----------------------------------------------------------------------------- CGD

@pytest.mark.parametrize("use_losses,normalize,power,min_weight", [
    (True, True, 0.5, 0.0),      # defaults: the authors' released update
    (False, False, 0.5, 0.0),    # simple form <g_k, sum_j g_j>
    (True, False, 1.0, 0.05),    # raw inner products, loss product, floor
])
def test_cgd_matches_reference_over_steps(use_losses, normalize, power, min_weight):
    rng = np.random.default_rng(3)
    eta = 0.3 if normalize else 0.02
    tx = cgd(num_tasks=K, step_size=eta, use_task_losses=use_losses, loss_power=power,
             normalize_grads=normalize, min_weight=min_weight)
    state = tx.init(_params())
    alpha = np.full(K, 1.0 / K)
    for _ in range(5):
        grads = _stacked(rng)
        losses = rng.uniform(0.2, 3.0, K)
        upd, state = tx.update(grads, state, _params(), task_losses=jnp.asarray(losses))
        alpha, ref = ref_cgd_step(alpha, _flat(grads), losses, eta, use_losses, power,
                                  normalize, min_weight)
        _close(np.asarray(state.alpha), alpha, rtol=1e-5, atol=1e-6)
        _close(_flat1(upd), ref)
        assert abs(float(jnp.sum(state.alpha)) - 1.0) < 1e-5
        assert float(jnp.min(state.alpha)) >= 0.999 * min_weight / (1 + K * min_weight)
    assert not np.allclose(alpha, 1.0 / K)


def test_cgd_param_filter_and_missing_losses():
    rng = np.random.default_rng(4)
    grads = _stacked(rng)
    losses = rng.uniform(0.5, 2.0, K)
    tx = cgd(num_tasks=K, step_size=0.5, param_filter="dense/kernel")
    _, st = tx.update(grads, tx.init(None), None, task_losses=losses)
    sub = np.asarray(grads["dense"]["kernel"], np.float64).reshape(K, -1)
    alpha, _ = ref_cgd_step(np.full(K, 1 / K), sub, losses, 0.5, True, 0.5, True, 0.0)
    _close(np.asarray(st.alpha), alpha, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task_losses"):
        tx.update(grads, tx.init(None), None)
    with pytest.raises(ValueError, match="selects no leaf"):
        cgd(num_tasks=K, param_filter="nope").update(grads, tx.init(None), None,
                                                      task_losses=losses)


# ----------------------------------------------------------------------------- GradNorm

@pytest.mark.parametrize("variant", ["adam_sum", "sgd_mean_filtered"])
def test_gradnorm_matches_reference_over_steps(variant):
    rng = np.random.default_rng(5)
    if variant == "adam_sum":
        tx, opt, mean, flt = gradnorm(num_tasks=K, alpha=1.5, lr_w=0.05), RefAdam(0.05), False, None
    else:
        tx = gradnorm(num_tasks=K, alpha=0.12, weight_optimizer=optax.sgd(0.02),
                      reduction="mean", param_filter=["dense/", "scale"])
        opt, mean, flt = (lambda gr: -0.02 * gr), True, True
    state = tx.init(_params())
    w = np.ones(K)
    l0 = None
    for step in range(6):
        grads = _stacked(rng)  # tasks at different gradient scales:
        grads = jax.tree_util.tree_map(
            lambda x: x * jnp.asarray([1.0, 2.0, 0.5, 1.5]).reshape((K,) + (1,) * (x.ndim - 1)),
            grads)
        losses = rng.uniform(0.5, 2.0, K) * (0.9 ** step)
        l0 = losses if l0 is None else l0
        upd, state = tx.update(grads, state, _params(), task_losses=losses)
        g_all = _flat(grads)
        g_sh = (_flat({"dense": grads["dense"], "scale": grads["scale"]}) if flt else g_all)
        w, ref = ref_gradnorm_step(w, g_sh, g_all, losses, l0, 1.5 if not flt else 0.12, opt,
                                   1e-4, mean)
        _close(_flat1(upd), ref)
        _close(np.asarray(state.weights), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(jnp.sum(state.weights)), K, rtol=1e-5)
    _close(np.asarray(state.initial_losses), l0)
    assert not np.allclose(np.asarray(state.weights), 1.0, atol=1e-3)
    assert float(jnp.min(state.weights)) > 0


def test_gradnorm_requires_task_losses():
    tx = gradnorm(num_tasks=K)
    with pytest.raises(ValueError, match="task_losses"):
        tx.update(_stacked(np.random.default_rng(0)), tx.init(None), None)


# ----------------------------------------------------------------------------- shared

def _identical(rng, k=K):
    one = _stacked(rng, k=1)
    return one, jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), one)


@pytest.mark.parametrize("name,kwargs,scale", [
    ("pcgrad", {}, K), ("pcgrad", {"reduction": "mean"}, 1),
    ("cgd", {"num_tasks": K}, 1), ("cgd", {"num_tasks": K, "use_task_losses": False}, 1),
    ("gradnorm", {"num_tasks": K}, K), ("gradnorm", {"num_tasks": K, "reduction": "mean"}, 1),
    ("naive", {}, 1),
])
def test_identical_task_gradients_give_scaled_gradient(name, kwargs, scale):
    rng = np.random.default_rng(6)
    tx = get_method(name, **kwargs)
    state = tx.init(_params())
    for step in range(3):
        one, grads = _identical(rng)
        losses = jnp.asarray(rng.uniform(0.5, 2.0, K), jnp.float32)
        upd, state = tx.update(grads, state, _params(), task_losses=losses)
        _close(_flat1(upd), scale * _flat1(one)[None].sum(0))


@pytest.mark.parametrize("name,kwargs", [
    ("pcgrad", {"seed": 1}), ("cgd", {"num_tasks": K, "step_size": 0.2}),
    ("gradnorm", {"num_tasks": K}),
])
def test_jit_chain_with_adamw_and_orbax_roundtrip(name, kwargs, tmp_path):
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(7)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape),
                                                          jnp.float32), _params())
    targets = jnp.asarray(rng.standard_normal((K, 3, 5)), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((K, 8, 3)), jnp.float32)

    def task_loss(p, batch):
        x, y = batch
        pred = x @ (p["dense"]["kernel"] + p["scale"]) + p["dense"]["bias"]
        return jnp.mean((pred - x @ y) ** 2) + 1e-3 * jnp.sum(p["emb"] ** 2)

    tx = optax.chain(get_method(name, **kwargs), optax.adamw(1e-3))

    @jax.jit
    def step(p, s):
        losses, grads = multitask.stacked_task_grads(task_loss, p, (xs, targets))
        upd, s = tx.update(grads, s, p, task_losses=losses)
        return optax.apply_updates(p, upd), s

    # jit agrees with eager on one step.
    st0 = tx.init(params)
    losses, grads = multitask.stacked_task_grads(task_loss, params, (xs, targets))
    eager_upd, _ = tx.update(grads, st0, params, task_losses=losses)
    p1, s1 = step(params, st0)
    _close(_flat1(p1), _flat1(optax.apply_updates(params, eager_upd)), rtol=1e-5, atol=1e-6)

    p, s = p1, s1
    for _ in range(3):
        p, s = step(p, s)
    assert np.all(np.isfinite(_flat1(p))) and not np.allclose(_flat1(p), _flat1(params))

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "state", s)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "state", s)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(s)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pa, _ = step(p, s)
    pb, _ = step(p, restored)
    np.testing.assert_array_equal(_flat1(pa), _flat1(pb))


# ----------------------------------------------------------------------------- naive, registry

def test_naive_matches_numpy_weighted_sum():
    rng = np.random.default_rng(8)
    grads = _stacked(rng)
    g = _flat(grads)
    upd, st = naive().update(grads, naive().init(None), None)
    _close(_flat1(upd), g.mean(0))
    assert int(st.count) == 1
    w = np.array([0.1, 0.2, 0.3, 0.4])
    upd, _ = naive(weights=w).update(grads, naive().init(None), None)
    _close(_flat1(upd), w @ g)
    counts = np.array([3, 1, 0, 4])
    tx = naive(by_task_counts=True)
    upd, _ = tx.update(grads, tx.init(None), None, task_counts=counts)
    _close(_flat1(upd), (counts / counts.sum()) @ g)
    with pytest.raises(ValueError, match="task_counts"):
        tx.update(grads, tx.init(None), None)
    with pytest.raises(ValueError, match="weights"):
        naive(weights=[0.5, 0.5]).update(grads, naive().init(None), None)


def test_registry():
    for name, cls in [("pcgrad", multitask.PCGradState), ("cgd", multitask.CGDState),
                      ("gradnorm", multitask.GradNormState)]:
        kwargs = {} if name == "pcgrad" else {"num_tasks": K}
        tx = get_method(name, **kwargs)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        assert isinstance(tx.init(_params()), cls)
    assert multitask.METHODS["pcgrad"] is pcgrad and multitask.METHODS["cgd"] is cgd
    assert multitask.METHODS["gradnorm"] is gradnorm and multitask.METHODS["naive"] is naive
    with pytest.raises(KeyError) as err:
        get_method("no_such_method")
    for known in ("cgd", "gradnorm", "naive", "pcgrad"):
        assert known in str(err.value)
