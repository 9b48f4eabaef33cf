"""Checkpointer (orbax) round trips, retention, architecture mismatch; ScalarLogger."""

from __future__ import annotations

import glob
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.training.checkpointing import Checkpointer, UnreadableCheckpoint
from multiret_jax.training.scalars import ScalarLogger, write_summary


def _params(hidden=4):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"encoder": {"dense": {"kernel": jax.random.normal(k1, (3, hidden)),
                                  "bias": jnp.arange(hidden, dtype=jnp.float32)}},
            "proj": jax.random.normal(k2, (hidden, 2)).astype(jnp.bfloat16)}


def _state(hidden=4, steps=2):
    params = _params(hidden)
    tx = optax.chain(multitask.taco(num_tasks=2), optax.adamw(1e-3))
    opt_state = tx.init(params)
    for i in range(steps):  # non-trivial EMA / moments
        g = jax.tree_util.tree_map(
            lambda p: jnp.stack([jnp.ones_like(p) * (i + 1), -jnp.ones_like(p) * 0.5]), params)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(steps, jnp.int32),
            "rng": jax.random.PRNGKey(7)}


def _assert_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_bitwise_and_types(tmp_path):
    state = _state()
    meta = {"sampler": {"step": 123}, "model": {"hidden": 4, "name": "toy"},
            "passages_sha256": "abc123"}
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    ckpt.save(2, state, meta)
    ckpt.wait()
    assert ckpt.latest_step() == 2
    # abstract target (eval_shape) and concrete target both work
    for target in (jax.eval_shape(lambda: state), state):
        restored, rmeta = ckpt.restore(target=target)
        _assert_bitwise_equal(restored, state)
        assert rmeta == meta
        assert type(restored["opt_state"][0]) is multitask.TacoState
        assert type(restored["opt_state"][1]) is type(state["opt_state"][1])
        assert isinstance(restored["params"]["proj"], jax.Array)
    ckpt.close()


def test_restore_honours_sharding(tmp_path):
    state = _state()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {})
        restored, _ = ckpt.restore(1, target)
    assert restored["params"]["proj"].sharding == sharding
    _assert_bitwise_equal(restored, state)


def test_keep_latest(tmp_path):
    state = _state(steps=0)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for s in (1, 2, 3, 4):
            ckpt.save(s, state, {"sampler": {"step": s}})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step() == 4
        _, meta = ckpt.restore(target=state)
        assert meta == {"sampler": {"step": 4}}
        _, meta = ckpt.restore(3, target=state)
        assert meta == {"sampler": {"step": 3}}


@pytest.mark.parametrize("mode,best", [("max", 2), ("min", 1)])
def test_best_kept(tmp_path, mode, best):
    state = _state(steps=0)
    scores = {1: 0.1, 2: 0.9, 3: 0.5, 4: 0.6, 5: 0.7}
    with Checkpointer(tmp_path, keep=2, best_metric="mrr", best_mode=mode) as ckpt:
        for s, v in scores.items():
            ckpt.save(s, state, {"s": s}, metrics={"mrr": v, "loss": 1.0})
        ckpt.wait()
        assert ckpt.all_steps() == sorted({best, 4, 5})
        assert ckpt.best_step() == best
        _, meta = ckpt.restore(ckpt.best_step(), target=state)
        assert meta == {"s": best}
    # reopening the directory sees the same steps
    with Checkpointer(tmp_path, keep=2, best_metric="mrr", best_mode=mode) as ckpt:
        assert ckpt.all_steps() == sorted({best, 4, 5})
        assert ckpt.best_step() == best


def test_shape_mismatch_names_parameter(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(hidden=4, steps=0), {})
        ckpt.wait()
        other = jax.eval_shape(lambda: _state(hidden=8, steps=0))
        with pytest.raises(ValueError) as e:
            ckpt.restore(target=other)
        msg = str(e.value)
        assert "params/encoder/dense/bias" in msg or "params/encoder/dense/kernel" in msg
        assert "(4,)" in msg and "(8,)" in msg or "(3, 4)" in msg and "(3, 8)" in msg

        # a different tree structure (missing / extra parameter)
        bigger = _state(steps=0)
        bigger["params"]["head"] = jnp.zeros((2,))
        with pytest.raises(ValueError, match="params/head"):
            ckpt.restore(target=jax.eval_shape(lambda: bigger))
        smaller = _state(steps=0)
        del smaller["params"]["proj"]
        smaller["opt_state"] = jax.eval_shape(
            lambda: optax.chain(multitask.taco(num_tasks=2),
                                optax.adamw(1e-3)).init(smaller["params"]))
        with pytest.raises(ValueError, match="proj"):
            ckpt.restore(target=jax.eval_shape(lambda: smaller))


