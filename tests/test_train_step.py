"""The jitted multi-task train step on the tiny BERT and a mini-KILT batch: data / model
parallel equals one device, vmap equals the unrolled per-task path, the gradient cache
equals the plain loss, padded rows change nothing, non-finite steps are skipped; plus the
TACO burn-in fraction and mean pooling with L2 normalisation."""

import dataclasses
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.batching import build_step_batch
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.mixing import MixingSampler
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import benchmark_tasks
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.models import bert, pooling
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.training.inputs import load_task_data
from multiret_jax.training.step import init_train_state, make_train_step, task_shapes_of

TASKS = ("fever", "trex", "nq")  # K = 3
K = len(TASKS)
QUERY_LEN, PASSAGE_LEN, NEGATIVES, GLOBAL_BATCH = 32, 32, 1, 20
# A 300-token vocabulary (BERT-tiny's own is 1000): with 1000 rows, ~47% of the gradient
# elements of a 20-query batch are exactly 0 (unused embedding rows), so TACO's median
# normaliser falls on near-zero gradients and amplifies float32 noise (see MESH_SCRIPT).
VOCAB = 300
MODEL_OVERRIDES = {"dropout_rate": 0.0, "attention_dropout_rate": 0.0, "vocab_size": VOCAB}


class MiniData:
    """Mini-KILT training data for ``TASKS`` wired as in ``train.py``."""

    def __init__(self, directory):
        minikilt.generate(directory, scale=0.3, seed=0)
        tasks = benchmark_tasks(directory, "train", TASKS)
        # trex gets its own shorter query length, so the unrolled path slices queries too.
        tasks = [dataclasses.replace(t, max_query_len=16) if t.name == "trex" else t
                 for t in tasks]
        self.table = PassageTable.from_pages(kilt.iter_knowledge_source(
            os.path.join(directory, "knowledge_source.jsonl")), mode="page")
        bm25 = BM25Cache(os.path.join(directory, ".bm25_cache"), self.table, progress=False)
        self.data, _ = load_task_data(directory, self.table, tasks, bm25, NEGATIVES, 0.5)
        self.tokenizer = Tokenization.train_wordlevel(self.table.contents(), VOCAB)
        self.sampler = MixingSampler({t: len(d.examples) for t, d in self.data.items()},
                                     GLOBAL_BATCH, c=4.0, seed=0)

    def batch(self, step, row_multiple=8):
        return build_step_batch(self.sampler.batch(step), self.data, self.tokenizer, self.table,
                                PASSAGE_LEN, NEGATIVES, rng=np.random.default_rng([0, step]),
                                query_len=QUERY_LEN, row_multiple=row_multiple)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return MiniData(str(tmp_path_factory.mktemp("minikilt")))


@pytest.fixture(scope="module")
def tiny():
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False,
                                       config_overrides=MODEL_OVERRIDES)
    return model, jax.tree_util.tree_map(np.asarray, params)


# Tolerances.  Losses: 1e-5 absolute.  Parameters: relative to the largest parameter update
# of the reference run.  Changing the program's shapes (padding, slicing, sharding) changes
# float32 summation order; the embedding gradients (sums over every token of the batch, with
# cancellation) then differ by up to ~3e-5 of the largest gradient after one step and ~8e-5
# after two (measured on this batch), so 1e-5 is below float32 noise here.  A real fault
# (local-only negatives, a padded row used as a candidate, a wrong query slice) moves the
# losses by O(0.1) and the parameters by O(1) of an update.
LOSS_TOL = 1e-5
PARAM_TOL = 2e-4
# TACO divides every sensitivity |g * theta| by their median, an element of ~5e-8 whose
# float32 noise is ~1e-4 relative; its EMA and update inherit that (measured 1.1e-4 / 1.4e-4
# on 8 devices; a mis-placed EMA or median would be O(1)).
TACO_TOL = 1e-3


def _tx(method="naive", **options):
    """The trainer's chain (multitask -> global-norm clipping -> optimizer) with momentum SGD
    as the optimizer: its update is linear in the gradients.  AdamW's first steps move each
    parameter by lr * g / (|g| + eps), which turns float32 rounding of near-zero gradients
    into O(lr) differences (measured: 1.4 x the largest update between two equal paths), so
    AdamW itself is only compared through its losses and first moment (``MESH_SCRIPT``).
    lr = 1 keeps float32 rounding of the parameters (1 ulp of 1.0 = 1.2e-7) far below the
    update (~0.03)."""
    mt = multitask.build_method(method, num_tasks=K, options=options or None)
    return optax.chain(mt, optax.clip_by_global_norm(1.0), optax.sgd(1.0, momentum=0.9))


