"""Every registered multitask transform rejects bad hyper-parameters at construction, and
never lets a NaN or inf into its state or its update (the step is skipped instead).

Exactness on finite inputs is covered by tests/test_taco.py (Algorithm 1 in NumPy) and
tests/test_multitask_baselines.py (PCGrad, CGD, GradNorm, naive in NumPy)."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask

K = 3
NAN, INF = float("nan"), float("inf")
# Arguments a method needs to be built at all (cgd and gradnorm size their state with K).
REQUIRED = {"naive": {}, "taco": {}, "pcgrad": {}, "cgd": {"num_tasks": K},
            "gradnorm": {"num_tasks": K}}

# (method, bad arguments, the argument the message must name)
BAD = [
    # taco
    ("taco", {"tau": 0.0}, "tau"), ("taco", {"tau": -2.0}, "tau"), ("taco", {"tau": NAN}, "tau"),
    ("taco", {"tau": INF}, "tau"), ("taco", {"tau": "2"}, "tau"), ("taco", {"tau": True}, "tau"),
    ("taco", {"beta": 1.0}, "beta"), ("taco", {"beta": -0.1}, "beta"),
    ("taco", {"beta": NAN}, "beta"), ("taco", {"beta": None}, "beta"),
    ("taco", {"burn_in_steps": -1}, "burn_in_steps"),
    ("taco", {"burn_in_steps": 10.0}, "burn_in_steps"),
    ("taco", {"burn_in_steps": True}, "burn_in_steps"),
    ("taco", {"median": "mean"}, "median"), ("taco", {"median": None}, "median"),
    ("taco", {"num_tasks": 0}, "num_tasks"), ("taco", {"num_tasks": True}, "num_tasks"),
    ("taco", {"num_tasks": 3.0}, "num_tasks"),
    ("taco", {"sample_size": 0}, "sample_size"), ("taco", {"sample_size": 1e5}, "sample_size"),
    ("taco", {"seed": -1}, "seed"), ("taco", {"seed": 0.5}, "seed"),
    ("taco", {"eps": 0.0}, "eps"), ("taco", {"eps": NAN}, "eps"), ("taco", {"eps": -1e-12}, "eps"),
    ("taco", {"divide_by_k": 1}, "divide_by_k"),
    ("taco", {"normalize_after_ema": "yes"}, "normalize_after_ema"),
    ("taco", {"burn_in_weights": "mean"}, "burn_in_weights"),
    ("taco", {"tau_schedule": 2.0}, "tau_schedule"),
    ("taco", {"zero_median": "zero"}, "zero_median"),
    ("taco", {"median_thresholds": 16}, "median_thresholds"),
    ("taco", {"median_thresholds": True}, "median_thresholds"),
    # pcgrad
    ("pcgrad", {"seed": -1}, "seed"), ("pcgrad", {"seed": 1.0}, "seed"),
    ("pcgrad", {"reduction": "max"}, "reduction"), ("pcgrad", {"shuffle": 0}, "shuffle"),
    ("pcgrad", {"num_tasks": 0}, "num_tasks"), ("pcgrad", {"num_tasks": False}, "num_tasks"),
    ("pcgrad", {"eps": 0.0}, "eps"), ("pcgrad", {"eps": INF}, "eps"),
    # cgd
    ("cgd", {"num_tasks": None}, "num_tasks"), ("cgd", {"num_tasks": 0}, "num_tasks"),
    ("cgd", {"num_tasks": True}, "num_tasks"), ("cgd", {"num_tasks": 3.0}, "num_tasks"),
    ("cgd", {"step_size": -0.1}, "step_size"), ("cgd", {"step_size": NAN}, "step_size"),
    ("cgd", {"use_task_losses": 1}, "use_task_losses"),
    ("cgd", {"loss_power": -0.5}, "loss_power"), ("cgd", {"loss_power": INF}, "loss_power"),
    ("cgd", {"normalize_grads": None}, "normalize_grads"),
    ("cgd", {"min_weight": 1.0}, "min_weight"), ("cgd", {"min_weight": -0.1}, "min_weight"),
    ("cgd", {"eps": 0.0}, "eps"),
    ("cgd", {"param_filter": 3}, "param_filter"), ("cgd", {"param_filter": []}, "param_filter"),
    ("cgd", {"param_filter": ["dense", "("]}, "param_filter"),
    # gradnorm
    ("gradnorm", {"num_tasks": None}, "num_tasks"), ("gradnorm", {"num_tasks": -1}, "num_tasks"),
    ("gradnorm", {"alpha": -1.0}, "alpha"), ("gradnorm", {"alpha": NAN}, "alpha"),
    ("gradnorm", {"lr_w": 0.0}, "lr_w"), ("gradnorm", {"lr_w": -0.1}, "lr_w"),
    ("gradnorm", {"lr_w": INF}, "lr_w"),
    ("gradnorm", {"weight_optimizer": "adam"}, "weight_optimizer"),
    ("gradnorm", {"min_weight": 1.0}, "min_weight"),
    ("gradnorm", {"min_weight": -1e-4}, "min_weight"),
    ("gradnorm", {"reduction": "max"}, "reduction"),
    ("gradnorm", {"param_filter": "("}, "param_filter"),
    # naive
    ("naive", {"weights": []}, "weights"), ("naive", {"weights": [1.0, -1.0, 1.0]}, "weights"),
    ("naive", {"weights": [0, 0, 0]}, "weights"),
    ("naive", {"weights": [1.0, NAN, 1.0]}, "weights"),
    ("naive", {"weights": [[1.0, 2.0]]}, "weights"), ("naive", {"weights": "abc"}, "weights"),
    ("naive", {"weights": [1.0, 1.0], "num_tasks": K}, "weights"),
    ("naive", {"weights": [1.0, 1.0, 1.0], "by_task_counts": True}, "weights"),
    ("naive", {"by_task_counts": 1}, "by_task_counts"),
    ("naive", {"num_tasks": 0}, "num_tasks"), ("naive", {"num_tasks": "3"}, "num_tasks"),
]


def _ids(case):
    return f"{case[0]}-{case[2]}-{case[1][case[2]]!r}"


@pytest.mark.parametrize("case", BAD, ids=[_ids(c) for c in BAD])
def test_bad_hyper_parameter_raises_naming_method_argument_and_value(case):
    method, bad, arg = case
    kwargs = {**REQUIRED[method], **bad}
    with pytest.raises(ValueError) as err:
        multitask.get_method(method, **kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{method}: {arg} must be "), msg
    assert msg.endswith(f"got {bad[arg]!r}") or f"got {bad[arg]!r}" in msg, msg
    # and directly through the constructor, not only through the registry
    with pytest.raises(ValueError, match=f"^{method}: {arg} must be "):
        multitask.METHODS[method](**kwargs)


def test_every_constructor_argument_is_checked():
    """The table above covers every argument of every registered method."""
    covered = {(m, a) for m, _, a in BAD}
    for name, ctor in multitask.METHODS.items():
        for arg in inspect.signature(ctor).parameters:
            assert (name, arg) in covered, f"{name}({arg}=...) has no bad-value case"


def test_example_messages():
    with pytest.raises(ValueError, match=r"^taco: tau must be a finite number > 0, got 0\.0$"):
        multitask.taco(tau=0.0)
    with pytest.raises(ValueError, match=r"^taco: beta must be a finite number in \[0, 1\), "
                                         r"got 1\.0$"):
        multitask.taco(beta=1.0)
    with pytest.raises(ValueError, match=r"^cgd: num_tasks must be an int >= 1, got None$"):
        multitask.cgd(num_tasks=None)
    with pytest.raises(ValueError, match=r"^pcgrad: reduction must be one of \('sum', "
                                         r"'mean'\), got 'max'$"):
        multitask.pcgrad(reduction="max")


@pytest.mark.parametrize("method,kwargs", [
    ("taco", {"tau": 1e-3, "beta": 0.0, "burn_in_steps": np.int64(5), "num_tasks": np.int32(2),
              "eps": np.float32(1e-12), "divide_by_k": np.bool_(True), "sample_size": 1,
              "tau_schedule": optax.constant_schedule(2.0)}),
    ("taco", {"tau": np.float64(2.0), "beta": np.asarray(0.5), "seed": 0}),
    ("pcgrad", {"seed": 0, "eps": 1e-30, "num_tasks": 1, "shuffle": False}),
    ("cgd", {"num_tasks": 1, "step_size": 0, "loss_power": 0.0, "min_weight": 0.0,
             "param_filter": ("dense", "emb")}),
    ("cgd", {"num_tasks": K, "param_filter": lambda path: True}),
    ("gradnorm", {"num_tasks": K, "alpha": 0, "min_weight": 0.0,
                  "weight_optimizer": optax.sgd(0.1), "param_filter": "dense"}),
    ("naive", {"weights": np.asarray([1, 0, 2]), "num_tasks": K}),
    ("naive", {"by_task_counts": True, "num_tasks": None}),
])
def test_edge_values_are_accepted(method, kwargs):
    assert isinstance(multitask.get_method(method, **{**REQUIRED[method], **kwargs}),
                      optax.GradientTransformationExtraArgs)


# -------------------------------------------------------------------------- registry, gin

def test_unknown_method_and_argument():
    with pytest.raises(KeyError, match="unknown multitask method 'nope'"):
        multitask.get_method("nope")
    with pytest.raises(ValueError, match="unknown multitask method 'nope'"):
        multitask.get_method("nope")
    with pytest.raises(ValueError, match=r"^taco: unknown argument\(s\) \['taus'\]; allowed"):
        multitask.get_method("taco", taus=2.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"options": {"burn_in_fraction": 1.5}, "total_steps": 100},
     r"burn_in_fraction must be a finite number in \[0, 1\], got 1\.5"),
    ({"options": {"burn_in_fraction": -0.1}, "total_steps": 100},
     r"burn_in_fraction must be a finite number in \[0, 1\], got -0\.1"),
    ({"options": {"burn_in_fraction": NAN}, "total_steps": 100}, r"burn_in_fraction .* got nan"),
    ({"options": {"burn_in_fraction": "0.1"}, "total_steps": 100},
     r"burn_in_fraction .* got '0\.1'"),
    ({"options": {"burn_in_fraction": 0.1}}, r"total_steps"),
    ({"options": {"burn_in_fraction": 0.1}, "total_steps": 0}, r"total_steps .* got 0"),
    ({"options": {"burn_in_fraction": 0.1, "burn_in_steps": 3}, "total_steps": 100},
     r"both burn_in_fraction \(0\.1\) and burn_in_steps \(3\)"),
    ({"options": {"burn_in_fraction": 0.1}, "total_steps": 100, "method": "pcgrad"},
     r"burn_in_fraction is an option of methods with burn_in_steps .*not of pcgrad"),
    ({"options": "tau=2"}, r"options must be None or a dict"),
    ({"options": {"num_tasks": 3}}, r"num_tasks must be given as multitask.num_tasks"),
    ({"options": {"tau": 0.0}}, r"^taco: tau must be a finite number > 0, got 0\.0\b"),
    ({"options": {"bogus": 1}}, r"^taco: unknown argument\(s\) \['bogus'\]"),
    ({"num_tasks": 0}, r"num_tasks must be None or an int >= 1, got 0"),
])
def test_build_method_checks(kwargs, match):
    kwargs = {"method": "taco", "num_tasks": K, **kwargs}
    with pytest.raises(ValueError, match=match):
        multitask.build_method(**kwargs)


def test_build_method_burn_in_fraction_bounds_are_accepted():
    for fraction, steps in ((0.0, 0), (1.0, 40), (0.1, 4)):
        tx = multitask.build_method("taco", num_tasks=K, total_steps=40,
                                    options={"burn_in_fraction": fraction})
        assert isinstance(tx, optax.GradientTransformationExtraArgs), steps


# ------------------------------------------------------------------------ non-finite guard

SHAPES = {"dense": {"kernel": (4, 5), "bias": (5,)}, "emb": (6, 2), "scale": ()}

# (id, method, kwargs, reads_params, reads_losses, reads_counts)
CONFIGS = [
    ("naive", "naive", {"num_tasks": K}, False, False, False),
    ("naive-counts", "naive", {"by_task_counts": True}, False, False, True),
    ("naive-weights", "naive", {"weights": [1.0, 2.0, 0.5]}, False, False, False),
    ("taco", "taco", {"num_tasks": K, "tau": 0.5, "beta": 0.9}, True, False, False),
    ("taco-burn-in", "taco", {"num_tasks": K, "burn_in_steps": 100}, True, False, False),
    ("taco-sort-after-ema", "taco", {"num_tasks": K, "median": "sort",
                                     "normalize_after_ema": True, "zero_median": "eps"},
     True, False, False),
    ("taco-approx", "taco", {"num_tasks": K, "median": "approx", "sample_size": 16,
                             "divide_by_k": True}, True, False, False),
    ("pcgrad", "pcgrad", {"num_tasks": K}, False, False, False),
    ("cgd", "cgd", {"num_tasks": K, "min_weight": 0.01}, False, True, False),
    ("cgd-no-losses", "cgd", {"num_tasks": K, "use_task_losses": False}, False, False, False),
    ("gradnorm", "gradnorm", {"num_tasks": K}, False, True, False),
    ("gradnorm-mean-sgd", "gradnorm", {"num_tasks": K, "reduction": "mean",
                                       "weight_optimizer": optax.sgd(0.1, momentum=0.9)},
     False, True, False),
]


def _tree(rng, k=None, scale=1.0):
    lead = () if k is None else (k,)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal(lead + s), jnp.float32), SHAPES,
        is_leaf=lambda x: isinstance(x, tuple))


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return {"grads": _tree(rng, K), "params": _tree(rng),
            "task_losses": jnp.asarray(rng.uniform(0.5, 2.0, K), jnp.float32),
            "task_counts": jnp.asarray([3.0, 1.0, 4.0], jnp.float32)}


def _poison(inputs, where, value):
    """A copy of ``inputs`` with ``value`` at one element of one task (or of params)."""
    out = dict(inputs)
    if where == "grads":  # task 1 only, one element of one leaf
        g = dict(inputs["grads"])
        g["dense"] = {**g["dense"], "kernel": g["dense"]["kernel"].at[1, 2, 3].set(value)}
        out["grads"] = g
    elif where == "params":
        p = dict(inputs["params"])
        p["emb"] = p["emb"].at[4, 1].set(value)
        out["params"] = p
    else:  # task_losses / task_counts
        out[where] = inputs[where].at[1].set(value)
    return out


def _finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _expect_skipped(method, before, after):
    """``after`` is ``before`` except TACO's ``skipped`` counter, one higher."""
    if method == "taco":
        assert int(after.skipped) == int(before.skipped) + 1
        after = after._replace(skipped=before.skipped)
    _assert_tree_equal(after, before)


