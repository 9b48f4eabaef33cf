"""Task registry: the KILT tasks with their dataset prefixes, type markers and query lengths.

A task is what the multi-task retriever trains on: a KILT dataset (its file stem, e.g.
``nq`` for ``nq-train-kilt.jsonl``), the dataset prefix TACO puts in front of the query
(``"NQ [SEP] who ..."``), the task-type marker MT-DPR's variant uses (``"QA"``), and the
maximum query length in tokens (TACO: 32 for most, 64 FEVER, 128 AIDA, 256 WoW).

Users add tasks without editing the package, from Python::

    register_task(Task("msmarco", prefix="MSM", task_type="QA", max_query_len=32))

or from gin (``register_task_from_gin`` is gin-configurable). ``benchmark_tasks(data_dir,
split)`` lists the tasks whose files a benchmark directory holds (training, evaluation).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import gin

# The five KILT task types (MT-DPR, Section 4.2 "task markers").
TASK_TYPES: Tuple[str, ...] = (
    "QA",  # question answering
    "FC",  # fact checking
    "SF",  # slot filling
    "EL",  # entity linking
    "DIAL",  # dialogue
)

TASK_TYPE_NAMES: Dict[str, str] = {
    "QA": "question answering",
    "FC": "fact checking",
    "SF": "slot filling",
    "EL": "entity linking",
    "DIAL": "dialogue",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One retrieval task.

    Attributes:
      name: the KILT file stem (``nq``, ``triviaqa``, ``structured_zeroshot`` ...).
      prefix: dataset prefix used in queries (``"NQ"``); see ``format_query``.
      task_type: one of ``TASK_TYPES``.
      max_query_len: maximum query length in tokens.
      dev_split: split name of the dev file (TriviaQA's KILT files are ``dev_id``).
      train_split: split name of the train file.
      short: column header used in paper-style tables.
      window: which part of a long input the query keeps: ``"start"`` (its beginning:
        tokenization truncates the end) or ``"mention"`` (entity linking: the words
        around ``[START_ENT] ... [END_ENT]``, ``mention_window``; KILT's AIDA inputs are
        whole news articles and most mentions lie past the first 128 tokens).
    """

    name: str
    prefix: str
    task_type: str
    max_query_len: int = 32
    dev_split: str = "dev"
    train_split: str = "train"
    short: str = ""
    window: str = "start"

    def __post_init__(self):
        if self.task_type not in TASK_TYPES:
            raise ValueError(
                f"task {self.name!r}: unknown task_type {self.task_type!r}; "
                f"expected one of {TASK_TYPES}")
        if self.max_query_len <= 0:
            raise ValueError(f"task {self.name!r}: max_query_len must be > 0")
        if not self.short:
            object.__setattr__(self, "short", self.prefix)
        if self.window not in WINDOWS:
            raise ValueError(f"task {self.name!r}: window must be one of {WINDOWS}, "
                             f"got {self.window!r}")

    def filename(self, split: str) -> str:
        """KILT file name for ``split`` ('train' or 'dev'), e.g. ``nq-dev-kilt.jsonl``."""
        split = {"train": self.train_split, "dev": self.dev_split}.get(split, split)
        return f"{self.name}-{split}-kilt.jsonl"

    def format_query(self, text: str, marker: str = "prefix", sep: str = "[SEP]") -> str:
        """Query text as the model sees it.

        Args:
          text: the KILT ``input``.
          marker: ``"prefix"`` (TACO: ``"NQ [SEP] text"``), ``"type"`` (MT-DPR task-type
            marker: ``"QA [SEP] text"``) or ``"none"``.
          sep: separator token string.
        Returns:
          The formatted query (with ``window="mention"``, the input cut to the
          ``max_query_len`` words around the mention first).
        """
        if self.window == "mention":
            text = mention_window(text, self.max_query_len)
        if marker == "none":
            return text
        if marker not in ("prefix", "type"):
            raise ValueError(f"unknown query marker {marker!r}; use 'prefix', 'type' or 'none'")
        name = self.prefix if marker == "prefix" else self.task_type
        return f"{name} {sep} {text}" if sep else f"{name} {text}"


