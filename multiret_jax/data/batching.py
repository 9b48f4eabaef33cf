"""One stacked training batch per step, for the per-task gradient vmapped over tasks.

``MixingSampler.batch(step)`` gives every task ``k`` a sub-batch of ``B_k`` example
indices (sizes differ, e.g. 11-17), and every task has its own query length (32 most, 64
FEVER, 128 AIDA, 256 WoW).  ``jax.vmap`` over a leading task axis ``K`` needs equal
shapes, so ``build_step_batch`` pads every task to ``B = max_k B_k`` rows and every query
to one length ``Lq`` (the largest task query length, or ``query_len``):

* padded rows have ``query_mask == 0``; ``nce_loss`` gives them no loss, no gradient, and
  does not use their passages as candidates.  Their token ids are all pad tokens, their
  attention masks all zero, their passage rows ``-1``;
* missing hard negatives (``-1`` in the negative table, or fewer than ``num_negatives``
  columns) have ``negative_mask == 0`` and the same all-pad / all-zero-mask tokens.

All-padding rows and the encoders: a row whose attention mask is all zero must not give
NaN (NaN times a zero mask is still NaN in the loss and the gradient).  BERT's additive
attention mask uses a large *finite* value (``bert._MASK_VALUE``) and T5 uses
``finfo.min`` via ``jnp.where``: all scores of such a row are equal, the softmax is
uniform and finite.  Mean pooling divides by ``max(count, 1)``.  So the rows are finite
garbage that the masks discard; the tests check the loss equals the unpadded one.

Positives: DPR trains with one positive per query; it is drawn uniformly from the
example's ``positives`` with the given seeded ``np.random.Generator`` (one draw per
example, tasks and examples in order, so a seeded rng gives the same batch).  Hard
negatives are the first ``num_negatives`` columns of the task's table, assumed to exclude
the gold passages already; ``positive_rows`` / ``negative_rows`` let the loss remove a
candidate equal to a query's positive (false-negative masking by id).

``padding_waste`` measures what the equal shapes cost compared with an unrolled per-task
path (each task at its own ``B_k`` and query length).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import TrainingExample
from multiret_jax.data.tasks import Task, query_format
from multiret_jax.data.tokenization import Tokenization


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One task's training data.

    Attributes:
      task: the task (prefix / type marker, max query length).
      examples: its training examples (the sampler's indices point into this list).
      hard_negatives: int64 [N_k, H] passage rows, ``-1`` for missing; None = none.
    """

    task: Task
    examples: Sequence[TrainingExample]
    hard_negatives: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.hard_negatives is not None:
            neg = np.asarray(self.hard_negatives, np.int64)
            if neg.ndim != 2 or neg.shape[0] != len(self.examples):
                raise ValueError(f"task {self.task.name!r}: hard_negatives must be [N_k, H] with "
                                 f"N_k = {len(self.examples)} examples, got {neg.shape}")
            object.__setattr__(self, "hard_negatives", neg)

    def negatives(self, idx: np.ndarray, num_negatives: int) -> np.ndarray:
        """[len(idx), num_negatives] rows, ``-1`` padded."""
        out = np.full((len(idx), num_negatives), -1, np.int64)
        if self.hard_negatives is not None and num_negatives:
            cols = self.hard_negatives[idx, :num_negatives]
            out[:, :cols.shape[1]] = cols
        return out


