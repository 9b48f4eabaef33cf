"""NCE loss: NumPy reference, exact padding, false negatives, cross-device equality,
gradient cache equality."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.models.encoders import build_biencoder
from multiret_jax.training import gradcache, losses



def numpy_nce(q, p, n=None, nmask=None):
    """Straight from the DPR formula: -log softmax over [all positives, all valid negatives]."""
    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    out = []
    for i in range(len(q)):
        cands = list(p)
        if n is not None:
            for j in range(n.shape[0]):
                for h in range(n.shape[1]):
                    if nmask is None or nmask[j, h]:
                        cands.append(np.asarray(n[j, h], np.float64))
        s = np.array([q[i] @ c for c in cands])
        out.append(-(s[i] - (np.log(np.sum(np.exp(s - s.max()))) + s.max())))
    return float(np.mean(out))


def rand(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def test_matches_numpy_reference():
    q, p, n = rand(5, 8, seed=1), rand(5, 8, seed=2), rand(5, 2, 8, seed=3)
    nmask = np.ones((5, 2), bool)
    nmask[2, 1] = nmask[4, 0] = False
    assert float(losses.nce_loss(q, p)) == pytest.approx(numpy_nce(q, p), rel=1e-5)
    assert float(losses.nce_loss(q, p, n, negative_mask=jnp.asarray(nmask))) == pytest.approx(
        numpy_nce(q, p, np.asarray(n), nmask), rel=1e-5)


def test_padded_rows_contribute_exactly_nothing():
    q, p, n = rand(3, 8, seed=1), rand(3, 8, seed=2), rand(3, 2, 8, seed=3)
    pad = lambda x, seed: jnp.concatenate([x, rand(2, *x.shape[1:], seed=seed) * 100], 0)
    qm = jnp.asarray([1, 1, 1, 0, 0])

    def full(q_, p_, n_):
        return losses.nce_loss(q_, p_, n_)

    def padded(q_, p_, n_):
        return losses.nce_loss(pad(q_, 7), pad(p_, 8), pad(n_, 9), query_mask=qm)

    assert float(padded(q, p, n)) == pytest.approx(float(full(q, p, n)), abs=1e-6)
    g_full = jax.grad(full, argnums=(0, 1, 2))(q, p, n)
    g_pad = jax.grad(padded, argnums=(0, 1, 2))(q, p, n)
    for a, b in zip(g_full, g_pad):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(losses.nce_loss(q, p, query_mask=jnp.zeros(3))) == 0.0


def test_false_negatives_removed_by_passage_id():
    q, p = rand(3, 8, seed=1), rand(3, 8, seed=2)
    p = p.at[2].set(p[0])  # queries 0 and 2 drew the same positive passage (id 10)
    ids = jnp.asarray([10, 11, 10])
    logits = losses.nce_logits(q, p, positive_ids=ids)
    assert logits[0, 2] == losses.NEG_INF and logits[2, 0] == losses.NEG_INF
    assert logits[0, 0] > losses.NEG_INF and logits[1, 0] > losses.NEG_INF
    q0 = np.asarray(q[0], np.float64)
    s = np.array([q0 @ np.asarray(p[0]), q0 @ np.asarray(p[1])])
    want = -(s[0] - np.log(np.exp(s).sum()))
    got = float(losses.nce_loss(q[:1].repeat(3, 0) * 0 + q, p, positive_ids=ids))
    rows = [want]
    for i in (1, 2):
        qi = np.asarray(q[i], np.float64)
        cand = [0, 1, 2] if i == 1 else [1, 2]
        si = np.array([qi @ np.asarray(p[c], np.float64) for c in cand])
        rows.append(-(qi @ np.asarray(p[i], np.float64) - np.log(np.exp(si).sum())))
    assert got == pytest.approx(np.mean(rows), rel=1e-5)


def _tiny_batch(b=8, h=1, lq=8, lp=16, seed=0):
    rng = np.random.default_rng(seed)
    def toks(n, length):
        ids = rng.integers(5, 900, size=(n, length)).astype(np.int32)
        mask = (np.arange(length)[None] < rng.integers(2, length + 1, size=(n, 1))).astype(np.int32)
        return jnp.asarray(ids * mask), jnp.asarray(mask)
    return toks(b, lq), toks(b * (1 + h), lp)


@pytest.mark.slow  # 36 s; test_train_step.py::test_gradient_cache_equals_plain_step checks the
# same equality through the train step in the default suite
def test_gradient_cache_equals_uncached():
    model, params, _ = build_biencoder("bert", "bert_tiny", config_overrides={"dropout_rate": 0.1})
    (qi, qm), (pi, pm) = _tiny_batch()
    b = qi.shape[0]

    def emb_loss(q, p):
        return losses.nce_loss(q, p[:b], p[b:].reshape(b, 1, -1))

    def enc_q(prm, x, r):
        return model.encode_queries(prm, x[0], x[1], deterministic=r is None,
                                    rngs=None if r is None else {"dropout": r})

    def enc_p(prm, x, r):
        return model.encode_passages(prm, x[0], x[1], deterministic=r is None,
                                     rngs=None if r is None else {"dropout": r})

    for rng, chunk in ((None, 2), (jax.random.PRNGKey(3), 4)):
        def direct(prm):
            rq, rp = (None, None) if rng is None else jax.random.split(rng)
            # Same per-chunk RNG as the cache uses, so dropout masks agree.
            def run(enc, x, r, n):
                outs = []
                for c in range(n // chunk):
                    sl = jax.tree_util.tree_map(lambda a: a[c * chunk:(c + 1) * chunk], x)
                    outs.append(enc(prm, sl, None if r is None else jax.random.fold_in(r, c)))
                return jnp.concatenate(outs)
            return emb_loss(run(enc_q, (qi, qm), rq, b), run(enc_p, (pi, pm), rp, 2 * b))

        want_l, want_g = jax.value_and_grad(direct)(params)
        got_l, got_g = jax.jit(lambda prm: gradcache.cached_value_and_grad(
            emb_loss, enc_q, enc_p, prm, (qi, qm), (pi, pm), chunk, rng))(params)
        assert float(got_l) == pytest.approx(float(want_l), rel=1e-5)
        for a, c in zip(jax.tree_util.tree_leaves(want_g), jax.tree_util.tree_leaves(got_g)):
            # float32 sums in another order: measured up to 1.15e-5 absolute on entries
            # of gradients whose largest entries are ~13 (1e-6 of the scale)
            np.testing.assert_allclose(a, c, atol=3e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="chunks of 3"):
        gradcache.cached_value_and_grad(emb_loss, enc_q, enc_p, params, (qi, qm), (pi, pm), 3)


XDEV_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from multiret_jax import partitioning
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training import losses
    assert jax.device_count() == 8
    model, params, _ = build_biencoder("bert", "bert_tiny")
    rng = np.random.default_rng(0)
    B = 16
    def toks(n, length):
        ids = rng.integers(5, 900, size=(n, length)).astype(np.int32)
        mask = (np.arange(length)[None] < rng.integers(2, length + 1, size=(n, 1))).astype(np.int32)
        return ids * mask, mask
    qi, qm = toks(B, 8); pi, pm = toks(B, 16); ni, nm = toks(B, 16)
    def loss_fn(prm, qi, qm, pi, pm, ni, nm):
        q = model.encode_queries(prm, qi, qm)
        p = model.encode_passages(prm, pi, pm)
        n = model.encode_passages(prm, ni, nm)[:, None]
        return losses.nce_loss(q, p, n)
    step = jax.value_and_grad(loss_fn)
    ref_l, ref_g = jax.jit(step)(params, qi, qm, pi, pm, ni, nm)
    mesh = partitioning.make_mesh()
    data = partitioning.batch_sharding(mesh)
    rep = partitioning.replicated(mesh)
    fn = jax.jit(step, in_shardings=(rep,) + (data,) * 6, out_shardings=(rep, rep))
    args = [jax.device_put(x, data) for x in (qi, qm, pi, pm, ni, nm)]
    l, g = fn(jax.device_put(params, rep), *args)
    assert len(args[0].sharding.device_set) == 8
    err_l = abs(float(l) - float(ref_l))
    # Largest gradient error relative to the largest gradient entry (the summation order
    # of the cross-device reductions differs from one device's).
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(ref_g))
    err_g = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref_g))) / scale
    # Per-device (local-negatives-only) loss differs: the global loss really uses all devices.
    local = np.mean([float(loss_fn(params, qi[s:s+2], qm[s:s+2], pi[s:s+2], pm[s:s+2],
                                   ni[s:s+2], nm[s:s+2])) for s in range(0, B, 2)])
    print("loss", float(l), float(ref_l), "local-only", local, "err", err_l, err_g)
    assert err_l < 1e-5 and err_g < 1e-5 and abs(local - float(ref_l)) > 1e-3
    print("XDEV_OK")
""")


def test_cross_device_negatives_equal_single_device_loss(run_on_8_devices):
    run_on_8_devices(XDEV_SCRIPT, "XDEV_OK")