WINDOWS = ("start", "mention")

# How a marker is joined to the query (``QueryFormat.marker_format``): the separator
# between the dataset name (or task type) and the query text.
MARKER_FORMATS: Dict[str, str] = {
    "sep": "[SEP]",             # "NQ [SEP] query": this project's first format (BERT's token)
    "sentinel": "<extra_id_1>",  # "NQ <extra_id_1> query": TACO's public code (a T5 token)
    "plain": "",                # "NQ query": the name alone
}


@dataclasses.dataclass(frozen=True)
class QueryFormat:
    """How every query of a run is written and how long it may be, in training,
    validation, ANCE mining and retrieval alike.

    Attributes:
      marker: ``"prefix"`` (dataset name, TACO), ``"type"`` (task type, MT-DPR's variant)
        or ``"none"``.
      marker_format: the separator after the marker, a ``MARKER_FORMATS`` key. TACO's
        paper says only that the dataset name is prepended to the query (Section 4.1);
        its public code writes ``"NQ <extra_id_1> query"`` ("sentinel", a T5 sentinel
        token), which is what its reported runs used.
      marker_in_len: the task's ``max_query_len`` counts the marker's tokens (True, this
        project's first convention) or applies to the query text alone, the marker's
        tokens coming on top (False: TACO's Table 5 lengths exclude the prefix; its
        public code cuts the text to 32 tokens and then allows 36 with the prefix).
    """

    marker: str = "prefix"
    marker_format: str = "sep"
    marker_in_len: bool = True

    def __post_init__(self):
        if self.marker not in ("prefix", "type", "none"):
            raise ValueError(f"unknown query marker {self.marker!r}; use 'prefix', 'type' or "
                             "'none'")
        if self.marker_format not in MARKER_FORMATS:
            raise ValueError(f"unknown marker format {self.marker_format!r}; known: "
                             f"{sorted(MARKER_FORMATS)}")

    def text(self, task: Task, text: str) -> str:
        """``text`` as the model reads it (``Task.format_query`` with this format)."""
        return task.format_query(text, self.marker, sep=MARKER_FORMATS[self.marker_format])

    def marker_text(self, task: Task) -> str:
        """The words put before a query of ``task`` ("" without a marker)."""
        return self.text(task, "").strip() if self.marker != "none" else ""

    def length(self, task: Task, marker_tokens: int = 0, cap: Optional[int] = None) -> int:
        """Token length of ``task``'s queries: its ``max_query_len``, plus the marker's
        ``marker_tokens`` unless ``marker_in_len``, at most ``cap``."""
        n = task.max_query_len + (0 if self.marker_in_len or self.marker == "none"
                                  else int(marker_tokens))
        return min(n, int(cap)) if cap else n


def query_format(marker) -> QueryFormat:
    """``marker`` as a ``QueryFormat``: a marker name (``"prefix"`` ...) means that marker
    with the default format and length convention."""
    return marker if isinstance(marker, QueryFormat) else QueryFormat(marker)
START_ENT, END_ENT = "[START_ENT]", "[END_ENT]"


