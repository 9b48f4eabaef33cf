"""The trainer's inputs: training examples per task with their BM25 hard negatives, and
the vocabulary a run trains with (given, inherited from ``init_from`` or the checkpoint,
else built from the corpus and kept in ``model_dir``)."""

from __future__ import annotations

import os
import random
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax

from multiret_jax.data import kilt
from multiret_jax.data.batching import TaskData
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.mixing import downsample
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import training_examples
from multiret_jax.data.tasks import Task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.training import distributed


def load_task_data(data_dir: str, table: PassageTable, tasks: Sequence[Task], bm25: BM25Cache,
                   num_negatives: int, min_bleu: Optional[float],
                   max_examples: Optional[int] = None, seed: int = 0,
                   caps: Optional[Mapping[str, int]] = None
                   ) -> Tuple[Dict[str, TaskData], Dict[str, int]]:
    """Training examples per task with their top BM25 hard negatives, and each task's
    number of examples before ``caps``.

    The negatives come from ``bm25`` (``data/bm25_cache.py``): computed once per data and
    settings, then reused. With several processes, process 0 computes them first and the
    others then read its files (or compute them too, where the cache is not shared).

    ``max_examples`` keeps a seeded random subset of that many examples per task
    (few-shot fine-tuning: 128 / 1,024). ``caps`` (``{task: cap}``, TACO's downsampling of
    T-REx and zsRE) then keeps a seeded random subset of at most ``cap`` examples
    (``mixing.downsample``: the same subset on every process and every resume), before
    the BM25 search, so the dropped examples cost nothing."""
    examples_of, sizes = {}, {}
    for task in tasks:
        path = os.path.join(data_dir, task.filename("train"))
        records = kilt.read_task_file(path)
        if not records:
            raise ValueError(f"{path}: empty task file (no records) for task {task.name!r}")
        examples, stats = training_examples(records, table, min_bleu=min_bleu, name=task.name)
        if not examples:
            raise ValueError(f"{path}: no usable training examples for task {task.name!r} "
                             f"({stats.summary()})")
        if max_examples is not None and len(examples) > max_examples:
            keep = sorted(random.Random(f"{seed}/{task.name}").sample(range(len(examples)),
                                                                       max_examples))
            examples = [examples[i] for i in keep]
        sizes[task.name] = len(examples)
        cap = (caps or {}).get(task.name)
        if cap is not None and len(examples) > cap:
            examples = [examples[i] for i in downsample(len(examples), cap, seed, task.name)]
        examples_of[task] = examples
    negatives = lambda: {task.name: bm25.hard_negatives(task.name, examples, num_negatives)
                         for task, examples in examples_of.items()}
    negs = distributed.main_first("bm25_negatives", negatives)
    return {t.name: TaskData(t, ex, negs[t.name]) for t, ex in examples_of.items()}, sizes


def training_tokenizer(model_dir: str, tokenizer_dir: Optional[str], checkpoint_dir: Optional[str],
               vocab_texts: Callable[[], Sequence[str]], vocab_size: int,
               init_from: Optional[str] = None) -> Tokenization:
    """The given / ``init_from`` run's / checkpoint's vocabulary, else a word-level one built
    from the passages and the formatted training queries (queries word their questions
    differently from the passages; a passage-only vocabulary would map those words to
    [UNK]), kept in model_dir. A run initialised from another run uses that run's own
    vocabulary: its embedding rows belong to those token ids."""
    own = os.path.join(model_dir, "tokenizer")
    init_tok = None
    if init_from:
        init_tok = os.path.join(init_from if os.path.isdir(init_from)
                                else os.path.dirname(init_from), "tokenizer")
    for d in (tokenizer_dir, init_tok, checkpoint_dir):
        if d and any(os.path.exists(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.txt")):
            return Tokenization.from_dir(d)
    if tokenizer_dir:
        raise FileNotFoundError(f"train.tokenizer_dir={tokenizer_dir!r} has no tokenizer.json "
                                "or vocab.txt")
    resuming = os.path.exists(os.path.join(own, "tokenizer.json"))
    distributed.barrier("tokenizer")  # every process has looked before process 0 writes
    if resuming:  # the same vocabulary
        return Tokenization.from_dir(own)
    tok = Tokenization.train_wordlevel(vocab_texts(), vocab_size)
    if jax.process_index() == 0:
        tok.save(own)
    return tok
