"""Multi-task mixing sampler (TACO, Zhang et al. 2023; MT-DPR, Maillard et al. 2021).

Every training step draws one sub-batch from *every* task.  Task ``k`` with ``N_k``
training examples gets a sub-batch of ``B_k`` examples, with

    B_k  proportional to  (N_k / N) ** (1 / c),        N = sum_k N_k,

rounded to integers ``>= 1`` that sum exactly to the global batch (largest-remainder
method).  ``c = 1`` is proportional mixing, ``c = inf`` (or ``None``) uniform mixing;
TACO uses ``c = 4``.  Huge tasks can first be downsampled to a ``cap`` of examples.

Sampling is *stateless*: the index stream of a task is the concatenation of
permutations for its epochs 0, 1, 2, ..., the permutation of ``(task, epoch)`` being
drawn from a Generator seeded by ``(seed, crc32(task), epoch)``.  ``batch(step)`` is
computed by random access into these streams, so resuming at any step gives exactly
the batches an uninterrupted run would have produced; the only resume state is the
step number (see ``MixingSampler.state_dict``).
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np

SizesLike = Union[Mapping[str, int], Sequence[int]]

# Distinguishes the downsampling RNG stream from the (seed, crc, epoch) permutation ones.
_DOWNSAMPLE_SPAWN_KEY = 0x0D5A


def stable_task_hash(task_name: str) -> int:
    """A process-independent 32-bit hash of ``task_name`` (``zlib.crc32`` of UTF-8)."""
    return zlib.crc32(task_name.encode("utf-8")) & 0xFFFFFFFF


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def _largest_remainder(targets: np.ndarray, total: int) -> List[int]:
    """Rounds non-negative real ``targets`` (summing to ``total``) to integers summing to
    ``total``: floor, then +1 for the largest fractional parts, ties by position."""
    floors = np.floor(targets + 1e-9).astype(np.int64)
    # Round the remainders so float noise (e.g. 3.33333 vs 3.33334) does not break ties.
    fracs = np.round(targets - floors, 9)
    left = total - int(floors.sum())
    order = sorted(range(len(targets)), key=lambda i: (-fracs[i], i))
    out = floors.copy()
    for i in order[:left]:
        out[i] += 1
    return [int(x) for x in out]


def task_batch_sizes(sizes: SizesLike, global_batch: int,
                     c: Optional[float] = 4.0) -> Union[Dict[str, int], List[int]]:
    """Per-task sub-batch sizes ``B_k`` proportional to ``(N_k / N) ** (1 / c)``.

    Real-valued targets ``t_k = global_batch * w_k / sum(w)`` are rounded with the
    largest-remainder method (floor, then +1 to the largest fractional remainders, ties
    broken by task order), so the result sums exactly to ``global_batch``.  Every task
    gets at least 1: tasks whose target is below 1 are pinned to 1 and the remaining
    budget is re-shared among the others in proportion to their weights (only then can a
    ``B_k`` differ from the unconstrained target by more than 1).

    Args:
      sizes: number of examples per task, a ``{task: N_k}`` mapping or a sequence.
      global_batch: total examples per step (sum of the ``B_k``).
      c: temperature; 1 = proportional, ``math.inf`` or ``None`` = uniform.
    Returns:
      ``{task: B_k}`` in the mapping's order, or a list if ``sizes`` is a sequence.
    Raises:
      ValueError: negative or zero task sizes (the task is named), no tasks,
        ``global_batch`` smaller than the number of tasks, or ``c <= 0``.
    """
    if isinstance(sizes, Mapping):
        names = [str(k) for k in sizes.keys()]
        values = [sizes[k] for k in sizes.keys()]
    else:
        values = list(sizes)
        names = [f"#{i}" for i in range(len(values))]
    if not values:
        raise ValueError("task_batch_sizes: no tasks given")
    ns = []
    for name, n in zip(names, values):
        n = int(n)
        if n < 0:
            raise ValueError(f"task {name!r}: negative number of examples ({n})")
        if n == 0:
            raise ValueError(f"task {name!r} is empty (0 examples); drop it from the mixture")
        ns.append(n)
    k = len(ns)
    global_batch = int(global_batch)
    if global_batch < k:
        raise ValueError(f"global_batch={global_batch} is smaller than the number of tasks "
                         f"({k}); every task needs a sub-batch of at least 1")
    uniform = c is None or (isinstance(c, (int, float)) and math.isinf(c) and c > 0)
    if not uniform and not c > 0:
        raise ValueError(f"temperature c must be > 0 (or inf/None for uniform), got {c}")

    n_arr = np.asarray(ns, dtype=np.float64)
    if uniform:
        weights = np.ones(k, dtype=np.float64)
    else:
        weights = (n_arr / n_arr.sum()) ** (1.0 / float(c))

    pinned = np.zeros(k, dtype=bool)
    while True:
        budget = global_batch - int(pinned.sum())
        free_w = np.where(pinned, 0.0, weights)
        targets = np.where(pinned, 1.0, budget * free_w / free_w.sum())
        newly = (~pinned) & (targets < 1.0)
        if not newly.any():
            break
        pinned |= newly
    free_idx = np.flatnonzero(~pinned)
    result = np.ones(k, dtype=np.int64)
    if free_idx.size:
        rounded = _largest_remainder(targets[free_idx], global_batch - int(pinned.sum()))
        result[free_idx] = rounded
    out = [int(x) for x in result]
    assert sum(out) == global_batch and min(out) >= 1
    if isinstance(sizes, Mapping):
        return dict(zip(sizes.keys(), out))
    return out


def downsample(indices_or_n: Union[int, Sequence[int], np.ndarray], cap: Optional[int],
               seed: int, task_name: str) -> np.ndarray:
    """Deterministic random subset of at most ``cap`` examples of a task.

    The subset is drawn without replacement by a numpy Generator seeded from
    ``(seed, crc32(task_name))`` (a stream separate from the epoch permutations), so it
    is identical across processes and runs.

    Args:
      indices_or_n: the number of examples ``N`` (meaning indices ``0..N-1``) or an
        array of example indices.
      cap: maximum subset size; ``None`` keeps everything.
      seed: non-negative integer seed.
      task_name: the task, so different tasks get independent subsets.
    Returns:
      int64 array of ``min(N, cap)`` indices, kept in their input order (sorted
      ascending when the input is ``N`` or a sorted array).
    """
    seed = _check_seed(seed)
    if isinstance(indices_or_n, (int, np.integer)):
        if indices_or_n < 0:
            raise ValueError(f"task {task_name!r}: negative number of examples ({indices_or_n})")
        arr = np.arange(int(indices_or_n), dtype=np.int64)
    else:
        arr = np.asarray(indices_or_n, dtype=np.int64).reshape(-1)
    if cap is None or arr.size <= int(cap):
        return arr.copy()
    cap = int(cap)
    if cap < 1:
        raise ValueError(f"task {task_name!r}: cap must be >= 1, got {cap}")
    ss = np.random.SeedSequence(entropy=[seed, stable_task_hash(task_name)],
                                spawn_key=(_DOWNSAMPLE_SPAWN_KEY,))
    pos = np.sort(np.random.default_rng(ss).choice(arr.size, size=cap, replace=False))
    return arr[pos]


def epoch_permutation(num_examples: int, seed: int, task_name: str, epoch: int) -> np.ndarray:
    """The permutation of ``range(num_examples)`` used for ``(task, epoch)``: drawn from
    ``np.random.default_rng([seed, crc32(task_name), epoch])``."""
    rng = np.random.default_rng([_check_seed(seed), stable_task_hash(task_name), int(epoch)])
    return rng.permutation(int(num_examples)).astype(np.int64)


@gin.configurable
class MixingSampler:
    """Stateless multi-task batch sampler: each step yields one sub-batch per task.

    Task ``k`` has ``N_k`` examples (after optional downsampling to ``cap``) and sub-batch
    size ``B_k`` (``task_batch_sizes`` or an explicit override).  Step ``s`` of task ``k``
    takes positions ``[s*B_k, (s+1)*B_k)`` of the task's stream ``perm(epoch 0) ++
    perm(epoch 1) ++ ...``; small tasks therefore cycle, and a sub-batch crossing an epoch
    boundary takes the tail of one permutation and the head of the next.

    Resume: ``batch(step)`` depends only on the constructor arguments and ``step``, so
    resuming needs just the step number.  Either call ``iterate(start_step=step)``, or
    save ``state_dict()`` (``{"step", "seed", "batch_sizes"}``) and restore it with
    ``load_state_dict`` / ``MixingSampler.from_state`` before iterating with ``iter``.

    Args:
      task_sizes: ``{task_name: N_k}``, the number of training examples of each task.
      global_batch: total examples per step; optional when ``batch_sizes`` is given
        (then it must equal their sum if given).
      c: mixing temperature (1 proportional, 4 TACO, ``inf``/``None`` uniform).
      seed: non-negative integer seed for permutations and downsampling.
      cap: downsample tasks larger than this (an int for all tasks, or a
        ``{task: cap}`` mapping); ``None`` keeps all examples.
      batch_sizes: explicit ``{task: B_k}`` overriding the temperature rule.
    """

    def __init__(self, task_sizes: Mapping[str, int] = gin.REQUIRED,
                 global_batch: Optional[int] = None, c: Optional[float] = 4.0,
                 seed: int = 0, cap: Union[None, int, Mapping[str, int]] = None,
                 batch_sizes: Optional[Mapping[str, int]] = None):
        if not task_sizes:
            raise ValueError("MixingSampler: no tasks given")
        self.seed = _check_seed(seed)
        self.c = c
        self.task_names: Tuple[str, ...] = tuple(task_sizes.keys())
        self.original_sizes: Dict[str, int] = {}
        self._subsets: Dict[str, Optional[np.ndarray]] = {}
        self.num_examples: Dict[str, int] = {}
        if isinstance(cap, Mapping):
            unknown = sorted(set(cap) - set(self.task_names))
            if unknown:
                raise ValueError(f"cap names unknown task(s) {unknown}; "
                                 f"tasks: {list(self.task_names)}")
        for name in self.task_names:
            n = int(task_sizes[name])
            if n < 0:
                raise ValueError(f"task {name!r}: negative number of examples ({n})")
            if n == 0:
                raise ValueError(f"task {name!r} is empty (0 examples); drop it from the mixture")
            self.original_sizes[name] = n
            task_cap = cap.get(name) if isinstance(cap, Mapping) else cap
            if task_cap is not None and n > int(task_cap):
                subset = downsample(n, int(task_cap), self.seed, name)
                subset.setflags(write=False)
                self._subsets[name] = subset
                self.num_examples[name] = int(subset.size)
            else:
                self._subsets[name] = None
                self.num_examples[name] = n

        if batch_sizes is not None:
            unknown = sorted(set(batch_sizes) - set(self.task_names))
            if unknown:
                raise ValueError(f"batch_sizes names unknown task(s) {unknown}; "
                                 f"tasks: {list(self.task_names)}")
            missing = [t for t in self.task_names if t not in batch_sizes]
            if missing:
                raise ValueError(f"batch_sizes is missing task(s) {missing}")
            bs = {t: int(batch_sizes[t]) for t in self.task_names}
            bad = {t: b for t, b in bs.items() if b < 1}
            if bad:
                raise ValueError(f"batch_sizes must be >= 1, got {bad}")
            total = sum(bs.values())
            if global_batch is not None and int(global_batch) != total:
                raise ValueError(f"global_batch={global_batch} but explicit batch_sizes sum "
                                 f"to {total}")
            self.batch_sizes: Dict[str, int] = bs
        else:
            if global_batch is None:
                raise ValueError("MixingSampler needs global_batch (or explicit batch_sizes)")
            self.batch_sizes = task_batch_sizes(self.num_examples, int(global_batch), c)
        self.global_batch: int = sum(self.batch_sizes.values())
        self.steps_per_epoch: int = max(
            -(-self.num_examples[t] // self.batch_sizes[t]) for t in self.task_names)
        self.step: int = 0  # next step ``iter(self)`` yields; see ``state_dict``.
        self._perm_cache: Dict[Tuple[str, int], np.ndarray] = {}

    # ----------------------------------------------------------------- sampling
    def _perm(self, task: str, epoch: int) -> np.ndarray:
        key = (task, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = epoch_permutation(self.num_examples[task], self.seed, task, epoch)
            perm.setflags(write=False)
            # Keep at most two epochs per task (the current one and the next).
            stale = [k for k in self._perm_cache
                     if k[0] == task and k[1] not in (epoch - 1, epoch)]
            for old in stale:
                del self._perm_cache[old]
            self._perm_cache[key] = perm
        return perm

    def task_batch(self, task: str, step: int) -> np.ndarray:
        """Indices (into the task's possibly downsampled list) of ``task`` at ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, b = self.num_examples[task], self.batch_sizes[task]
        start, end = step * b, (step + 1) * b
        parts = []
        pos = start
        while pos < end:
            epoch, off = divmod(pos, n)
            take = min(n - off, end - pos)
            parts.append(self._perm(task, epoch)[off:off + take])
            pos += take
        return np.concatenate(parts).astype(np.int64, copy=False)

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        """Sub-batches of step ``step``.

        Args:
          step: global training step (>= 0).
        Returns:
          ``{task: int64 array of B_k example indices}`` in task order; indices refer
          to the task's (possibly downsampled) list, see ``to_original``.
        """
        step = int(step)
        return {t: self.task_batch(t, step) for t in self.task_names}

    def to_original(self, task: str, indices: np.ndarray) -> np.ndarray:
        """Maps indices into ``task``'s downsampled list back to original example indices
        (the identity when the task was not downsampled)."""
        idx = np.asarray(indices, dtype=np.int64)
        subset = self._subsets[task]
        return idx.copy() if subset is None else subset[idx]

    def original_batch(self, step: int) -> Dict[str, np.ndarray]:
        """Like ``batch`` but with indices into the original (not downsampled) datasets."""
        return {t: self.to_original(t, idx) for t, idx in self.batch(step).items()}

    def subset(self, task: str) -> Optional[np.ndarray]:
        """The kept original indices of a downsampled task, or ``None`` if not downsampled."""
        return self._subsets[task]

    def epoch_of(self, step: int) -> int:
        """Sampler epoch of ``step``: ``step // steps_per_epoch`` (epochs of the task
        that takes the most steps to cover)."""
        return int(step) // self.steps_per_epoch

    def task_epoch_of(self, task: str, step: int) -> int:
        """Epoch of ``task``'s own stream that the first example of ``step`` falls in."""
        return int(step) * self.batch_sizes[task] // self.num_examples[task]

    def iterate(self, start_step: int = 0,
                num_steps: Optional[int] = None) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
        """Yields ``(step, batch(step))`` from ``start_step``; forever if ``num_steps`` is
        None.  Does not touch ``self.step``."""
        step = int(start_step)
        if step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        stop = None if num_steps is None else step + int(num_steps)
        while stop is None or step < stop:
            yield step, self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
        """Infinite iteration from ``self.step``, advancing ``self.step`` as it goes."""
        while True:
            step = self.step
            out = self.batch(step)
            self.step = step + 1
            yield step, out

    # ------------------------------------------------------------------- resume
    def state_dict(self) -> Dict[str, object]:
        """Resume state: ``{"step": next step, "seed", "batch_sizes"}`` (only ``step`` is
        needed; the others are checked on load to catch a mismatched configuration)."""
        return {"step": int(self.step), "seed": self.seed, "batch_sizes": dict(self.batch_sizes)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restores ``state_dict()`` output (or just ``{"step": s}``)."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, sampler has {self.seed}")
        if "batch_sizes" in state and dict(state["batch_sizes"]) != self.batch_sizes:
            raise ValueError(f"sampler state has batch sizes {state['batch_sizes']}, "
                             f"sampler has {self.batch_sizes}")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.step = step

    @classmethod
    def from_state(cls, state: Mapping[str, object], **kwargs) -> "MixingSampler":
        """Builds a sampler with ``kwargs`` (the constructor arguments) and loads ``state``."""
        sampler = cls(**kwargs)
        sampler.load_state_dict(state)
        return sampler

    def __repr__(self) -> str:
        return (f"MixingSampler(tasks={list(self.task_names)}, batch_sizes={self.batch_sizes}, "
                f"num_examples={self.num_examples}, c={self.c}, seed={self.seed}, "
                f"steps_per_epoch={self.steps_per_epoch})")
