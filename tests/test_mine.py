"""Dense exact search and hard-negative mining (ANCE episodes), exact and over FAISS indexes."""

import numpy as np
import pytest

from multiret_jax.data.negatives import filter_negatives
from multiret_jax.index.faiss_index import build_index, sharded_search
from multiret_jax.index.mine import exact_search, mine_negatives, pair_scores


def _data(q=7, p=53, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(q, d)).astype(np.float32),
            rng.normal(size=(p, d)).astype(np.float32))


@pytest.mark.parametrize("block_size", [1, 5, 10, 16, 53, 64, 65536])
def test_exact_search_matches_bruteforce(block_size):
    q, p = _data()
    rows, scores = exact_search(q, p, k=12, block_size=block_size)
    full = q @ p.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :12]
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert rows.shape == scores.shape == (7, 12)
    np.testing.assert_array_equal(rows, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ref, axis=1), rtol=1e-5)


def test_blocks_give_identical_results_and_k_clamped():
    q, p = _data(q=4, p=30)
    whole = exact_search(q, p, k=100, block_size=1000)
    blocked = exact_search(q, p, k=100, block_size=7)
    assert whole[0].shape == (4, 30)  # k clamped to P
    np.testing.assert_array_equal(whole[0], blocked[0])
    # a float32 [Q, D] x [D, block] BLAS product rounds by shape; the float64 sums do not
    np.testing.assert_array_equal(whole[1], blocked[1])
    assert sorted(whole[0][0].tolist()) == list(range(30))


def test_exact_search_ties_to_lower_row():
    q = np.ones((2, 2), np.float32)
    p = np.array([[0, 0], [1, 0], [0, 1], [1, 0], [0.5, 0.5], [2, 0]], np.float32)
    for bs in (1, 2, 4, 100):
        rows, scores = exact_search(q, p, k=4, block_size=bs)
        np.testing.assert_array_equal(rows, [[5, 1, 2, 3]] * 2)
        np.testing.assert_array_equal(scores, [[2, 1, 1, 1]] * 2)


def test_pair_scores_equal_float64_products_in_a_table_of_any_size():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(50, 384)).astype(np.float32)
    p = rng.normal(size=(1000, 384)).astype(np.float32)
    rows = rng.integers(0, 1000, (50, 30))
    rows[::7, -3:] = -1
    got = pair_scores(q, p, rows)
    assert got.dtype == np.float32 and got.shape == (50, 30)
    q64, cand64 = q.astype(np.float64), p[rows].astype(np.float64)
    ref = np.einsum("qd,qcd->qc", q64, cand64)
    bound = np.einsum("qd,qcd->qc", np.abs(q64), np.abs(cand64))
    ok = rows >= 0
    assert np.all(np.abs(got[ok] - ref[ok]) <= 1e-6 * bound[ok])  # a float32 sum's error
    assert np.all(got[~ok] == -np.inf)
    # The same pairs in a slice of the table, or in a larger one, score identically.
    part = np.where(ok, rows - 200, -1)
    inside = ok & (rows >= 200) & (rows < 700)
    np.testing.assert_array_equal(pair_scores(q, p[200:700], np.where(inside, part, -1))[inside],
                                  got[inside])
    big = np.concatenate([rng.normal(size=(333, 384)).astype(np.float32), p])
    np.testing.assert_array_equal(pair_scores(q, big, np.where(ok, rows + 333, -1)), got)
    # exact_search's scores are these, over blocks of any size (where a float32 BLAS
    # product of a block rounds by the block's shape on some CPUs).
    for bs in (77, 128, 1000):
        r, sc = exact_search(q, p, 20, block_size=bs)
        np.testing.assert_array_equal(sc, pair_scores(q, p, r))
        np.testing.assert_array_equal(r, exact_search(q, p, 20)[0])


def test_pair_scores_nan_and_errors():
    q, p = _data()
    p[3, 0] = np.nan
    got = pair_scores(q, p, np.array([[3, 4]] * len(q)))
    assert np.all(got[:, 0] == -np.inf) and np.all(np.isfinite(got[:, 1]))
    assert exact_search(q, p, 53)[0][0, -1] == 3  # the NaN passage ranks last
    with pytest.raises(ValueError, match="out of the table"):
        pair_scores(q, p, np.full((len(q), 1), len(p)))
    with pytest.raises(ValueError, match="rows"):
        pair_scores(q, p, np.zeros((len(q) + 1, 2), np.int64))
    with pytest.raises(ValueError):
        pair_scores(q, p[:, :5], np.zeros((len(q), 2), np.int64))


def test_exact_search_errors():
    q, p = _data()
    with pytest.raises(ValueError, match="dimension"):
        exact_search(q, p[:, :5], k=3)
    with pytest.raises(ValueError):
        exact_search(q[0], p, k=3)


def _corpus(p=40):
    return [f"page{r // 4}" for r in range(p)]  # 4 passages per page


def test_mine_negatives_excludes_gold_and_keeps_rank_order():
    q, p = _data(q=6, p=40, seed=1)
    page_ids = _corpus()
    ranked = np.argsort(-(q @ p.T), axis=1, kind="stable")
    positives = [ranked[i, [0, 3]] for i in range(6)]
    negs = mine_negatives(q, p, positives, page_ids, num=5, depth=40, block_size=9)
    assert negs.shape == (6, 5) and negs.dtype == np.int64
    for i in range(6):
        gold = set(positives[i].tolist())
        gpages = {page_ids[r] for r in gold}
        allowed = [r for r in ranked[i] if r not in gold and page_ids[r] not in gpages]
        assert negs[i].tolist() == allowed[:5]
    # keeping gold-page passages: only the gold rows themselves are dropped
    negs2 = mine_negatives(q, p, positives, page_ids, num=5, exclude_gold_pages=False)
    for i in range(6):
        allowed = [r for r in ranked[i] if r not in set(positives[i].tolist())]
        assert negs2[i].tolist() == allowed[:5]
    # explicit gold pages
    gp = [["page0", "page1"]] * 6
    negs3 = mine_negatives(q, p, [np.zeros(0, np.int64)] * 6, page_ids, num=5, gold_pages=gp)
    assert all(page_ids[r] not in ("page0", "page1") for r in negs3.ravel())


