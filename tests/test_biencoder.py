"""Bi-encoder layouts, task-specific query towers, pretrained towers, sharded encoding."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.data.tasks import get_task
from multiret_jax.models import bert
from multiret_jax.models.encoders import build_biencoder, get_encoder
from multiret_jax.models.pooling import cls_pool



def _batch(seed=0, b=4, length=12, vocab=1000):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(b, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return jnp.asarray(ids * mask), jnp.asarray(mask)


def test_layouts_shared_separate():
    ids, mask = _batch()
    sep, p_sep, _ = build_biencoder("bert", "bert_tiny")
    assert set(p_sep) == {"query", "passage"}
    np.testing.assert_allclose(sep.encode_queries(p_sep, ids, mask),
                               sep.encode_passages(p_sep, ids, mask))  # same init copied
    # Changing the passage tower changes passages only.
    p2 = {"query": p_sep["query"],
          "passage": jax.tree_util.tree_map(lambda x: x * 1.1, p_sep["passage"])}
    np.testing.assert_allclose(sep.encode_queries(p2, ids, mask), sep.encode_queries(p_sep, ids, mask))
    assert not np.allclose(sep.encode_passages(p2, ids, mask), sep.encode_passages(p_sep, ids, mask))
    shared, p_sh, _ = build_biencoder("t5", "t5_tiny", shared=True)
    assert set(p_sh) == {"shared"}
    q = shared.encode_queries(p_sh, ids, mask)
    np.testing.assert_array_equal(q, shared.encode_passages(p_sh, ids, mask))
    s = shared.score(q, q)
    np.testing.assert_allclose(s, np.asarray(q) @ np.asarray(q).T, rtol=1e-5)


def test_task_specific_query_towers_traced_index():
    model, params, cfg = build_biencoder("bert", "bert_tiny", query_towers=["QA", "FC", "DIAL"],
                                         tower_by="type")
    # Make towers differ, then check a traced tower index selects the right one.
    params["query"] = jax.tree_util.tree_map(
        lambda x: x * (1.0 + 0.1 * jnp.arange(3.0).reshape((3,) + (1,) * (x.ndim - 1))),
        params["query"])
    ids, mask = _batch()
    fn = jax.jit(lambda p, t: model.encode_queries(p, ids, mask, tower=t))
    direct = get_encoder("bert").module(cfg, "cls")
    for task, idx in (("nq", 0), ("fever", 1), ("wow", 2)):
        assert model.tower_index(get_task(task)) == idx
        tower_params = jax.tree_util.tree_map(lambda x: x[idx], params["query"])
        want = direct.apply({"params": tower_params}, ids, mask, True)
        np.testing.assert_allclose(fn(params, idx), want, atol=1e-5)
    # vmap over tasks (one tower per stacked sub-batch) equals the loop.
    stacked_ids = jnp.stack([ids] * 3)
    stacked_mask = jnp.stack([mask] * 3)
    out = jax.vmap(lambda t, i, m: model.encode_queries(params, i, m, tower=t))(
        jnp.arange(3), stacked_ids, stacked_mask)
    for t in range(3):
        np.testing.assert_allclose(out[t], fn(params, t), atol=1e-5)
    with pytest.raises(KeyError, match="no query tower"):
        build_biencoder("bert", "bert_tiny", query_towers=["nq", "fever"])[0].tower_index(get_task("wow"))


def test_pretrained_minilm_towers_equal_plain_encoder(minilm_dir):
    from multiret_jax.data.tokenization import Tokenization
    from multiret_jax.models.bert_hf import load_bert
    model, params, cfg = build_biencoder("bert", checkpoint_dir=str(minilm_dir))
    tok = Tokenization.from_dir(str(minilm_dir))
    ids, mask = tok.encode(["who wrote hamlet", "Hamlet is a tragedy by William Shakespeare."], 32)
    cfg2, raw = load_bert(str(minilm_dir))
    hidden = bert.BertEncoder(cfg2).apply({"params": raw}, ids, mask)
    np.testing.assert_allclose(model.encode_queries(params, ids, mask), cls_pool(hidden, mask), atol=1e-6)
    np.testing.assert_allclose(model.encode_passages(params, ids, mask), cls_pool(hidden, mask), atol=1e-6)


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="unknown encoder"):
        build_biencoder("gpt", "x")
    with pytest.raises(KeyError, match="presets"):
        build_biencoder("bert", "bert_huge")


MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from multiret_jax import partitioning
    from multiret_jax.models.encoders import build_biencoder
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for enc, cfg, shared in (("bert", "bert_tiny", False), ("t5", "t5_tiny", True)):
        model, params, _ = build_biencoder(enc, cfg, shared=shared)
        rng = np.random.default_rng(0)
        ids = rng.integers(5, 500, size=(16, 24)).astype(np.int32)
        mask = (np.arange(24)[None] < rng.integers(3, 25, size=(16, 1))).astype(np.int32)
        ids = ids * mask
        ref = np.asarray(jax.jit(model.encode_passages)(params, ids, mask))  # default device
        for mp in (1, 2):
            mesh = partitioning.make_mesh(model_parallel=mp)
            shardings = partitioning.logical_shardings(model.logical_specs(), mesh)
            p = jax.device_put(params, shardings)
            data = partitioning.batch_sharding(mesh)
            with jax.set_mesh(mesh), partitioning.axis_rules():
                fn = jax.jit(model.encode_passages, in_shardings=(shardings, data, data),
                             out_shardings=data)
                out = fn(p, jax.device_put(ids, data), jax.device_put(mask, data))
            assert len(out.sharding.device_set) == 8
            err = float(np.max(np.abs(np.asarray(out) - ref)))
            print(enc, mp, err)
            assert err < 1e-5, (enc, mp, err)
    print("MESH_OK")
""")


def test_sharded_encoding_on_8_cpu_devices_equals_one_device(run_on_8_devices):
    run_on_8_devices(MESH_SCRIPT, "MESH_OK")
