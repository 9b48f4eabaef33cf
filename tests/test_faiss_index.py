"""FAISS index wrapper: exactness vs brute force, shards, save/load, sharded search, recall."""

import json

import numpy as np
import pytest

from multiret_jax.index import faiss_index as fi
from multiret_jax.index.mine import exact_search


def _normal(n=2000, d=32, nq=50, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32),
            rng.normal(size=(nq, d)).astype(np.float32))


def _clustered(n=2000, d=32, nq=100, seed=0):
    """Gaussian clusters with log-normal norms (so IP, cosine and L2 rank differently);
    queries are unit-norm noisy copies of passages."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(16, d))
    x = centers[rng.integers(0, 16, n)] + 0.6 * rng.normal(size=(n, d))
    x *= rng.lognormal(0.0, 0.5, size=(n, 1))
    q = x[rng.choice(n, nq, replace=False)]
    q = q / np.linalg.norm(q, axis=1, keepdims=True) + 0.2 * rng.normal(size=(nq, d))
    return x.astype(np.float32), q.astype(np.float32)


def _recall(rows, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, ref)]))


def _split(x, cuts=(500, 1300)):
    return np.split(x, cuts)


@pytest.fixture(scope="module")
def normal():
    return _normal()


def test_flat_equals_exact_search(normal):
    x, q = normal
    idx = fi.build_index(x, "Flat", progress=False)
    for batch_size in (7, 4096):  # FAISS uses BLAS for >= 20 queries, its own loop below
        rows, scores = idx.search(q, 10, batch_size=batch_size)
        ref_rows, ref_scores = exact_search(q, x, 10)
        assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (50, 10)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(scores, ref_scores)  # both mine.pair_scores'
    ids, _ = idx.search_ids(q, 10)
    np.testing.assert_array_equal(ids, ref_rows.astype(str))  # default ids: row numbers


@pytest.mark.parametrize("ip_to_l2", [False, True])
def test_flat_ip_to_l2_is_exact(normal, ip_to_l2):
    x, q = normal
    idx = fi.build_index([x], "Flat", ip_to_l2=ip_to_l2, progress=False)
    rows, scores = idx.search(q, 10)
    ref_rows, ref_scores = exact_search(q, x, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)  # rescored without the extra coordinate


@pytest.mark.parametrize("spec", ["Flat", "IVF16,SQ8"])
def test_shards_equal_whole(normal, spec):
    x, q = normal
    x16 = x.astype(np.float16)  # shards may be float16 memmaps; converted per block
    pids = np.array([f"p{i}" for i in range(len(x))])
    whole = fi.build_index([(pids, x16.astype(np.float32))], spec, train_size=700,
                           progress=False)
    shards = list(zip(_split(pids), _split(x16)))
    # a callable returning a fresh iterator, like lambda: encode.iter_shards(directory)
    parts = fi.build_index(lambda: iter(shards), spec, train_size=700, add_batch_size=300,
                           progress=False)
    np.testing.assert_array_equal(parts.ids, pids)
    for a, b in zip(whole.search(q, 10), parts.search(q, 10)):
        np.testing.assert_array_equal(a, b)


def test_one_shot_generator_refused_for_trainable(normal):
    x, _ = normal
    gen = (s for s in _split(x))
    with pytest.raises(ValueError, match="first pass"):
        fi.build_index(gen, "IVF16,SQ8", progress=False)
    gen = (s for s in _split(x))  # Flat streams in one pass: fine
    assert fi.build_index(gen, "Flat", progress=False).ntotal == len(x)


@pytest.mark.parametrize("spec,params", [("Flat", {}), ("HNSW16", {"efSearch": 32}),
                                         ("IVF16,SQ8", {"nprobe": 4})])
def test_save_load_roundtrip(tmp_path, normal, spec, params):
    x, q = normal
    pids = np.array([f"{i // 3}_{i % 3}" for i in range(len(x))])
    idx = fi.build_index([(pids, x)], spec, passage_checksum="abc", progress=False)
    idx.set_params(**params)
    idx.save(str(tmp_path / "ix"))
    back = fi.DenseIndex.load(str(tmp_path / "ix"), expected_checksum="abc", **params)
    for a, b in zip(idx.search_ids(q, 10), back.search_ids(q, 10)):
        np.testing.assert_array_equal(a, b)
    meta = json.loads((tmp_path / "ix" / fi.META_FILE).read_text())
    assert meta["spec"] == spec and meta["ntotal"] == len(x) and meta["dim"] == 32
    assert meta["metric"] == "inner_product" and meta["passage_checksum"] == "abc"
    with pytest.raises(ValueError, match="passage table"):
        fi.DenseIndex.load(str(tmp_path / "ix"), expected_checksum="other")


def test_tampered_ids_file(tmp_path, normal):
    x, _ = normal
    d = tmp_path / "ix"
    fi.build_index(x[:100], "Flat", progress=False).save(str(d))
    ids_path = d / fi.IDS_FILE
    np.save(ids_path, np.arange(99).astype(str))  # one id short
    with pytest.raises(ValueError, match=r"ids\.npy.*99 passage ids.*ntotal=100"):
        fi.DenseIndex.load(str(d))
    np.save(ids_path, np.arange(1, 101).astype(str))  # right count, wrong ids
    with pytest.raises(ValueError, match=r"ids\.npy.*modified"):
        fi.DenseIndex.load(str(d))
    np.save(ids_path, np.array([object()] * 100), allow_pickle=True)
    with pytest.raises(ValueError, match=r"ids\.npy"):
        fi.DenseIndex.load(str(d))
    (d / fi.IDS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"ids\.npy"):
        fi.DenseIndex.load(str(d))


def test_verify_files_finds_a_damaged_index_file(tmp_path, normal):
    x, q = normal
    d = tmp_path / "ix"
    fi.build_index(x[:100], "Flat", progress=False).save(str(d))
    fi.DenseIndex.load(str(d), verify_files=True)
    blob = bytearray((d / fi.INDEX_FILE).read_bytes())
    blob[-5] ^= 0xFF  # one byte of a vector: FAISS reads it without complaint
    (d / fi.INDEX_FILE).write_bytes(bytes(blob))
    fi.DenseIndex.load(str(d))  # not checked unless asked (a full read of the file)
    with pytest.raises(ValueError, match=r"index\.faiss: damaged or modified"):
        fi.DenseIndex.load(str(d), verify_files=True)


def test_k_larger_than_ntotal():
    x, q = _normal(n=5, nq=3)
    for idx in (fi.build_index(x, "Flat", progress=False),
                fi.build_index(x, "Flat", ip_to_l2=True, progress=False)):
        rows, scores = idx.search(q, 8)
        assert rows.shape == (3, 8)
        assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
        assert (np.sort(rows[:, :5], axis=1) == np.arange(5)).all()
        assert np.isfinite(scores[:, :5]).all()
        ids, _ = idx.search_ids(q, 8)
        assert (ids[:, 5:] == "").all() and (ids[:, :5] == rows[:, :5].astype(str)).all()
    rows, scores = fi.sharded_search([fi.build_index(x[:2], "Flat", progress=False),
                                      fi.build_index(x[2:], "Flat", row_offset=2, progress=False)],
                                     q, 8, progress=False)
    np.testing.assert_array_equal(rows, fi.build_index(x, "Flat", progress=False).search(q, 8)[0])


def test_sharded_search_equals_single_flat(tmp_path, normal):
    x, q = normal
    pids = np.array([f"p{i}" for i in range(len(x))])
    single = fi.build_index([(pids, x)], "Flat", progress=False)
    offs = [0, 500, 1300]
    parts = [fi.build_index([(i, s)], "Flat", row_offset=o, progress=False)
             for o, i, s in zip(offs, _split(pids), _split(x))]
    parts[1].save(str(tmp_path / "p1"))
    mixed = [parts[0], str(tmp_path / "p1"), parts[2]]
    rows, scores, ids = fi.sharded_search(mixed, q, 10, return_ids=True, progress=False)
    ref_rows, ref_scores = single.search(q, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_array_equal(ids, pids[ref_rows])
    # explicit offsets override the stored ones; overlapping ranges are refused
    zero = [fi.build_index(s, "Flat", progress=False) for s in _split(x)]
    np.testing.assert_array_equal(
        fi.sharded_search(zero, q, 10, row_offsets=offs, progress=False)[0], ref_rows)
    with pytest.raises(ValueError, match="overlap"):
        fi.sharded_search(zero, q, 10, progress=False)


@pytest.fixture(scope="module")
def clustered():
    x, q = _clustered()
    return x, q, exact_search(q, x, 10)[0]  # brute force, independent of the code under test


@pytest.mark.parametrize("spec,params,threshold", [
    ("HNSW16", {"efSearch": 32}, 0.85),
    ("IVF16,SQ8", {"nprobe": 4}, 0.85),
    ("IVF16,PQ16x4", {"nprobe": 4}, 0.5),
])
def test_approximate_recall(clustered, spec, params, threshold):
    # recall vs brute-force IP; an L2 (or cosine) index scores ~0.0 (~0.13) here, so fails
    x, q, ref = clustered
    idx = fi.build_index(x, spec, train_size=1500, progress=False).set_params(**params)
    rows, scores = idx.search(q, 10)
    assert _recall(rows, ref) >= threshold
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("spec", ["HNSW16", "PCA32,HNSW16"])
def test_hnsw_searches_with_ef_at_least_k(normal, spec):
    """FAISS does not raise efSearch to k (a k=100 search with efSearch=16 finds about half
    of the true top 100); ``search`` does, for the call only, so it equals a search with
    efSearch=k set by hand, and a larger efSearch is kept."""
    x, q = normal
    idx = fi.build_index(x, spec, progress=False).set_params(efSearch=16)
    hnsw = fi._hnsw_of(idx.index)
    ref = exact_search(q, x, 100)[0]
    rows, scores = idx.search(q, 100)
    assert hnsw.efSearch == 16  # restored
    assert _recall(rows, ref) > 0.85 and (rows >= 0).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    hnsw.efSearch = 100  # by hand: the same beam
    np.testing.assert_array_equal(idx.search(q, 100)[0], rows)
    hnsw.efSearch = 16  # plain FAISS with efSearch < k: the recall the fix avoids
    plain = idx.index.search(q, 100)[1]
    assert _recall(plain, ref) < _recall(rows, ref) - 0.2
    idx.set_params(efSearch=400)  # >= k: used as set, not lowered
    deeper = idx.search(q, 100)[0]
    assert hnsw.efSearch == 400 and _recall(deeper, ref) >= _recall(rows, ref)
    assert fi._hnsw_of(fi.build_index(x[:100], "Flat", progress=False).index) is None


def test_errors(normal):
    x, q = normal
    with pytest.raises(ValueError, match="bad FAISS index spec"):
        fi.build_index(x, "NoSuchIndex", progress=False)
    idx = fi.build_index(x[:50], "Flat", progress=False)
    with pytest.raises(ValueError, match="nprobe"):
        idx.set_params(nprobe=4)
    with pytest.raises(ValueError, match=r"\[Q, 32\]"):
        idx.search(q[:, :8], 5)
    with pytest.raises(ValueError, match="dimension"):
        fi.build_index([x[:10], x[:10, :8]], "Flat", progress=False)
    bad = x[:20].copy()
    bad[13, 2] = np.nan
    with pytest.raises(ValueError, match="row 13"):
        fi.build_index(bad, "Flat", progress=False)
    with pytest.raises(ValueError, match="ids"):
        fi.build_index([x[:10]], "Flat", ids=["a"] * 9, progress=False)
    with pytest.raises(ValueError, match="no shards"):
        fi.build_index([], "Flat", progress=False)