def test_mine_negatives_pads_when_too_few():
    q, p = _data(q=3, p=8, seed=2)
    page_ids = ["a"] * 4 + ["b"] * 4
    negs = mine_negatives(q, p, [np.array([0])] * 3, page_ids, num=6, depth=100)
    assert negs.shape == (3, 6)
    for row in negs:
        assert sorted(row[:4].tolist()) == [4, 5, 6, 7]
        assert row[4:].tolist() == [-1, -1]
    # shallow depth: only the allowed passages within the top-2 count
    negs = mine_negatives(q, p, [np.array([0])] * 3, page_ids, num=3, depth=2)
    ranked = np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :2]
    for row, top in zip(negs, ranked):
        assert row.tolist() == [r for r in top if r >= 4] + [-1] * (3 - (top >= 4).sum())


def test_mine_negatives_sampling_deterministic_and_within_depth():
    q, p = _data(q=5, p=200, seed=3)
    page_ids = [f"pg{r // 2}" for r in range(200)]
    ranked = np.argsort(-(q @ p.T), axis=1, kind="stable")
    positives = [ranked[i, :1] for i in range(5)]
    kw = dict(num=4, depth=30, sample=True)
    a = mine_negatives(q, p, positives, page_ids, rng=np.random.default_rng(7), **kw)
    b = mine_negatives(q, p, positives, page_ids, rng=np.random.default_rng(7), **kw)
    c = mine_negatives(q, p, positives, page_ids, rng=np.random.default_rng(8), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top = mine_negatives(q, p, positives, page_ids, num=4, depth=30)
    assert not np.array_equal(a, top)
    for i in range(5):
        gold = set(positives[i].tolist())
        gpages = {page_ids[r] for r in gold}
        allowed = {r for r in ranked[i, :30] if r not in gold and page_ids[r] not in gpages}
        assert len(set(a[i].tolist())) == 4 and set(a[i].tolist()) <= allowed


def test_mine_negatives_errors():
    q, p = _data(q=3, p=10)
    page_ids = _corpus(10)
    with pytest.raises(ValueError, match="positive"):
        mine_negatives(q, p, [np.array([0])] * 2, page_ids, num=1)
    with pytest.raises(ValueError, match="dimension"):
        mine_negatives(q, p[:, :3], [np.array([0])] * 3, page_ids, num=1)
    with pytest.raises(ValueError, match="page ids"):
        mine_negatives(q, p, [np.array([0])] * 3, page_ids[:5], num=1)


def test_filter_negatives_skips_padding():
    ranked = np.array([[3, -1, 2, 1, 0]])
    out = filter_negatives(ranked, [np.array([2])], ["x", "y", "z", "w"], num=3,
                           exclude_gold_pages=True)
    assert out.tolist() == [[3, 1, 0]]


def test_mine_negatives_with_a_flat_index_equals_exact_search():
    """A Flat DenseIndex (rows = table rows) gives exactly the negatives of exact search,
    best-first and sampled; so do a search callable and an index built in shards with
    row offsets; HNSW (efSearch raised to the depth) gives gold-free negatives."""
    q, p = _data(q=20, p=300, d=16, seed=4)
    page_ids = [f"pg{r // 3}" for r in range(300)]
    ranked = np.argsort(-(q @ p.T), axis=1, kind="stable")
    positives = [ranked[i, [i % 5]] for i in range(20)]
    flat = build_index(p, "Flat", progress=False)
    for kw in (dict(num=6, depth=40), dict(num=4, depth=60, sample=True),
               dict(num=3, depth=25, exclude_gold_pages=False)):
        want = mine_negatives(q, p, positives, page_ids, rng=np.random.default_rng(1), **kw)
        got = mine_negatives(q, flat, positives, page_ids, rng=np.random.default_rng(1), **kw)
        np.testing.assert_array_equal(got, want)
        fn = mine_negatives(q, flat.search, positives, page_ids, rng=np.random.default_rng(1), **kw)
        np.testing.assert_array_equal(fn, want)
    parts = [build_index(p[:120], "Flat", row_offset=0, progress=False),
             build_index(p[120:], "Flat", row_offset=120, progress=False)]
    merged = lambda x, k: sharded_search(parts, x, k, progress=False)
    np.testing.assert_array_equal(mine_negatives(q, merged, positives, page_ids, num=5, depth=30),
                                  mine_negatives(q, p, positives, page_ids, num=5, depth=30))
    hnsw = build_index(p, "HNSW16", progress=False).set_params(efSearch=8)
    negs = mine_negatives(q, hnsw, positives, page_ids, num=5, depth=50)
    assert (negs >= 0).all()
    for row, pos in zip(negs, positives):
        assert not {page_ids[r] for r in row} & {page_ids[r] for r in pos}
    with pytest.raises(ValueError, match="page ids"):  # an index over another, larger table
        mine_negatives(q, flat, positives, page_ids[:200], num=2)
    with pytest.raises(ValueError, match="page ids"):
        mine_negatives(q, parts[1].search, positives, page_ids[:200], num=2, depth=300)