def _update_fn(tx):
    def update(state, inp):
        return tx.update(inp["grads"], state, inp["params"], task_losses=inp["task_losses"],
                         task_counts=inp["task_counts"])
    return jax.jit(update)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_non_finite_inputs_never_reach_state_or_update(cfg):
    _, method, kwargs, reads_params, reads_losses, reads_counts = cfg
    tx = multitask.get_method(method, **kwargs)
    update = _update_fn(tx)
    clean = [_inputs(s) for s in range(4)]
    state = tx.init(clean[0]["params"])
    for inp in clean[:2]:  # a non-trivial state first (EMA, alpha, weights, L(0), key)
        _, state = update(state, inp)
    ref_update, ref_state = update(state, clean[2])
    assert _finite(ref_update) and _finite(ref_state)

    sources = [("grads", True), ("params", reads_params), ("task_losses", reads_losses),
               ("task_counts", reads_counts)]
    for where, read in sources:
        for value in (NAN, INF, -INF):
            u, s = update(state, _poison(clean[2], where, value))
            assert _finite(u) and _finite(s), (where, value)
            if read:  # skipped: zero update, previous state
                assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
                _expect_skipped(method, state, s)
            else:  # an input this method does not read changes nothing
                _assert_tree_equal(u, ref_update)
                _assert_tree_equal(s, ref_state)

    # After a skipped step the run goes on as if the bad step had never happened.
    _, s_bad = update(state, _poison(clean[2], "grads", NAN))
    if method == "taco":
        s_bad = s_bad._replace(skipped=state.skipped)
    _assert_tree_equal(update(s_bad, clean[2]), (ref_update, ref_state))


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_non_finite_inputs_eager(cfg):
    """The same guard outside jit (a user calling ``tx.update`` directly)."""
    _, method, kwargs, *_ = cfg
    tx = multitask.get_method(method, **kwargs)
    inp = _inputs(7)
    state = tx.init(inp["params"])
    bad = _poison(inp, "grads", NAN)
    u, s = tx.update(bad["grads"], state, bad["params"], task_losses=bad["task_losses"],
                     task_counts=bad["task_counts"])
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
    _expect_skipped(method, state, s)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_overflow_inside_a_step_is_skipped(cfg):
    """Finite inputs whose step overflows float32 (|g * theta|, the Gram matrix, or the
    weighted sum reach inf) are skipped like non-finite inputs."""
    _, method, kwargs, *_ = cfg
    if method == "naive" and "weights" not in kwargs:
        pytest.skip("weights summing to 1 cannot overflow a sum of finite gradients")
    tx = multitask.get_method(method, **kwargs)
    update = _update_fn(tx)
    inp = _inputs(3)
    state = tx.init(inp["params"])
    _, state = update(state, inp)
    if method == "naive":  # weights sum to 3.5: 3.5 * 3e38 overflows
        grads = jax.tree_util.tree_map(lambda g: jnp.full(g.shape, 3e38, g.dtype), inp["grads"])
        huge = dict(inp, grads=grads)
    else:
        huge = dict(inp, grads=jax.tree_util.tree_map(lambda g: g * 1e25, inp["grads"]),
                    params=jax.tree_util.tree_map(lambda p: p * 1e25, inp["params"]))
    assert _finite(huge)
    u, s = update(state, huge)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
    _expect_skipped(method, state, s)


