"""Exact medians (and the sampled approximation) over all elements of a model, per task.

TACO normalises each task's sensitivities by their median over ALL parameter elements:
K medians over K x N values (N = the model's parameter count) at every step. Copying the
K x N values to sort them (``jnp.median``) does not fit beside the gradients and the EMA
of a large model, so ``median_select`` finds the order statistics by counting instead.

For x >= 0 the int32 bit pattern of a float32 is monotone in its value, so an order
statistic can be located by counting elements at or below candidate bit patterns. Each
ROUND reads the data once and counts ``thresholds`` (J) evenly spaced candidates inside
the current bracket, which shrinks it (J + 1)-fold:

* J = 15 (default): 16-fold per round. The bracket starts as [0, +inf], 2**31 patterns
  wide, so at most 8 rounds. On GPU/TPU, where the step is bound by memory traffic and
  XLA fuses the J sibling count reductions into one read, this is the cheap choice.
* J = 1: plain bisection, up to 32 rounds of one count each: the cheapest total work
  when the counting is compute-bound, as on XLA CPU (which does not fuse sibling
  reductions: J counts there cost about J reads); see ``benchmarks/multitask_overhead.py``.

The median of an even count is the mean of the two middle order statistics x_(a) and
x_(a+1). Both are searched together: while they lie in the same bracket it shrinks as
above; once a counted candidate s separates them (count(x <= s) = a + 1), one more round
reads ``max(x <= s)`` and ``min(x > s)``, unless the brackets are already single values.
The worst case stays at 8 rounds for J = 15: after 7 rounds the bracket is at most 8
patterns wide, so the 8th counts every pattern in it.

``median_sample`` is TACO's "approx": the exact median of a fixed random sample.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

INF_BITS = 0x7F800000  # int32 bit pattern of +inf in float32
THRESHOLDS = (1, 3, 7, 15, 31)  # candidates per round: (J + 1) must be a power of two
_CHUNKS = 16  # a big leaf's count on CPU: unrolled compare-adds over 16 slices (~3.5x)
_CHUNK_MIN = 1 << 16  # ... for leaves of at least this many elements per task: a small
# leaf gains nothing at run time and its 16 slices per count cost compile time


class Selection(NamedTuple):
    """Result of ``select_middle``.

    Attributes:
      median: float32 ``[K]``.
      rounds: int32 scalar, the rounds (reads of the K x N data) it took.
    """
    median: jax.Array
    rounds: jax.Array


def _bits(v: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(v, jnp.float32)


def _int_bits(x: jax.Array) -> jax.Array:
    """int32 bit patterns of float32 ``x`` (int32 ``x`` as it is)."""
    return x if x.dtype == jnp.int32 else jax.lax.bitcast_convert_type(x, jnp.int32)


class _Counter:
    """Reductions over the int32 bit patterns of all elements of ``[K, ...]`` leaves, per
    task (integer compares: XLA CPU flushes sub-normal floats to zero in float compares)."""

    def __init__(self, leaves: Sequence[jax.Array]):
        self.k = leaves[0].shape[0]
        self.n = sum(int(np.prod(x.shape[1:])) for x in leaves)
        f32 = [x.astype(jnp.float32) for x in leaves]
        # On one CPU device each big leaf as [K, C, n/C] (+ a remainder): a reduction is
        # then C fused elementwise steps and one row reduction, ~3.5x faster on XLA CPU
        # than a plain row reduction. GPU/TPU reduce rows well, and with several devices
        # the leaves may be split over them (FSDP): the reshape and slices would move the
        # data between devices and copy it (16 GiB of temporaries for a 121 MiB/device
        # T5-base layer stack), so there each leaf is reduced in its own shape, in place,
        # and only the [K] counts are all-reduced.
        chunk = jax.default_backend() == "cpu" and jax.device_count() == 1
        self.small, self.chunked, self.rest = [], [], []
        for x in f32:
            if int(np.prod(x.shape[1:])) < _CHUNK_MIN:
                self.small.append(_int_bits(x).reshape(self.k, -1))
                continue
            if not chunk:  # float32 as it is: the bit cast is fused into each reduction
                self.rest.append(x)
                continue
            x = _int_bits(x).reshape(self.k, -1)
            m = x.shape[1] - x.shape[1] % _CHUNKS
            if m:
                self.chunked.append(x[:, :m].reshape(self.k, _CHUNKS, m // _CHUNKS))
            if m < x.shape[1]:
                self.rest.append(x[:, m:])

    def _reduce(self, elem, combine, row, init, big_only=False):
        total = init
        for x in (self.rest if big_only else self.small + self.rest):
            total = combine(total, row(elem(_int_bits(x))))
        for x in self.chunked:
            acc = functools.reduce(combine, [elem(x[:, i]) for i in range(_CHUNKS)])
            total = combine(total, row(acc))
        return total

    @staticmethod
    def _col(v, x):
        """v [K] shaped to broadcast against x [K, ...]."""
        return v.reshape((-1,) + (1,) * (x.ndim - 1))

    @staticmethod
    def _rows(a):
        return tuple(range(1, a.ndim))

    def count_le_many(self, t: jax.Array) -> jax.Array:
        """int32 [K, J]: elements with bit pattern <= t[k, j] (t: int32 [K, J]).

        A small leaf counts all J candidates in one reduction (one fusion to compile); a
        big one has a reduction per candidate, which GPU/TPU fuse into one read and which
        XLA CPU runs one after the other (below)."""
        total = jnp.zeros(t.shape, jnp.int32)
        for x in self.small:
            total = total + jnp.sum((x[:, :, None] <= t[:, None, :]).astype(jnp.int32), axis=1)
        if not (self.chunked or self.rest):
            return total
        if t.shape[1] == 1:
            return total + self.count_le(t[:, 0], big_only=True)[:, None]
        if jax.default_backend() == "cpu":
            # one count after the other: XLA CPU materialises each comparison in full
            # before reducing it, and J of them side by side would hold J copies of the
            # data (15 x 94 MiB for one [8, 4016, 768] leaf); one at a time, one copy
            count = lambda tj: self.count_le(tj, big_only=True)
            return total + jax.lax.map(count, t.T).T
        return total + jnp.stack([self.count_le(t[:, j], big_only=True)
                                  for j in range(t.shape[1])], axis=1)

    def count_le(self, v: jax.Array, big_only: bool = False) -> jax.Array:
        """int32 [K]: elements with bit pattern <= v[k] (v: int32 [K])."""
        c = self._col
        return self._reduce(lambda x: (x <= c(v, x)).astype(jnp.int32), jnp.add,
                            lambda a: jnp.sum(a, axis=self._rows(a)),
                            jnp.zeros((self.k,), jnp.int32), big_only)

    def max_le(self, v: jax.Array) -> jax.Array:
        """int32 [K]: the largest bit pattern <= v[k] (-1 where none)."""
        c = self._col
        return self._reduce(lambda x: jnp.where(x <= c(v, x), x, -1), jnp.maximum,
                            lambda a: jnp.max(a, axis=self._rows(a)),
                            jnp.full((self.k,), -1, jnp.int32))

    def min_gt(self, v: jax.Array) -> jax.Array:
        """int32 [K]: the smallest bit pattern > v[k] (+inf's where none)."""
        c = self._col
        return self._reduce(lambda x: jnp.where(x > c(v, x), x, INF_BITS), jnp.minimum,
                            lambda a: jnp.min(a, axis=self._rows(a)),
                            jnp.full((self.k,), INF_BITS, jnp.int32))


def _ceil_log2(w: jax.Array) -> jax.Array:
    """ceil(log2(w)) for int32 w >= 1."""
    return 32 - jax.lax.clz(w - 1)


def select_middle(leaves: Sequence[jax.Array], exclude_zeros: bool = False,
                  thresholds: int = 15) -> Selection:
    """Exact per-task median over all elements of non-negative ``[K, ...]`` leaves.

    Args:
      leaves: arrays ``[K, ...]`` with values >= 0 (+inf allowed, no NaN).
      exclude_zeros: the median of the non-zero elements only (0 where a task has none);
        the zero count is read in the first round.
      thresholds: candidates counted per round, J in (1, 3, 7, 15, 31): at most
        ceil(31 / log2(J + 1)) + 1 rounds, and at most 8 for J = 15 (module doc).
    Returns:
      ``Selection(median [K] float32, rounds)``; the median equals ``jnp.median`` (of the
      non-zero elements) up to the rounding of the mean of the two middle values.
    """
    if thresholds not in THRESHOLDS:
        raise ValueError(f"median thresholds per round must be one of {THRESHOLDS}, "
                         f"got {thresholds!r}")
    cnt = _Counter(leaves)
    k, n, jn = cnt.k, cnt.n, thresholds
    log_buckets = int(np.log2(jn + 1))
    max_rounds = -(-31 // log_buckets) + 1
    zero_bits = jnp.zeros((k,), jnp.int32)

    def ranks(zeros):
        n_eff = n - zeros
        a = jnp.minimum(zeros + jnp.maximum(n_eff - 1, 0) // 2, n - 1)  # n_eff = 0: any
        b = jnp.where(n_eff % 2 == 0, a + 1, a)
        return a, jnp.minimum(b, n - 1), n_eff

    def thresholds_of(lo, hi):
        width = hi - lo + 1
        shift = jnp.maximum(_ceil_log2(width) - log_buckets, 0)
        j = jnp.arange(1, jn + 1, dtype=jnp.int32)
        # lo - 1 + j * 2**shift, clipped to hi: j * 2**shift < 2**31, no int32 overflow
        return lo[:, None] - 1 + jnp.minimum(j[None] << shift[:, None], width[:, None])

    def narrow(state, t, c):
        """One round's counts -> the new brackets (or the separating candidate)."""
        lo, hi, c_lo, c_hi, a, b = (state[x] for x in ("lo", "hi", "c_lo", "c_hi", "a", "b"))
        t_ext = jnp.concatenate([(lo - 1)[:, None], t, hi[:, None]], axis=1)
        c_ext = jnp.concatenate([c_lo[:, None], c, c_hi[:, None]], axis=1)
        ja = jnp.sum(c_ext <= a[:, None], axis=1)  # x_(a) lies in (t_ext[ja-1], t_ext[ja]]
        jb = jnp.sum(c_ext <= b[:, None], axis=1)
        pick = lambda arr, i: jnp.take_along_axis(arr, i[:, None], axis=1)[:, 0]
        a_lo, a_hi = pick(t_ext, ja - 1) + 1, pick(t_ext, ja)
        b_lo, b_hi = pick(t_ext, jb - 1) + 1, pick(t_ext, jb)
        split = ja != jb
        single = (a_lo == a_hi) & (b_lo == b_hi)
        active = state["mode"] == 0
        new = dict(state)
        new["lo"] = jnp.where(active & ~split, a_lo, lo)
        new["hi"] = jnp.where(active & ~split, a_hi, hi)
        new["c_lo"] = jnp.where(active & ~split, pick(c_ext, ja - 1), c_lo)
        new["c_hi"] = jnp.where(active & ~split, pick(c_ext, ja), c_hi)
        new["sep"] = jnp.where(active & split, a_hi, state["sep"])
        done = active & (single | (~split & (a_lo == a_hi)))
        new["xa"] = jnp.where(done, a_hi, state["xa"])
        new["xb"] = jnp.where(done, b_hi, state["xb"])
        # mode: 0 counting, 1 separated (max/min round next), 2 done
        new["mode"] = jnp.where(done, 2, jnp.where(active & split, 1, state["mode"]))
        return new

    def count_round(state, extra_zero):
        t = thresholds_of(state["lo"], state["hi"])
        if extra_zero:
            t = jnp.concatenate([zero_bits[:, None], t], axis=1)
        c = cnt.count_le_many(t)
        return t, c

    def resolve(state):
        xa, xb = cnt.max_le(state["sep"]), cnt.min_gt(state["sep"])
        sel = state["mode"] == 1
        return dict(state, xa=jnp.where(sel, xa, state["xa"]),
                    xb=jnp.where(sel, xb, state["xb"]), mode=jnp.where(sel, 2, state["mode"]))

    init = dict(lo=zero_bits, hi=jnp.full((k,), INF_BITS, jnp.int32), c_lo=zero_bits,
                c_hi=jnp.full((k,), n, jnp.int32), sep=zero_bits, xa=zero_bits,
                xb=zero_bits, mode=zero_bits, a=zero_bits, b=zero_bits)
    # Round 1 (with the zero count when excluding zeros: it sets the ranks).
    t, c = count_round(init, exclude_zeros)
    zeros = c[:, 0] if exclude_zeros else zero_bits
    a, b, n_eff = ranks(zeros)
    state = narrow(dict(init, a=a, b=b), t, c)

    def body(carry):
        state, rounds = carry
        state = jax.lax.cond(jnp.any(state["mode"] == 1), resolve, lambda s: s, state)

        def counting(s):
            t, c = count_round(s, False)
            return narrow(s, t, c)

        state = jax.lax.cond(jnp.any(state["mode"] == 0), counting, lambda s: s, state)
        return state, rounds + 1

    def cond(carry):
        state, rounds = carry
        return jnp.any(state["mode"] != 2) & (rounds < max_rounds)

    state, rounds = jax.lax.while_loop(cond, body, (state, jnp.ones([], jnp.int32)))
    xa, xb = _bits(state["xa"]), _bits(state["xb"])
    med = jnp.where(state["a"] == state["b"], xa, 0.5 * (xa + xb))
    if exclude_zeros:
        med = jnp.where(n_eff == 0, 0.0, med)
    return Selection(med.astype(jnp.float32), rounds)


def median_select(leaves: Sequence[jax.Array], exclude_zeros: bool = False,
                  thresholds: int = 15) -> jax.Array:
    """``select_middle(...).median``: float32 ``[K]`` exact medians."""
    return select_middle(leaves, exclude_zeros, thresholds).median


def median_sort(leaves: Sequence[jax.Array], exclude_zeros: bool = False) -> jax.Array:
    """``jnp.median`` of the concatenation of all leaves (the literal definition)."""
    k = leaves[0].shape[0]
    x = jnp.concatenate([x.reshape(k, -1) for x in leaves], axis=1)
    if not exclude_zeros:
        return jnp.median(x, axis=1)
    med = jnp.nanmedian(jnp.where(x > 0, x, jnp.nan), axis=1)
    return jnp.where(jnp.isnan(med), 0.0, med)


def median_sample(leaves, idx_leaves, exclude_zeros: bool = False,
                  thresholds: int = 15) -> jax.Array:
    """The exact median of the elements at the flat indices ``idx_leaves`` (per leaf)."""
    k = leaves[0].shape[0]
    parts = [jnp.take(x.reshape(k, -1), i, axis=1) for x, i in zip(leaves, idx_leaves)
             if i.shape[0] > 0]
    return median_select([jnp.concatenate(parts, axis=1)], exclude_zeros, thresholds)


def _draw(sizes: Sequence[int], sample_size: int, seed: int):
    total = int(sum(sizes))
    glob = np.sort(np.random.default_rng(seed).integers(0, total, size=sample_size))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cuts = np.searchsorted(glob, starts)
    return glob, starts, cuts


@functools.lru_cache(maxsize=32)
def sample_counts(sizes: Tuple[int, ...], sample_size: int, seed: int) -> Tuple[int, ...]:
    """Elements of each leaf in ``draw_sample``'s sample (static: numpy, from the seed)."""
    _, _, cuts = _draw(sizes, sample_size, seed)
    return tuple(int(c) for c in np.diff(cuts))


def draw_sample(sizes: Sequence[int], sample_size: int, seed: int):
    """Uniform (with replacement) flat indices over all elements, bucketed per leaf.

    A leaf that draws no element gets the placeholder ``[-1]`` (a checkpoint cannot hold
    a zero-size array); ``sample_counts`` tells which leaves those are."""
    glob, starts, cuts = _draw(sizes, sample_size, seed)
    out = []
    for i in range(len(sizes)):
        idx = glob[cuts[i]:cuts[i + 1]] - starts[i]
        out.append(jnp.asarray(idx if len(idx) else [-1], jnp.int32))
    return out