@dataclasses.dataclass
class StepBatch:
    """A stacked step batch; arrays have a leading task axis K (order ``tasks``).

    ``query_ids/query_mask_tokens [K,B,Lq]``, ``pos_ids/pos_mask [K,B,Lp]``,
    ``neg_ids/neg_mask [K,B,H,Lp]`` (int32 tokens and attention masks);
    ``query_mask [K,B]`` row validity, ``negative_mask [K,B,H]`` (int32 0/1);
    ``positive_rows [K,B]``, ``negative_rows [K,B,H]`` (int64 passage rows, -1 padding);
    ``task_counts [K]`` (= B_k); ``task_query_lens [K]`` each task's own query length;
    in the union layout (``data/union.py``) the task axis is 1 and ``row_tasks [1,B]``
    gives each row's task index (-1 for padding).
    """

    tasks: Tuple[str, ...]
    query_ids: np.ndarray
    query_mask_tokens: np.ndarray
    pos_ids: np.ndarray
    pos_mask: np.ndarray
    neg_ids: np.ndarray
    neg_mask: np.ndarray
    query_mask: np.ndarray
    negative_mask: np.ndarray
    positive_rows: np.ndarray
    negative_rows: np.ndarray
    task_counts: np.ndarray
    task_query_lens: np.ndarray
    row_tasks: Optional[np.ndarray] = None  # union layout only (``data/union.py``)

    ARRAY_FIELDS = ("query_ids", "query_mask_tokens", "pos_ids", "pos_mask", "neg_ids",
                    "neg_mask", "query_mask", "negative_mask", "positive_rows",
                    "negative_rows", "task_counts")

    def arrays(self) -> Dict[str, np.ndarray]:
        """The array fields as a dict (a pytree to feed a jitted / vmapped step), with
        ``row_tasks`` in the union layout."""
        out = {f: getattr(self, f) for f in self.ARRAY_FIELDS}
        if self.row_tasks is not None:
            out["row_tasks"] = self.row_tasks
        return out


def _passage_texts(table: PassageTable, rows: Sequence[int]) -> List[str]:
    # Same strings as ``table.contents()`` (title + " " + text), for the needed rows only.
    return [f"{table.titles[r]} {table.texts[r]}" for r in rows]


