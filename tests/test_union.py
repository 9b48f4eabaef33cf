"""Union batching (MT-DPR): batches from the union of the tasks' examples, one NCE over the
whole mixed batch, checked against a numpy NCE written here from the paper's definition."""

import textwrap
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.data.batching import build_step_batch
from multiret_jax.data.union import UnionSampler, union_batch
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.training.step import init_train_state, make_train_step, make_union_loss
from test_train_step import (LOSS_TOL, MODEL_OVERRIDES, NEGATIVES, PARAM_TOL, PASSAGE_LEN,
                             QUERY_LEN, MiniData)

ROWS = 24  # 20 examples per step, padded to a multiple of 8


def test_union_sampler_draws_every_example_once_per_epoch():
    sizes = {"a": 7, "b": 20, "c": 3}
    sampler = UnionSampler(sizes, 4, seed=1)
    assert sampler.steps_per_epoch == 8  # ceil(30 / 4)
    seen = Counter()
    for step in range(8):
        batch = sampler.batch(step)
        assert list(batch) == ["a", "b", "c"] and sum(len(v) for v in batch.values()) == 4
        if step < 7:  # steps 0-6: 28 positions of epoch 0
            seen.update((t, int(i)) for t, idx in batch.items() for i in idx)
    assert max(seen.values()) == 1 and len(seen) == 28
    positions = np.concatenate([sampler.positions(s) for s in range(8)])
    assert sorted(positions[:30]) == list(range(30))  # epoch 0 is a permutation of the union
    # step 7 crosses into epoch 1; a fresh sampler gives the same batches (stateless resume)
    again = UnionSampler(sizes, 4, seed=1)
    for step in (7, 3, 12):
        for t in sizes:
            np.testing.assert_array_equal(again.batch(step)[t], sampler.batch(step)[t])
    # a task's share of an epoch is its share of the union
    counts = Counter()
    for step in range(30):  # 120 positions = 4 epochs
        counts.update({t: len(v) for t, v in UnionSampler(sizes, 4, seed=2).batch(step).items()})
    assert counts == {t: 4 * n for t, n in sizes.items()}
    with pytest.raises(ValueError, match="needs >= 1 example"):
        UnionSampler({"a": 0}, 4)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return MiniData(str(tmp_path_factory.mktemp("minikilt")))


def _union(mini, step=0):
    sampler = UnionSampler({t: len(d.examples) for t, d in mini.data.items()}, 20, seed=0)
    per_task = build_step_batch(sampler.batch(step), mini.data, mini.tokenizer, mini.table,
                                PASSAGE_LEN, NEGATIVES, rng=np.random.default_rng([0, step]),
                                query_len=QUERY_LEN)
    return per_task, union_batch(per_task, ROWS, mini.tokenizer.pad_id)


def test_union_batch_keeps_every_row_and_names_its_task(mini):
    per_task, union = _union(mini)
    counts = per_task.task_counts
    assert counts.sum() == 20 and union.query_ids.shape == (1, ROWS, QUERY_LEN)
    assert Counter(union.row_tasks[0, :20].tolist()) == {k: int(c) for k, c in enumerate(counts) if c}
    assert (union.row_tasks[0, 20:] == -1).all() and union.query_mask[0].sum() == 20
    r = 0
    for k, c in enumerate(counts):
        for i in range(int(c)):
            for f in ("query_ids", "pos_ids", "neg_ids", "positive_rows", "negative_rows"):
                np.testing.assert_array_equal(getattr(union, f)[0, r], getattr(per_task, f)[k, i])
            r += 1
    assert (union.positive_rows[0, 20:] == -1).all() and (union.pos_mask[0, 20:] == 0).all()
    assert (union.query_ids[0, 20:] == mini.tokenizer.pad_id).all()


def _reference_nce(q, pos, neg, pos_rows, neg_rows, real):
    """-log softmax of each real query's positive among ALL the batch's positives and hard
    negatives (every task's), a candidate that is the query's own positive passage drawn
    for another row not counted as a negative; mean over real queries."""
    b, h, d = neg.shape
    cands = np.concatenate([pos[real], neg[real].reshape(-1, d)])
    ids = np.concatenate([pos_rows[real], neg_rows[real].reshape(-1)])
    ok = np.concatenate([np.ones(real.sum(), bool), (neg_rows[real] >= 0).reshape(-1)])
    nll = []
    for i, qi in enumerate(q[real]):
        keep = ok & ((ids != pos_rows[real][i]) | (np.arange(len(ids)) == i))
        logits = cands[keep] @ qi
        own = int(np.flatnonzero(np.flatnonzero(keep) == i)[0])
        nll.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[own])
    return np.asarray(nll)


