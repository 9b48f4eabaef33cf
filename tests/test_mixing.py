"""Tests for multiret_jax.data.mixing (TACO / MT-DPR multi-task mixing sampler)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multiret_jax.data.mixing import (MixingSampler, downsample, epoch_permutation,
                                      stable_task_hash, task_batch_sizes)

TABLE5 = {"nq": 76_000, "triviaqa": 53_000, "hotpotqa": 69_000, "wow": 80_000,
          "trex": 95_000, "fever": 71_000, "structured_zeroshot": 100_000,
          "aidayago2": 18_000}


# ---------------------------------------------------------------- reference proportions
def reference_targets(sizes, total, c):
    """Independent real-valued targets: total * (N_k/N)^(1/c) / sum_j (N_j/N)^(1/c)."""
    n = float(sum(sizes))
    if c is None or c == math.inf:
        w = [1.0] * len(sizes)
    else:
        w = [(s / n) ** (1.0 / c) for s in sizes]
    z = sum(w)
    return [total * x / z for x in w]


def check_largest_remainder(bs, targets):
    """Every B_k within 1 of its target; rounded-up tasks have remainders >= rounded-down."""
    eps = 1e-7
    ups, downs = [], []
    for i, (b, t) in enumerate(zip(bs, targets)):
        assert abs(b - t) < 1 + eps, (i, b, t)
        fl = math.floor(t + eps)
        assert b in (fl, fl + 1), (i, b, t)
        (ups if b == fl + 1 else downs).append((t - fl, i))
    if ups and downs:
        min_up = min(ups)
        max_down = max(downs)
        # remainder of any rounded-up task >= that of any rounded-down task (ties by order)
        assert min_up[0] >= max_down[0] - eps, (ups, downs)
        for fu, iu in ups:
            for fd, id_ in downs:
                if abs(fu - fd) <= eps:
                    assert iu < id_, (ups, downs)


def test_table5_taco():
    bs = task_batch_sizes(TABLE5, 120, c=4.0)
    assert list(bs) == list(TABLE5)  # mapping order preserved
    assert list(bs.values()) == [16, 14, 15, 16, 16, 15, 17, 11]
    # Same result for a plain sequence and for sizes in thousands.
    assert task_batch_sizes([76, 53, 69, 80, 95, 71, 100, 18], 120) == [
        16, 14, 15, 16, 16, 15, 17, 11]
    check_largest_remainder(list(bs.values()), reference_targets(list(TABLE5.values()), 120, 4.0))


@pytest.mark.parametrize("c", [1.0, 2.0, 4.0, 10.0, math.inf, None])
def test_random_sizes_sum_and_reference(c):
    rng = np.random.default_rng(1234)
    for _ in range(300):
        k = int(rng.integers(1, 12))
        sizes = [int(x) for x in rng.integers(1, 10 ** int(rng.integers(1, 7)), size=k)]
        total = int(rng.integers(k, 600))
        bs = task_batch_sizes(sizes, total, c)
        assert isinstance(bs, list) and len(bs) == k
        assert sum(bs) == total
        assert min(bs) >= 1
        assert all(isinstance(b, int) for b in bs)
        targets = reference_targets(sizes, total, c)
        if min(targets) >= 1.0:  # no task needs pinning to 1: plain largest remainder
            check_largest_remainder(bs, targets)


def test_pinning_to_one():
    bs = task_batch_sizes([10 ** 6, 1, 1, 1], 8, c=1.0)
    assert bs == [5, 1, 1, 1]
    assert task_batch_sizes([1, 1, 1], 3, c=1.0) == [1, 1, 1]


def test_c1_proportional():
    assert task_batch_sizes([100, 200, 300, 400], 100, c=1.0) == [10, 20, 30, 40]
    assert task_batch_sizes({"a": 1, "b": 3}, 8, c=1) == {"a": 2, "b": 6}
    # rounding: targets 33.33.., 66.66.. -> 33, 67
    assert task_batch_sizes([1, 2], 100, c=1.0) == [33, 67]


@pytest.mark.parametrize("c", [math.inf, None])
def test_uniform(c):
    assert task_batch_sizes([1, 1000, 10 ** 6], 30, c=c) == [10, 10, 10]
    # remainder goes to the first tasks (ties by task order)
    assert task_batch_sizes([7, 1000, 5, 10 ** 6], 10, c=c) == [3, 3, 2, 2]
    assert task_batch_sizes([5, 5, 5], 10, c=c) == [4, 3, 3]


def test_batch_size_errors():
    with pytest.raises(ValueError, match="'nq'.*empty"):
        task_batch_sizes({"nq": 0, "wow": 5}, 4)
    with pytest.raises(ValueError, match="'wow'.*negative"):
        task_batch_sizes({"nq": 3, "wow": -5}, 4)
    with pytest.raises(ValueError, match="global_batch=2.*3"):
        task_batch_sizes([1, 2, 3], 2)
    with pytest.raises(ValueError, match="c must be > 0"):
        task_batch_sizes([1, 2], 4, c=0)
    with pytest.raises(ValueError, match="no tasks"):
        task_batch_sizes([], 4)


# ------------------------------------------------------------------------- downsample
def test_downsample_deterministic_subset():
    a = downsample(1000, 100, seed=3, task_name="trex")
    b = downsample(1000, 100, seed=3, task_name="trex")
    assert a.dtype == np.int64 and a.size == 100
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) > 0)  # sorted, unique
    assert a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, downsample(1000, 100, seed=4, task_name="trex"))
    assert not np.array_equal(a, downsample(1000, 100, seed=3, task_name="zsre"))
    # no-op when the task is small enough or cap is None
    np.testing.assert_array_equal(downsample(50, 100, 3, "trex"), np.arange(50))
    np.testing.assert_array_equal(downsample(50, None, 3, "trex"), np.arange(50))
    np.testing.assert_array_equal(downsample(50, 50, 3, "trex"), np.arange(50))
    # an explicit index array: same positions are chosen, values taken from it
    idx = np.arange(1000) * 7 + 5
    np.testing.assert_array_equal(downsample(idx, 100, 3, "trex"), idx[a])
    # the downsampling stream differs from the epoch-0 permutation stream
    assert not np.array_equal(a, np.sort(epoch_permutation(1000, 3, "trex", 0)[:100]))


def test_stable_hash():
    import zlib
    assert stable_task_hash("nq") == zlib.crc32(b"nq")


def test_sampler_downsampling_and_to_original():
    s = MixingSampler({"big": 1000, "small": 30}, global_batch=10, c=1.0, seed=5, cap=100)
    assert s.num_examples == {"big": 100, "small": 30}
    assert s.original_sizes == {"big": 1000, "small": 30}
    assert s.subset("small") is None
    np.testing.assert_array_equal(s.subset("big"), downsample(1000, 100, 5, "big"))
    batch = s.batch(0)
    orig = s.original_batch(0)
    np.testing.assert_array_equal(orig["big"], s.subset("big")[batch["big"]])
    np.testing.assert_array_equal(orig["small"], batch["small"])
    assert batch["big"].max() < 100
    # per-task cap mapping
    s2 = MixingSampler({"big": 1000, "small": 30}, global_batch=10, cap={"small": 20})
    assert s2.num_examples == {"big": 1000, "small": 20}


# ---------------------------------------------------------------------------- sampler
SIZES = {"nq": 37, "wow": 11, "aida": 3, "fever": 100}


def make(seed=0, **kw):
    kw.setdefault("global_batch", 16)
    return MixingSampler(SIZES, seed=seed, **kw)


def test_batch_shapes_and_dtype():
    s = make()
    assert s.batch_sizes == task_batch_sizes(SIZES, 16, 4.0)
    assert s.global_batch == 16
    b = s.batch(0)
    assert list(b) == list(SIZES)
    for t, idx in b.items():
        assert idx.dtype == np.int64
        assert idx.shape == (s.batch_sizes[t],)
        assert idx.min() >= 0 and idx.max() < SIZES[t]
    expected_spe = max(math.ceil(SIZES[t] / s.batch_sizes[t]) for t in SIZES)
    assert s.steps_per_epoch == expected_spe
    assert s.epoch_of(0) == 0
    assert s.epoch_of(expected_spe - 1) == 0
    assert s.epoch_of(expected_spe) == 1
    assert s.epoch_of(5 * expected_spe + 2) == 5


def test_determinism_from_seed():
    a, b, c = make(seed=7), make(seed=7), make(seed=8)
    diff = False
    for step in range(0, 60, 3):
        ba, bb, bc = a.batch(step), b.batch(step), c.batch(step)
        for t in SIZES:
            np.testing.assert_array_equal(ba[t], bb[t])
            diff |= not np.array_equal(ba[t], bc[t])
    assert diff
    # random access order does not matter (no hidden state)
    fresh = make(seed=7)
    for step in [50, 3, 49, 0, 200, 1]:
        for t in SIZES:
            np.testing.assert_array_equal(fresh.batch(step)[t], a.batch(step)[t])


def test_resume_equals_uninterrupted():
    s = make(seed=3)
    full = list(s.iterate(num_steps=40))
    assert [st for st, _ in full] == list(range(40))
    for start in [0, 1, 7, 13, 39]:
        resumed = list(make(seed=3).iterate(start_step=start, num_steps=40 - start))
        assert len(resumed) == 40 - start
        for (s1, b1), (s2, b2) in zip(full[start:], resumed):
            assert s1 == s2
            for t in SIZES:
                np.testing.assert_array_equal(b1[t], b2[t])


def test_state_dict_resume_with_iter():
    s = make(seed=2)
    it = iter(s)
    first = [next(it) for _ in range(9)]
    state = s.state_dict()
    assert state["step"] == 9
    rest = [next(it) for _ in range(6)]
    r = MixingSampler.from_state(state, task_sizes=SIZES, global_batch=16, seed=2)
    assert r.step == 9
    it2 = iter(r)
    for (s1, b1) in rest:
        s2, b2 = next(it2)
        assert s1 == s2
        for t in SIZES:
            np.testing.assert_array_equal(b1[t], b2[t])
    assert first[0][0] == 0
    # just the step is enough
    r2 = make(seed=2)
    r2.load_state_dict({"step": 9})
    assert next(iter(r2))[0] == 9
    with pytest.raises(ValueError, match="seed"):
        make(seed=5).load_state_dict(state)


def test_epoch_coverage_and_boundary_crossing():
    s = make(seed=11)
    steps = 60
    for t in SIZES:
        n, b = s.num_examples[t], s.batch_sizes[t]
        stream = np.concatenate([s.batch(st)[t] for st in range(steps)])
        n_epochs = stream.size // n
        assert n_epochs >= 2
        for e in range(n_epochs):
            chunk = stream[e * n:(e + 1) * n]
            np.testing.assert_array_equal(np.sort(chunk), np.arange(n))  # each index once
            np.testing.assert_array_equal(chunk, epoch_permutation(n, 11, t, e))
        # epochs get different permutations (for tasks with enough examples)
        if n >= 10:
            assert not np.array_equal(stream[:n], stream[n:2 * n])
        # a step that straddles an epoch boundary: tail of one perm + head of the next
        for st in range(steps):
            lo, hi = st * b, (st + 1) * b
            if lo // n != (hi - 1) // n:
                e = lo // n
                joined = np.concatenate([epoch_permutation(n, 11, t, e),
                                         epoch_permutation(n, 11, t, e + 1),
                                         epoch_permutation(n, 11, t, e + 2)])
                np.testing.assert_array_equal(s.batch(st)[t], joined[lo - e * n:hi - e * n])
                break


def test_tiny_task_batch_larger_than_task():
    s = MixingSampler({"tiny": 2, "big": 1000}, batch_sizes={"tiny": 5, "big": 3}, seed=1)
    assert s.global_batch == 8
    stream = np.concatenate([s.batch(st)["tiny"] for st in range(4)])
    for e in range(10):
        np.testing.assert_array_equal(np.sort(stream[2 * e:2 * e + 2]), [0, 1])
    assert s.task_epoch_of("tiny", 1) == 2


def test_explicit_batch_sizes_and_errors():
    s = MixingSampler(SIZES, batch_sizes={"nq": 4, "wow": 2, "aida": 1, "fever": 9})
    assert s.batch_sizes == {"nq": 4, "wow": 2, "aida": 1, "fever": 9}
    assert s.global_batch == 16
    assert {t: v.size for t, v in s.batch(5).items()} == s.batch_sizes
    with pytest.raises(ValueError, match="unknown task.*'msmarco'"):
        MixingSampler(SIZES, batch_sizes={"nq": 4, "wow": 2, "aida": 1, "fever": 9,
                                          "msmarco": 3})
    with pytest.raises(ValueError, match="missing task.*'fever'"):
        MixingSampler(SIZES, batch_sizes={"nq": 4, "wow": 2, "aida": 1})
    with pytest.raises(ValueError, match="sum"):
        MixingSampler(SIZES, global_batch=10,
                      batch_sizes={"nq": 4, "wow": 2, "aida": 1, "fever": 9})
    with pytest.raises(ValueError, match=">= 1"):
        MixingSampler(SIZES, batch_sizes={"nq": 4, "wow": 0, "aida": 1, "fever": 9})


def test_sampler_errors():
    with pytest.raises(ValueError, match="'wow'.*empty"):
        MixingSampler({"nq": 5, "wow": 0}, global_batch=4)
    with pytest.raises(ValueError, match="'nq'.*negative"):
        MixingSampler({"nq": -5, "wow": 3}, global_batch=4)
    with pytest.raises(ValueError, match="global_batch"):
        MixingSampler({"nq": 5, "wow": 3})
    with pytest.raises(ValueError, match="smaller than the number of tasks"):
        MixingSampler({"nq": 5, "wow": 3, "aida": 2}, global_batch=2)
    with pytest.raises(ValueError, match="seed"):
        MixingSampler({"nq": 5}, global_batch=2, seed=-1)
    with pytest.raises(ValueError, match="step"):
        make().batch(-1)


def test_gin_configurable():
    import gin
    gin.clear_config()
    try:
        gin.parse_config([
            "MixingSampler.task_sizes = {'nq': 76000, 'aidayago2': 18000}",
            "MixingSampler.global_batch = 12",
            "MixingSampler.c = 1.0",
            "MixingSampler.seed = 4",
        ])
        s = MixingSampler()
        assert s.batch_sizes == task_batch_sizes({"nq": 76000, "aidayago2": 18000}, 12, 1.0)
        assert s.seed == 4
    finally:
        gin.clear_config()