def mention_window(text: str, max_words: int) -> str:
    """The ``max_words`` whitespace-separated words of ``text`` centred on the entity
    mention ``[START_ENT] ... [END_ENT]`` (half the context before it, half after; the
    rest to the side that has more). ``text`` is returned as it is when it is short
    enough or has no mention. A word budget keeps the mention well inside a token budget
    of the same size: tokenization then truncates only right context."""
    words = text.split()
    if len(words) <= max_words:
        return text
    try:
        start = next(i for i, w in enumerate(words) if START_ENT in w)
        end = next(i for i in range(start, len(words)) if END_ENT in words[i])
    except StopIteration:  # no (complete) mention: the beginning, as for other tasks
        return text
    if end - start + 1 >= max_words:
        return " ".join(words[start:start + max_words])
    context = max_words - (end - start + 1)
    lo = max(0, start - context // 2)
    hi = min(len(words), end + 1 + context - (start - lo))
    lo = max(0, hi - max_words)
    return " ".join(words[lo:hi])


_REGISTRY: Dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Adds ``task`` to the registry; re-registering a name needs ``overwrite=True``."""
    if task.name in _REGISTRY and not overwrite and _REGISTRY[task.name] != task:
        raise ValueError(f"task {task.name!r} is already registered as {_REGISTRY[task.name]}")
    _REGISTRY[task.name] = task
    return task


@gin.configurable
def register_task_from_gin(name: str = gin.REQUIRED, prefix: str = gin.REQUIRED,
                           task_type: str = gin.REQUIRED, max_query_len: int = 32,
                           dev_split: str = "dev", train_split: str = "train",
                           window: str = "start") -> Task:
    """Gin entry point for ``register_task`` (call it from a gin file)."""
    return register_task(Task(name, prefix, task_type, max_query_len, dev_split, train_split,
                              window=window), overwrite=True)


def get_task(name: str) -> Task:
    """The registered task called ``name``; a clear error lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_REGISTRY)}. "
                       "Add one with multiret_jax.data.tasks.register_task.") from None


def get_tasks(names: Iterable[str]) -> List[Task]:
    return [get_task(n) for n in names]


def registered_tasks() -> List[Task]:
    return list(_REGISTRY.values())


# The 8 KILT retrieval tasks of MT-DPR / TACO (TACO Table 5 prefixes and query lengths).
KILT_TASKS: Tuple[Task, ...] = (
    Task("fever", "FEVER", "FC", 64, short="FEV"),
    Task("aidayago2", "AIDA", "EL", 128, short="AY2", window="mention"),
    Task("trex", "TREX", "SF", 32, short="T-REx"),
    Task("structured_zeroshot", "ZSRE", "SF", 32, short="zsRE"),
    Task("nq", "NQ", "QA", 32, short="NQ"),
    Task("hotpotqa", "HOPO", "QA", 32, short="HoPo"),
    Task("triviaqa", "TQA", "QA", 32, dev_split="dev_id", train_split="train_id", short="TQA"),
    Task("wow", "WOW", "DIAL", 256, short="WoW"),
)

for _t in KILT_TASKS:
    register_task(_t)

KILT_TASK_NAMES: Tuple[str, ...] = tuple(t.name for t in KILT_TASKS)

# Other names of a split's task files: KILT's are <task>-test_without_answers-kilt.jsonl.
SPLIT_ALIASES: Dict[str, Tuple[str, ...]] = {"test": ("test_without_answers",)}


def task_path(data_dir: str, task: Task, split: str) -> Optional[str]:
    """``task``'s file for ``split`` in ``data_dir`` (also under a ``SPLIT_ALIASES`` name),
    or None."""
    for name in (split,) + SPLIT_ALIASES.get(split, ()):
        path = os.path.join(data_dir, task.filename(name))
        if os.path.exists(path):
            return path
    return None


def benchmark_tasks(data_dir: str, split: str, names: Optional[Sequence[str]] = None) -> List[Task]:
    """The tasks to evaluate: ``names`` (each file must exist) or every registered task
    whose ``split`` file is in ``data_dir``."""
    if names:
        tasks = [get_task(n) for n in names]
        for t in tasks:
            if task_path(data_dir, t, split) is None:
                raise FileNotFoundError(f"task {t.name!r}: no {split} file "
                                        f"{os.path.join(data_dir, t.filename(split))}")
        return tasks
    tasks = [t for t in registered_tasks() if task_path(data_dir, t, split) is not None]
    if not tasks:
        raise FileNotFoundError(f"no KILT task files for split {split!r} in {data_dir}; expected "
                                f"names like {registered_tasks()[0].filename(split)}")
    return tasks