def _run(model, params_np, batches, step=None, tx=None, **kw):
    """Steps from fresh copies of ``params_np``: (per-step losses, final state, step fn)."""
    tx = tx or _tx()
    step = step or make_train_step(model, tx, jnp.zeros((K,), jnp.int32), **kw)
    state = init_train_state(jax.tree_util.tree_map(jnp.array, params_np), tx, seed=0)
    losses = []
    for b in batches:
        state, tl = step(state, b.arrays())
        losses.append(np.asarray(tl))
    return np.stack(losses), state, step


def _param_err(params, ref, start, label=""):
    """Largest parameter difference, relative to the largest update of ``ref``."""
    leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)]
    diff = max(np.max(np.abs(a - b)) for a, b in zip(leaves(params), leaves(ref)))
    scale = max(np.max(np.abs(a - b)) for a, b in zip(leaves(ref), leaves(start)))
    assert scale > 0
    print(f"{label}: param err / largest update {diff / scale:.2e}")
    return float(diff / scale)


@pytest.fixture(scope="module")
def reference(mini, tiny):
    """Two steps on the vmap path, rows padded to 8: (batches, losses, params, (tx, step))."""
    model, params = tiny
    batches = [mini.batch(0), mini.batch(1)]
    tx = _tx()
    losses, state, step = _run(model, params, batches, tx=tx, per_task="vmap")
    return batches, losses, jax.tree_util.tree_map(np.asarray, state["params"]), (tx, step)


def test_reference_batch_is_realistic(reference):
    batches, losses, _, _ = reference
    b = batches[0]
    assert b.query_ids.shape == (K, 8, QUERY_LEN) and b.neg_ids.shape == (K, 8, 1, PASSAGE_LEN)
    assert list(b.task_query_lens) == [32, 16, 32]
    assert (b.task_counts < 8).any() and b.task_counts.min() > 0  # some padded rows
    assert np.all(np.isfinite(losses)) and losses.shape == (2, K)


@pytest.mark.slow  # 74 s; test_batching.py checks the vmapped padded loss by default
def test_unrolled_equals_vmap(mini, tiny, reference):
    model, params = tiny
    batches, want_losses, want_params, _ = reference
    shapes = task_shapes_of(batches[0].arrays(), batches[0].task_query_lens)
    assert shapes == tuple((int(c), int(q)) for c, q in
                           zip(batches[0].task_counts, batches[0].task_query_lens))
    assert shapes == task_shapes_of(batches[1].arrays(), batches[1].task_query_lens)
    losses, state, _ = _run(model, params, batches, per_task="unrolled", task_shapes=shapes)
    np.testing.assert_allclose(losses, want_losses, rtol=0, atol=LOSS_TOL)
    assert _param_err(state["params"], want_params, params, "unrolled") < PARAM_TOL
    # without task_shapes every task keeps the stacked (padded) shape: the same values
    losses, state, _ = _run(model, params, batches, per_task="unrolled")
    np.testing.assert_allclose(losses, want_losses, rtol=0, atol=LOSS_TOL)
    assert _param_err(state["params"], want_params, params, "unrolled, padded") < PARAM_TOL
    with pytest.raises(ValueError, match="unknown per_task"):
        make_train_step(model, _tx(), jnp.zeros((K,), jnp.int32), per_task="scan")


def test_task_shapes_round_rows_up():
    batch = {"task_counts": np.array([6, 0, 7, 3])}
    assert task_shapes_of(batch, np.array([32, 16, 8, 4]), row_multiple=4) == (
        (8, 32), (4, 16), (8, 8), (4, 4))


def test_gradient_cache_equals_plain_step(mini, tiny, reference):
    model, params = tiny
    batches, want_losses, want_params, _ = reference
    assert batches[0].query_ids.shape[1] % 4 == 0
    losses, state, _ = _run(model, params, batches, grad_cache_chunk=4)
    np.testing.assert_allclose(losses, want_losses, rtol=0, atol=LOSS_TOL)
    assert _param_err(state["params"], want_params, params, "grad cache") < PARAM_TOL