def build_step_batch(step_indices: Mapping[str, np.ndarray], task_data: Mapping[str, TaskData],
                     tokenizer: Tokenization, table: PassageTable, passage_len: int,
                     num_negatives: int, marker="prefix", *,
                     rng: np.random.Generator, query_len: Optional[int] = None,
                     row_multiple: int = 1) -> StepBatch:
    """Stacks one step's per-task sub-batches into equal-shape arrays (see module doc).

    Args:
      step_indices: ``{task: example indices}`` (``MixingSampler.batch(step)``); its
        order is the order of the K axis.
      task_data: ``{task: TaskData}``, covering every task of ``step_indices``.
      tokenizer: the tokenizer; queries are formatted with ``marker``.
      table: the passage table the positive / negative rows point into.
      passage_len: passage length in tokens (title + text, truncated, padded).
      num_negatives: hard negatives per example ``H`` (missing ones are masked).
      marker: a ``QueryFormat`` or a marker name (``"prefix"``, ``"type"``, ``"none"``).
      rng: seeded generator choosing one positive per example.
      query_len: common query length; default the largest task query length
        (``Tokenization.query_length``, the marker's tokens added when the format
        leaves them out of the task's length).  Tasks
        with a longer max length are truncated to it (keeping the closing [SEP]).
      row_multiple: pad the per-task rows ``B`` up to a multiple of this (e.g. the
        number of data-parallel devices, so the rows split evenly across them).
    Returns:
      A ``StepBatch``.
    Raises:
      ValueError: no tasks, a task without TaskData, an example without positives,
        bad lengths or ``num_negatives``.
      IndexError: an example index outside the task's examples.
    """
    names = list(step_indices)
    if not names:
        raise ValueError("build_step_batch: step_indices has no tasks")
    missing = [t for t in names if t not in task_data]
    if missing:
        raise ValueError(f"build_step_batch: no TaskData for task(s) {missing}; "
                         f"task_data has {sorted(task_data)}")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if passage_len <= 0:
        raise ValueError(f"passage_len must be > 0, got {passage_len}")
    idx = {t: np.asarray(step_indices[t], np.int64).reshape(-1) for t in names}
    for t in names:
        n = len(task_data[t].examples)
        if idx[t].size and (idx[t].min() < 0 or idx[t].max() >= n):
            raise IndexError(f"task {t!r}: example index out of range [0, {n}): {idx[t]}")
    fmt = query_format(marker)
    own_len = [tokenizer.query_length(task_data[t].task, fmt) for t in names]
    lq = int(query_len) if query_len is not None else max(own_len)
    if lq <= 0:
        raise ValueError(f"query_len must be > 0, got {query_len}")
    k, h, lp = len(names), int(num_negatives), int(passage_len)
    b = max(max(idx[t].size for t in names), 1)
    if row_multiple < 1:
        raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
    b = -(-b // row_multiple) * row_multiple
    pad = tokenizer.pad_id

    query_ids = np.full((k, b, lq), pad, np.int32)
    query_tok = np.zeros((k, b, lq), np.int32)
    pos_ids = np.full((k, b, lp), pad, np.int32)
    pos_tok = np.zeros((k, b, lp), np.int32)
    neg_ids = np.full((k, b, h, lp), pad, np.int32)
    neg_tok = np.zeros((k, b, h, lp), np.int32)
    query_mask = np.zeros((k, b), np.int32)
    positive_rows = np.full((k, b), -1, np.int64)
    negative_rows = np.full((k, b, h), -1, np.int64)
    counts = np.zeros((k,), np.int32)
    task_lens = np.zeros((k,), np.int32)

    for ki, t in enumerate(names):
        data, ii = task_data[t], idx[t]
        n = ii.size
        counts[ki] = n
        task_lens[ki] = min(own_len[ki], lq)
        if n == 0:
            continue
        exs = [data.examples[i] for i in ii]
        for ex in exs:
            if len(ex.positives) == 0:
                raise ValueError(f"task {t!r}: example {ex.id!r} has no positive passage")
        pos = np.asarray([int(ex.positives[rng.integers(len(ex.positives))]) for ex in exs],
                         np.int64)
        negs = data.negatives(ii, h)
        query_mask[ki, :n] = 1
        positive_rows[ki, :n] = pos
        negative_rows[ki, :n] = negs

        texts = [fmt.text(data.task, ex.query) for ex in exs]
        qi, qm = tokenizer.encode(texts, int(task_lens[ki]))
        query_ids[ki, :n, :qi.shape[1]] = qi
        query_tok[ki, :n, :qi.shape[1]] = qm
        pi, pm = tokenizer.encode(_passage_texts(table, pos), lp)
        pos_ids[ki, :n], pos_tok[ki, :n] = pi, pm
        real = np.argwhere(negs >= 0)  # (example, column) of the real negatives
        if real.size:
            ni, nm = tokenizer.encode(_passage_texts(table, negs[real[:, 0], real[:, 1]]), lp)
            neg_ids[ki, real[:, 0], real[:, 1]] = ni
            neg_tok[ki, real[:, 0], real[:, 1]] = nm

    return StepBatch(tuple(names), query_ids, query_tok, pos_ids, pos_tok, neg_ids, neg_tok,
                     query_mask, (negative_rows >= 0).astype(np.int32), positive_rows,
                     negative_rows, counts, task_lens)


def padding_waste(batch: StepBatch) -> Dict[str, float]:
    """What the stacked (vmap) batch spends on padding.

    Returns:
      ``rows``: fraction of the K*B rows that are padding;
      ``query_tokens`` / ``passage_tokens``: fraction of the query / passage token slots
        (positives and hard-negative slots together) with attention mask 0;
      ``query_slots_vs_unrolled`` / ``passage_slots_vs_unrolled``: fraction of the
        stacked token slots an unrolled per-task path (task k at ``B_k`` rows, its own
        query length, its present hard-negative columns) would not compute, i.e. the
        extra encoder work of the vmap path;
      ``query_slot_ratio`` / ``passage_slot_ratio``: stacked / unrolled slots.
    """
    k, b, lq = batch.query_ids.shape
    h, lp = batch.neg_ids.shape[2], batch.pos_ids.shape[-1]
    counts = batch.task_counts.astype(np.int64)
    q_slots = k * b * lq
    p_slots = k * b * (1 + h) * lp
    q_unrolled = int(np.sum(counts * batch.task_query_lens.astype(np.int64)))
    p_unrolled = int(np.sum(counts)) * (1 + h) * lp
    real_p = int(batch.pos_mask.sum()) + int(batch.neg_mask.sum())

    def frac(x, total):
        return float(x) / total if total else 0.0

    return {
        "rows": 1.0 - frac(int(counts.sum()), k * b),
        "query_tokens": 1.0 - frac(int(batch.query_mask_tokens.sum()), q_slots),
        "passage_tokens": 1.0 - frac(real_p, p_slots),
        "query_slots_vs_unrolled": 1.0 - frac(q_unrolled, q_slots),
        "passage_slots_vs_unrolled": 1.0 - frac(p_unrolled, p_slots),
        "query_slot_ratio": frac(q_slots, q_unrolled),
        "passage_slot_ratio": frac(p_slots, p_unrolled),
    }
