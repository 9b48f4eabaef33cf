"""Union batching (MT-DPR, Maillard et al. 2021): batches drawn from the union of all tasks'
training examples, trained with ONE NCE over the whole mixed batch.

MT-DPR trains "on the union of the (downsampled) datasets": every step takes ``B`` examples
(128) from one shuffled list of all tasks' examples, so a task's share of a step follows its
share of the data (and varies from step to step), every example weighs the same in the loss,
and each query's in-batch negatives are the positives and hard negatives of all ``B``
queries, whatever their task. This differs from TACO's per-task batches
(``mixing.MixingSampler``: a fixed sub-batch per task, one loss per task, tasks weighted
by the multitask transform).

``UnionSampler`` is stateless like ``MixingSampler``: the union's order in epoch ``e`` is a
permutation seeded by ``(seed, "union", e)``, and ``batch(step)`` reads positions
``[step*B, (step+1)*B)`` of the concatenated epochs, so resuming needs only the step.
``union_batch`` turns a per-task ``StepBatch`` of one step into the union layout: a task
axis of 1 holding the ``B`` real rows (task by task), with ``row_tasks`` naming each row's
task (its query tower and the per-task losses logged).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from multiret_jax.data.batching import StepBatch
from multiret_jax.data.mixing import epoch_permutation


class UnionSampler:
    """Batches of ``global_batch`` examples from the union of the tasks' examples.

    Args:
      task_sizes: ``{task: N_k}`` examples per task (after any downsampling); its order is
        the order of the union (and of the task axis of the per-task indices returned).
      global_batch: examples per step.
      seed: non-negative integer seed of the epoch permutations.
    """

    def __init__(self, task_sizes: Mapping[str, int], global_batch: int, seed: int = 0):
        if not task_sizes:
            raise ValueError("UnionSampler: no tasks given")
        bad = {t: n for t, n in task_sizes.items() if int(n) < 1}
        if bad:
            raise ValueError(f"UnionSampler: every task needs >= 1 example, got {bad}")
        if int(global_batch) < 1:
            raise ValueError(f"UnionSampler: global_batch must be >= 1, got {global_batch}")
        self.task_names: Tuple[str, ...] = tuple(task_sizes)
        self.num_examples: Dict[str, int] = {t: int(n) for t, n in task_sizes.items()}
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        sizes = np.asarray([self.num_examples[t] for t in self.task_names], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.total = int(self._offsets[-1])
        self.steps_per_epoch = -(-self.total // self.global_batch)
        self._cache: Dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {e: p for e, p in self._cache.items() if e == epoch - 1}
            self._cache[epoch] = epoch_permutation(self.total, self.seed, "union", epoch)
        return self._cache[epoch]

    def positions(self, step: int) -> np.ndarray:
        """Union positions (0 .. total-1) of ``step``'s examples."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start, end = step * self.global_batch, (step + 1) * self.global_batch
        parts, pos = [], start
        while pos < end:
            epoch, off = divmod(pos, self.total)
            take = min(self.total - off, end - pos)
            parts.append(self._perm(epoch)[off:off + take])
            pos += take
        return np.concatenate(parts)

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        """``{task: example indices}`` of step ``step`` (every task, possibly empty),
        sorted within a task; together ``global_batch`` examples."""
        pos = np.sort(self.positions(int(step)))
        task_of = np.searchsorted(self._offsets, pos, side="right") - 1
        return {t: pos[task_of == k] - self._offsets[k] for k, t in enumerate(self.task_names)}


UNION_FIELDS = ("query_ids", "query_mask_tokens", "pos_ids", "pos_mask", "neg_ids", "neg_mask",
                "query_mask", "negative_mask", "positive_rows", "negative_rows")


def union_batch(batch: StepBatch, rows: int, pad_id: int) -> StepBatch:
    """The union layout of a per-task step batch: its real rows, task by task, as ONE group
    (task axis of size 1) padded to ``rows`` rows, with ``row_tasks [1, rows]`` (the task
    index of each row, -1 for padding). ``task_counts`` stays per task ([K], for logging);
    the query length is the batch's common one (each query already truncated to its task's).
    Padding rows are built like ``build_step_batch``'s: ``pad_id`` tokens, zero masks.

    Raises:
      ValueError: more real rows than ``rows``.
    """
    counts = np.asarray(batch.task_counts, np.int64)
    n = int(counts.sum())
    if n > rows:
        raise ValueError(f"union_batch: {n} real rows do not fit in {rows}")
    take = [(k, i) for k, c in enumerate(counts) for i in range(int(c))]
    ks = np.asarray([k for k, _ in take], np.int64)
    iis = np.asarray([i for _, i in take], np.int64)
    out = {}
    for f in UNION_FIELDS:
        x = getattr(batch, f)
        fill = {"positive_rows": -1, "negative_rows": -1, "query_ids": pad_id,
                "pos_ids": pad_id, "neg_ids": pad_id}.get(f, 0)
        y = np.full((1, rows) + x.shape[2:], fill, x.dtype)
        y[0, :n] = x[ks, iis]
        out[f] = y
    row_tasks = np.full((1, rows), -1, np.int32)
    row_tasks[0, :n] = ks
    return StepBatch(batch.tasks, task_counts=batch.task_counts,
                     task_query_lens=batch.task_query_lens, row_tasks=row_tasks, **out)