@pytest.mark.slow  # 20 s; test_batching.py::test_vmapped_padded_loss_equals_unpadded checks
# padding at the loss in the default suite
def test_padding_rows_change_nothing(mini, tiny, reference):
    model, params = tiny
    _, want_losses, want_params, _ = reference
    padded = [mini.batch(0, row_multiple=16), mini.batch(1, row_multiple=16)]
    assert padded[0].query_ids.shape[1] == 16
    losses, state, _ = _run(model, params, padded)
    np.testing.assert_allclose(losses, want_losses, rtol=0, atol=LOSS_TOL)
    assert _param_err(state["params"], want_params, params, "padded") < PARAM_TOL


def test_non_finite_step_is_skipped_and_counted(mini, tiny, reference):
    model, params = tiny
    tx, step = reference[3]  # the compiled reference step
    bad = jax.tree_util.tree_map(np.array, params)
    leaf = bad["passage"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    finite_value = leaf[5, 0].copy()
    leaf[5, 0] = np.nan
    state = init_train_state(jax.tree_util.tree_map(jnp.array, bad), tx, seed=0)
    before = jax.tree_util.tree_map(np.array, state)  # copies: the step donates the state
    batch = mini.batch(0).arrays()
    state, tl = step(state, batch)
    assert not np.all(np.isfinite(np.asarray(tl)))
    assert int(state["skipped"]) == 1 and int(state["step"]) == 1
    for key in ("params", "opt_state"):
        for a, b in zip(jax.tree_util.tree_leaves(state[key]),
                        jax.tree_util.tree_leaves(before[key])):
            np.testing.assert_array_equal(a, b)  # NaN where it was, nothing else moved
    # Repair the parameter: the next step is finite and applied.
    fixed = jax.tree_util.tree_map(np.array, state["params"])
    fixed["passage"]["bert"]["embeddings"]["word_embeddings"]["embedding"][5, 0] = finite_value
    state["params"] = jax.tree_util.tree_map(jnp.array, fixed)
    state, tl = step(state, batch)
    assert np.all(np.isfinite(np.asarray(tl)))
    assert int(state["skipped"]) == 1 and int(state["step"]) == 2
    moved = [not np.array_equal(a, b) for a, b in
             zip(jax.tree_util.tree_leaves(state["params"]), jax.tree_util.tree_leaves(fixed))]
    assert any(moved)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state["params"]))


def test_taco_burn_in_fraction_of_total_steps():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)}
    grads = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(3, 6, 5)), jnp.float32)}
    tx = multitask.build_method("taco", num_tasks=3, options={"burn_in_fraction": 0.1},
                                total_steps=50)
    state = tx.init(params)
    # A non-uniform EMA, so the weighted combination differs from the uniform mean.
    ema = {"w": jnp.asarray(np.random.default_rng(2).uniform(0, 20, size=(3, 6, 5)),
                            jnp.float32)}
    mean = np.asarray(grads["w"]).mean(0)

    def update_at(transform, step):
        s = transform.init(params)._replace(step=jnp.asarray(step, jnp.int32), ema=ema)
        return np.asarray(transform.update(grads, s, params)[0]["w"])

    assert int(state.step) == 0
    for step in (0, 4):  # burn-in: steps 0..4 (5 steps) use uniform weights
        np.testing.assert_allclose(update_at(tx, step), mean, rtol=1e-6, atol=1e-7)
    assert not np.allclose(update_at(tx, 5), mean, atol=1e-3)
    five = multitask.get_method("taco", num_tasks=3, burn_in_steps=5)
    for step in (4, 5, 6):
        np.testing.assert_array_equal(update_at(tx, step), update_at(five, step))
    with pytest.raises(ValueError, match="total_steps"):
        multitask.build_method("taco", num_tasks=3, options={"burn_in_fraction": 0.1})