def test_naive_zero_task_counts_skip():
    tx = multitask.naive(by_task_counts=True)
    inp = _inputs(1)
    state = tx.init(None)
    u, s = tx.update(inp["grads"], state, None, task_counts=jnp.zeros((K,)))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
    assert int(s.count) == 0


@pytest.mark.parametrize("tau", [0.0, -1.0, NAN, INF])
def test_taco_bad_scheduled_temperature_skips(tau):
    """A ``tau_schedule`` value that is non-finite or <= 0 skips the step."""
    sched = lambda step: jnp.where(step >= 1, tau, 1.0)  # noqa: E731
    tx = multitask.taco(num_tasks=K, tau_schedule=sched)
    update = _update_fn(tx)
    inp = _inputs(2)
    state = tx.init(inp["params"])
    u0, s1 = update(state, inp)
    assert int(s1.step) == 1 and _finite(u0) and any(
        np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(u0))
    u1, s2 = update(s1, inp)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u1))
    _expect_skipped("taco", s1, s2)


def test_guard_in_an_optax_chain_keeps_params_finite():
    """A user's loop: chain(multitask, adamw) fed one NaN gradient keeps finite params."""
    for _, name, kwargs, *_ in CONFIGS:
        tx = optax.chain(multitask.get_method(name, **kwargs), optax.adamw(1e-2))
        inp = _inputs(4)
        params, state = inp["params"], tx.init(inp["params"])
        for step in range(3):
            g = _poison(inp, "grads", NAN)["grads"] if step == 1 else inp["grads"]
            u, state = tx.update(g, state, params, task_losses=inp["task_losses"],
                                 task_counts=inp["task_counts"])
            params = optax.apply_updates(params, u)
        assert _finite(params) and _finite(state), name
        assert math.isfinite(float(optax.global_norm(params)))