@pytest.mark.parametrize("towers", [None, ["fever", "trex", "nq"]])
def test_union_loss_is_one_nce_over_the_mixed_batch(mini, towers):
    """Every query scored against every positive and hard negative of the batch, across
    tasks; example-weighted mean; each row through its own task's query tower."""
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False,
                                       query_towers=towers, config_overrides=MODEL_OVERRIDES)
    per_task, union = _union(mini)
    task_objs = [mini.data[t].task for t in per_task.tasks]
    tower_of = np.asarray([model.tower_index(t) for t in task_objs], np.int32)
    arrays = {k: jnp.asarray(v) for k, v in union.arrays().items()}
    (loss, per_task_loss), grads = jax.jit(make_union_loss(model, tower_of))(
        params, arrays, jax.random.PRNGKey(0))
    a = union
    real = a.query_mask[0].astype(bool)
    q = None
    for t in set(tower_of.tolist()):
        emb = np.asarray(model.encode_queries(params, a.query_ids[0], a.query_mask_tokens[0],
                                              tower=t))
        rows = tower_of[np.maximum(a.row_tasks[0], 0)] == t
        q = np.zeros_like(emb) if q is None else q
        q[rows] = emb[rows]
    pos = np.asarray(model.encode_passages(params, a.pos_ids[0], a.pos_mask[0]))
    neg = np.asarray(model.encode_passages(params, a.neg_ids[0].reshape(-1, PASSAGE_LEN),
                                           a.neg_mask[0].reshape(-1, PASSAGE_LEN)))
    nll = _reference_nce(q, pos, neg.reshape(ROWS, NEGATIVES, -1), a.positive_rows[0],
                         a.negative_rows[0], real)
    np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-5, atol=1e-5)
    rows_task = a.row_tasks[0][real]
    for k in range(len(task_objs)):
        if (rows_task == k).any():
            np.testing.assert_allclose(float(per_task_loss[k]), nll[rows_task == k].mean(),
                                       rtol=1e-5, atol=1e-5)
    # in-batch negatives across tasks: scoring within each task alone gives another loss
    within = np.concatenate([
        _reference_nce(q, pos, neg.reshape(ROWS, NEGATIVES, -1), a.positive_rows[0],
                       a.negative_rows[0], real & (a.row_tasks[0] == k))
        for k in range(len(task_objs)) if (rows_task == k).any()])
    assert abs(within.mean() - nll.mean()) > 1e-2
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.slow  # 28 s: two more compilations of the step
def test_union_train_step_with_the_gradient_cache_equals_the_plain_one(mini):
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False,
                                       config_overrides=MODEL_OVERRIDES)
    params = jax.tree_util.tree_map(np.asarray, params)  # host copies: the step donates
    _, union = _union(mini, step=1)
    towers = jnp.zeros((3,), jnp.int32)
    tx = optax.chain(multitask.naive(num_tasks=1), optax.sgd(0.5))
    out = []
    for chunk in (None, 8):
        step = make_train_step(model, tx, towers, batching="union", grad_cache_chunk=chunk)
        state, losses = step(init_train_state(params, tx), union.arrays())
        out.append((jax.tree_util.tree_leaves(state["params"]), np.asarray(losses)))
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5, atol=1e-6)
    scale = max(float(np.abs(np.asarray(a) - np.asarray(p)).max())
                for a, p in zip(out[0][0], jax.tree_util.tree_leaves(params)))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_allclose(a, b, atol=1e-4 * scale)


UNION_MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from multiret_jax import multitask, partitioning
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training.step import (batch_shardings, init_train_state, make_train_step,
                                            put_batch, state_shardings)
    assert jax.device_count() == 8, jax.devices()
    z = np.load(BATCH_FILE)
    batches = [{k[:-2]: z[k] for k in z.files if k.endswith(f"_{i}")} for i in range(2)]
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False,
                                       config_overrides=MODEL_OVERRIDES)
    params = jax.tree_util.tree_map(np.asarray, params)
    towers = jnp.zeros((3,), jnp.int32)
    tx = optax.chain(multitask.naive(num_tasks=1), optax.sgd(1.0, momentum=0.9))
    leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)]

    def run(mesh=None):
        state = init_train_state(jax.tree_util.tree_map(jnp.array, params), tx, seed=0)
        kw, b_sh = {}, None
        if mesh is not None:
            s_sh = state_shardings(state, mesh)
            b_sh = batch_shardings(batches[0], mesh)
            state = jax.device_put(state, s_sh)
            kw = dict(mesh=mesh, state_sharding=s_sh, batch_sharding=b_sh)
        step = make_train_step(model, tx, towers, batching="union", **kw)
        losses = []
        for b in batches:
            placed = put_batch(b, b_sh)
            if mesh is not None:  # the union rows really split: 3 per device
                assert all(sh.data.shape[1] == 3 for sh in placed["query_ids"].addressable_shards)
                assert all(sh.data.shape[1] == 3 for sh in placed["row_tasks"].addressable_shards)
            state, tl = step(state, placed)
            losses.append(np.asarray(tl))
        assert int(state["skipped"]) == 0
        return np.stack(losses), leaves(state["params"])

    ref_losses, ref = run()
    losses, got = run(partitioning.make_mesh(1))
    scale = max(np.max(np.abs(a - b)) for a, b in zip(ref, leaves(params)))
    loss_err = float(np.max(np.abs(losses - ref_losses)))
    err = max(np.max(np.abs(a - b)) for a, b in zip(got, ref)) / scale
    print("union loss err", loss_err, "param err / largest update", err)
    assert loss_err < LOSS_TOL and err < PARAM_TOL, (loss_err, err)
    print("UNION_MESH_OK")
""")


@pytest.mark.slow  # 90 s; test_sharded_state.py checks a sharded step on 8 devices by default
def test_union_step_on_8_devices_equals_one_device(mini, tmp_path, run_on_8_devices):
    """Cross-device negatives: the union batch's rows split over 8 data-parallel devices,
    every query still scored against the whole batch (the loss is written for the global
    batch), so two steps equal one device's."""
    arrays = {}
    for i in range(2):
        _, union = _union(mini, step=i)
        arrays.update({f"{k}_{i}": v for k, v in union.arrays().items()})
    path = tmp_path / "union.npz"
    np.savez(path, **arrays)
    head = (f"BATCH_FILE = {str(path)!r}\nLOSS_TOL = {LOSS_TOL!r}\nPARAM_TOL = {PARAM_TOL!r}\n"
            f"MODEL_OVERRIDES = {MODEL_OVERRIDES!r}\n")
    out = run_on_8_devices(head + UNION_MESH_SCRIPT, "UNION_MESH_OK")
    assert "union loss err" in out