def test_normalized_mean_pooling_unit_vectors():
    """Mean pooling + L2 normalisation (``build_biencoder(pooling="mean", normalize=True)``,
    the all-MiniLM-L6-v2 head) equals a NumPy masked mean divided by its norm; an
    all-padding row (zero mean) stays zero, finite, with finite gradients."""
    model, params, cfg = build_biencoder("bert", "bert_tiny", pooling="mean", normalize=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 900, size=(4, 10)).astype(np.int32)
    mask = np.ones((4, 10), np.int32)
    mask[1, 4:] = 0
    mask[3] = 0  # all padding
    ids = ids * mask
    got = np.asarray(model.encode_passages(params, jnp.asarray(ids), jnp.asarray(mask)))
    hidden = np.asarray(bert.BertEncoder(cfg).apply({"params": params["passage"]["bert"]},
                                                    jnp.asarray(ids), jnp.asarray(mask)),
                        np.float64)
    m = mask[..., None].astype(np.float64)
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
    np.testing.assert_allclose(np.asarray(pooling.mean_pool(jnp.asarray(hidden, jnp.float32),
                                                            jnp.asarray(mask))), mean, atol=1e-5)
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    want = mean / np.maximum(norm, 1e-12)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got[:3], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(got[3], 0.0)
    grads = jax.grad(lambda p: jnp.sum(model.encode_passages(p, jnp.asarray(ids),
                                                             jnp.asarray(mask))))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from multiret_jax import multitask, partitioning
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training.step import (batch_shardings, init_train_state, make_train_step,
                                            put_batch, state_shardings)
    assert jax.device_count() == 8, jax.devices()
    z = np.load(BATCH_FILE)
    K = int(z["task_counts_0"].shape[0])
    batches = [{k[:-2]: z[k] for k in z.files
                if k.endswith(f"_{i}") and not k.startswith("ref_")} for i in range(2)]
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False,
                                       config_overrides=MODEL_OVERRIDES)
    params = jax.tree_util.tree_map(np.asarray, params)
    towers = jnp.zeros((K,), jnp.int32)
    leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)]

    def rel_err(got, want, scale):
        return max(np.max(np.abs(a - b)) for a, b in zip(leaves(got), leaves(want))) / scale

    def split_leaves(tree):  # leaves whose shards hold different parts (not replicated)
        return sum(len({tuple((i.start, i.stop) for i in sh.index)
                        for sh in x.addressable_shards}) > 1
                   for x in jax.tree_util.tree_leaves(tree))

    def run(tx, mesh=None, param_sh=None):
        state = init_train_state(jax.tree_util.tree_map(jnp.array, params), tx, seed=0)
        kw, b_sh = {}, None
        if mesh is not None:
            s_sh = state_shardings(state, mesh, param_sh)
            b_sh = batch_shardings(batches[0], mesh)
            state = jax.device_put(state, s_sh)
            kw = dict(mesh=mesh, state_sharding=s_sh, batch_sharding=b_sh)
        step = make_train_step(model, tx, towers, **kw)
        losses = []
        for b in batches:
            placed = put_batch(b, b_sh)
            if mesh is not None:  # rows really split over the data axis, all 8 devices used
                for name, arr in placed.items():
                    assert len(arr.sharding.device_set) == 8, name
                    if arr.ndim >= 2:
                        rows = {(sh.index[1].start, sh.index[1].stop)
                                for sh in arr.addressable_shards}
                        assert len(rows) == mesh.shape["data"], (name, rows)
                        assert all(sh.data.shape[1] == arr.shape[1] // mesh.shape["data"]
                                   for sh in arr.addressable_shards), name
            state, tl = step(state, placed)
            losses.append(np.asarray(tl))
        assert int(state["skipped"]) == 0 and int(state["step"]) == 2
        if mesh is not None:
            assert all(len(x.sharding.device_set) == 8
                       for x in jax.tree_util.tree_leaves(state["params"]))
            if param_sh is not None:  # parameters split on "model"
                assert split_leaves(state["params"]) > 0
            # elementwise optimizer state (momentum, TACO's EMA) split over all devices
            opt_leaves = [x for x in jax.tree_util.tree_leaves(state["opt_state"])
                          if x.ndim >= 1 and x.size >= 64]
            assert all(len(x.sharding.device_set) == 8 for x in opt_leaves)
            assert split_leaves(opt_leaves) >= len(opt_leaves) // 2, split_leaves(opt_leaves)
        return np.stack(losses), jax.tree_util.tree_map(np.asarray, state)

    data8 = ("data8", partitioning.make_mesh(1), None)
    mp_mesh = partitioning.make_mesh(model_parallel=2)
    assert dict(mp_mesh.shape) == {"data": 4, "model": 2}
    data4_model2 = ("data4_model2", mp_mesh,
                    partitioning.logical_shardings(model.logical_specs(), mp_mesh))
    sgdm = optax.sgd(1.0, momentum=0.9)  # linear in the gradients (see _tx in the test file)
    cases = [("naive", None, sgdm, [data8, data4_model2]),  # = _tx() of the test file
             ("taco", {"burn_in_steps": 0}, sgdm, [data4_model2]),
             # The trainer's AdamW: losses and the first moment (linear in the gradients).
             ("naive", None, optax.adamw(1e-3, weight_decay=0.01), [data8])]
    for case, (method, options, opt, meshes) in enumerate(cases):
        if case not in CASES:
            continue
        tx = optax.chain(multitask.build_method(method, num_tasks=K, options=options),
                         optax.clip_by_global_norm(1.0), opt)
        if case == 0:  # the test's own single-device run of this chain (saves a compile)
            ref_losses = z["ref_losses"]
            ref = {"params": jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(params),
                [z[f"ref_param_{i}"] for i in range(len(jax.tree_util.tree_leaves(params)))])}
        else:
            ref_losses, ref = run(tx)  # no mesh: one device
        scale = max(np.max(np.abs(a - b)) for a, b in zip(leaves(ref["params"]), leaves(params)))
        for label, mesh, param_sh in meshes:
            losses, got = run(tx, mesh, param_sh)
            loss_err = float(np.max(np.abs(losses - ref_losses)))
            print(method, label, "loss err", loss_err)
            assert loss_err < LOSS_TOL, (method, label, loss_err)
            tol = TACO_TOL if method == "taco" else PARAM_TOL
            if opt is sgdm:
                err = rel_err(got["params"], ref["params"], scale)
                print(method, label, "param err / largest update", err)
                assert err < tol, (method, label, err)
            else:
                mu, ref_mu = got["opt_state"][2][0].mu, ref["opt_state"][2][0].mu
                err = rel_err(mu, ref_mu, max(np.max(np.abs(x)) for x in leaves(ref_mu)))
                print(method, label, "adam first moment err / largest", err)
                assert err < PARAM_TOL, (method, label, err)
            if method == "taco":
                ema, ref_ema = got["opt_state"][0].ema, ref["opt_state"][0].ema
                assert int(got["opt_state"][0].step) == 2
                err = rel_err(ema, ref_ema, max(np.max(np.abs(x)) for x in leaves(ref_ema)))
                print(method, label, "EMA err / largest", err)
                assert err < tol, (method, label, err)
    print("TRAIN_STEP_MESH_OK")