def _read_tfrecords(path):
    from tensorboardX.proto import event_pb2
    events = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12  # length + its crc
        ev = event_pb2.Event()
        ev.ParseFromString(data[pos:pos + length])
        events.append(ev)
        pos += length + 4  # data + its crc
    return events


def test_scalar_logger_and_summary(tmp_path):
    logdir = tmp_path / "tb"
    with ScalarLogger(str(logdir)) as log:
        log.log(1, {"loss/total": 0.5, "lr": np.float32(1e-3)})
        log.log(2, {"loss/total": jnp.asarray(0.25)})
        log.flush()
    files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    assert len(files) == 1
    got = {}
    for ev in _read_tfrecords(files[0]):
        for v in ev.summary.value:
            got[(v.tag, ev.step)] = v.simple_value
    assert set(got) == {("loss/total", 1), ("lr", 1), ("loss/total", 2)}
    assert got[("loss/total", 1)] == pytest.approx(0.5)
    assert got[("lr", 1)] == pytest.approx(1e-3)
    assert got[("loss/total", 2)] == pytest.approx(0.25)

    path = tmp_path / "out" / "summary.json"
    write_summary(str(path), {"mrr": np.float32(0.5), "recall": jnp.arange(2), "n": 3,
                              "bad": float("nan")})
    assert json.loads(path.read_text()) == {"mrr": 0.5, "recall": [0, 1], "n": 3,
                                            "bad": "nan"}


def test_reopened_manager_restores(tmp_path):
    state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(5)}
    with Checkpointer(tmp_path / "ck", keep=2) as ck:
        ck.save(5, state, {"sampler": {"step": 5}})
        ck.wait()
    again = Checkpointer(tmp_path / "ck", keep=2)  # a new process resuming
    restored, meta = again.restore(target=state)
    np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
    assert meta == {"sampler": {"step": 5}}
    again.close()


def _damage(step_dir) -> None:
    """Overwrites the array data files of a saved step (as a crash during a copy would)."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        if os.path.basename(root) == "d":
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"damaged")


def test_unreadable_latest_step_falls_back_to_the_previous_intact_one(tmp_path, caplog):
    """The latest step damaged: restore names it and its directory; restore_intact warns,
    restores the previous step, moves the damaged one aside (kept), and the run can save
    that step again."""
    directory = str(tmp_path / "ckpt")
    first, second = _state(steps=1), _state(steps=2)
    with Checkpointer(directory, keep=2) as ckpt:
        ckpt.save(1, first)
        ckpt.save(2, second)
        ckpt.wait()
    _damage(os.path.join(directory, "2"))
    with Checkpointer(directory, keep=2) as ckpt:
        with pytest.raises(UnreadableCheckpoint, match="step 2 is unreadable") as e:
            ckpt.restore(2, target=first)
        assert os.path.join(directory, "2") in str(e.value)
        with caplog.at_level("WARNING"):
            state, _, step = ckpt.restore_intact(target=first)
        assert step == 1 and "resuming from step 1" in caplog.text
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(first)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert os.path.isdir(os.path.join(directory, "2.unreadable"))
        assert ckpt.all_steps() == [1]
        ckpt.save(2, second)
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]


def test_no_intact_step_is_an_error_listing_each(tmp_path):
    directory = str(tmp_path / "ckpt")
    state = _state(steps=1)
    with Checkpointer(directory, keep=2) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)
        ckpt.wait()
    for step in ("1", "2"):
        _damage(os.path.join(directory, step))
    with Checkpointer(directory, keep=2) as ckpt:
        with pytest.raises(UnreadableCheckpoint) as e:
            ckpt.restore_intact(target=state)
    msg = str(e.value)
    assert "no intact checkpoint" in msg and "step 1" in msg and "step 2" in msg
    assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing moved when nothing is intact