""")


def _sharded_step(reference, tmp_path, run_on_8_devices, cases):
    batches, ref_losses, ref_params, _ = reference  # one device, no mesh, _tx()
    path = tmp_path / "batches.npz"
    arrays = {"ref_losses": ref_losses}
    arrays.update({f"ref_param_{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(ref_params))})
    for i, b in enumerate(batches):
        assert b.query_ids.shape[1] % 8 == 0  # row_multiple=8: rows split over 8 devices
        arrays.update({f"{k}_{i}": v for k, v in b.arrays().items()})
    np.savez(path, **arrays)
    head = (f"BATCH_FILE = {str(path)!r}\nLOSS_TOL = {LOSS_TOL!r}\nPARAM_TOL = {PARAM_TOL!r}\n"
            f"TACO_TOL = {TACO_TOL!r}\nMODEL_OVERRIDES = {MODEL_OVERRIDES!r}\n"
            f"CASES = {list(cases)!r}\n")
    return run_on_8_devices(head + MESH_SCRIPT, "TRAIN_STEP_MESH_OK")


@pytest.mark.slow  # 98 s; by default test_union.py's step and test_sharded_state.py's TACO
def test_sharded_step_on_8_devices_equals_one_device(reference, tmp_path, run_on_8_devices):
    """The naive chain (the trainer's default) on 8 data-parallel devices and on a
    4 x 2 data x model mesh equals one device."""
    out = _sharded_step(reference, tmp_path, run_on_8_devices, [0])
    assert out.count("loss err") == 2, out


@pytest.mark.slow  # 150 s: two more single-device references and meshes
def test_sharded_taco_and_adamw_steps_equal_one_device(reference, tmp_path, run_on_8_devices):
    """TACO on the 4 x 2 mesh (EMA included) and AdamW's first moment on 8 devices."""
    out = _sharded_step(reference, tmp_path, run_on_8_devices, [1, 2])
    assert out.count("loss err") == 2, out
