"""Pages -> disjoint 100-word passages, the retrieval unit of DPR, MT-DPR and TACO.

Every passage keeps its page id, title and the exact span it covers in the page:
``(start_paragraph_id, start_character)`` to ``(end_paragraph_id, end_character)``
(end exclusive), in KILT's paragraph numbering, so gold provenance spans map onto
passages (see ``provenance.py``). ``text[0]`` of a page is its title and is not chunked.

Passage id: ``"<wikipedia_id>_<k>"`` for the k-th chunk of the page; ``page_of(pid)``
recovers the page id. The table's ``checksum`` (sha256 over ids, titles and texts) lets
later stages refuse embeddings computed for another passage table.

Two chunking modes:
  * ``"page"`` (DPR): the page's paragraphs are one word stream cut every 100 words.
  * ``"paragraph"``: chunks never cross a paragraph boundary (each paragraph is cut on its
    own; gives the 10,329 passages of ``shared/data/realmini``'s reference figures).

KILT markup is cleaned: ``Section::::...`` heading paragraphs are skipped, and
``BULLET::::`` markers dropped, while character offsets stay those of the original text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from multiret_jax.data.kilt import Page

_WORD = re.compile(r"\S+")
_MARKUP_TOKENS = frozenset({"BULLET::::-", "BULLET::::"})
CHUNK_MODES = ("page", "paragraph")


@dataclasses.dataclass(frozen=True)
class Passage:
    pid: str
    page_id: str
    title: str
    text: str
    start_paragraph_id: int
    start_character: int
    end_paragraph_id: int
    end_character: int  # exclusive


def passage_id(page_id: str, k: int) -> str:
    return f"{page_id}_{k}"


def page_of(pid: str) -> str:
    """The page id of a passage id ``<wikipedia_id>_<k>``."""
    page, sep, k = pid.rpartition("_")
    if not sep or not k.isdigit():
        raise ValueError(f"not a passage id of the form <wikipedia_id>_<k>: {pid!r}")
    return page


def _words(page: Page) -> Iterator[Tuple[int, int, int, str]]:
    """(paragraph_id, char_start, char_end, word) for the chunkable words of a page."""
    for par_id in range(1, len(page.paragraphs)):
        par = page.paragraphs[par_id]
        if par.lstrip().startswith("Section::::"):
            continue
        for m in _WORD.finditer(par):
            w = m.group()
            if w in _MARKUP_TOKENS:
                continue
            start = m.start()
            if w.startswith("BULLET::::"):  # the span starts at the word, after the marker
                w = w[len("BULLET::::"):]
                start += len("BULLET::::")
            yield par_id, start, m.end(), w


def chunk_page(page: Page, words_per_passage: int = 100, mode: str = "page") -> List[Passage]:
    """Splits one page into disjoint passages of at most ``words_per_passage`` words.

    Args:
      page: a knowledge-source page.
      words_per_passage: chunk size in whitespace-separated words (100 in the papers).
      mode: ``"page"`` or ``"paragraph"`` (see the module docstring).
    Returns:
      The passages in page order (empty for a page with no text beyond its title).
    """
    if mode not in CHUNK_MODES:
        raise ValueError(f"unknown chunk mode {mode!r}; use one of {CHUNK_MODES}")
    if words_per_passage <= 0:
        raise ValueError("words_per_passage must be positive")
    out: List[Passage] = []
    buf: List[Tuple[int, int, int, str]] = []

    def flush():
        if buf:
            out.append(Passage(
                passage_id(page.wikipedia_id, len(out)), page.wikipedia_id, page.title,
                " ".join(w[3] for w in buf), buf[0][0], buf[0][1], buf[-1][0], buf[-1][2]))
            buf.clear()

    for word in _words(page):
        if buf and (len(buf) == words_per_passage or (mode == "paragraph" and word[0] != buf[-1][0])):
            flush()
        buf.append(word)
    flush()
    return out


def iter_passages(pages: Iterable[Page], words_per_passage: int = 100,
                  mode: str = "page") -> Iterator[Passage]:
    """Streams the passages of a stream of pages (O(one page) memory)."""
    for page in pages:
        yield from chunk_page(page, words_per_passage, mode)


class PassageTable:
    """Columnar passage table: ids, page ids, titles, texts and int32 span columns.

    Row ``i`` is passage ``ids[i]``. ``row_of(pid)`` and ``rows_of_page(page_id)`` give rows.
    """

    SPAN_COLUMNS = ("start_paragraph_id", "start_character", "end_paragraph_id", "end_character")

    def __init__(self, ids: Sequence[str], page_ids: Sequence[str], titles: Sequence[str],
                 texts: Sequence[str], spans: np.ndarray):
        n = len(ids)
        if not (len(page_ids) == len(titles) == len(texts) == n and spans.shape == (n, 4)):
            raise ValueError("passage table columns have different lengths")
        # columns as lists, or as they are when memory-mapped (``passage_store.TextColumn``)
        col = lambda c: c if getattr(c, "mapped", False) else list(c)
        self.ids, self.page_ids, self.titles, self.texts = (col(c) for c in (ids, page_ids, titles,
                                                                             texts))
        self.spans = spans if isinstance(spans, np.memmap) else np.asarray(spans, np.int32)
        self._row: Optional[Dict[str, int]] = None
        self._page_rows: Optional[Dict[str, np.ndarray]] = None
        self._checksum: Optional[str] = None

    @classmethod
    def from_passages(cls, passages: Iterable[Passage]) -> "PassageTable":
        cols: Tuple[List, ...] = ([], [], [], [], [])
        for p in passages:
            for col, v in zip(cols, (p.pid, p.page_id, p.title, p.text,
                                     (p.start_paragraph_id, p.start_character,
                                      p.end_paragraph_id, p.end_character))):
                col.append(v)
        spans = np.asarray(cols[4], np.int32).reshape(-1, 4)
        return cls(cols[0], cols[1], cols[2], cols[3], spans)

    @classmethod
    def from_pages(cls, pages: Iterable[Page], words_per_passage: int = 100,
                   mode: str = "page") -> "PassageTable":
        return cls.from_passages(iter_passages(pages, words_per_passage, mode))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int) -> Passage:
        s = self.spans[row]
        return Passage(self.ids[row], self.page_ids[row], self.titles[row], self.texts[row],
                       int(s[0]), int(s[1]), int(s[2]), int(s[3]))

    def select(self, rows: Sequence[int]) -> "PassageTable":
        """A table of these rows, in the given order (e.g. a validation candidate pool)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside [0, {len(self)}) selected")
        pick = lambda col: [col[int(r)] for r in rows]
        return PassageTable(pick(self.ids), pick(self.page_ids), pick(self.titles),
                            pick(self.texts), self.spans[rows])

    def row_of(self, pid: str) -> int:
        if self._row is None:
            self._row = {p: i for i, p in enumerate(self.ids)}
        return self._row[pid]

    def rows_of_page(self, page_id: str) -> np.ndarray:
        """Rows of a page's passages in page order (empty if the page has none)."""
        if self._page_rows is None:
            groups: Dict[str, List[int]] = {}
            for i, pg in enumerate(self.page_ids):
                groups.setdefault(pg, []).append(i)
            self._page_rows = {k: np.asarray(v, np.int64) for k, v in groups.items()}
        return self._page_rows.get(str(page_id), np.zeros(0, np.int64))

    def contents(self, with_title: bool = True, sep: str = " ") -> List[str]:
        """Passage strings for indexing/encoding: ``title + sep + text`` or the text alone."""
        if not with_title:
            return list(self.texts)
        return [f"{t}{sep}{x}" for t, x in zip(self.titles, self.texts)]

    @property
    def checksum(self) -> str:
        """sha256 over (id, title, text) of every row, in order."""
        if self._checksum is None:
            h = hashlib.sha256()
            for row in zip(self.ids, self.titles, self.texts):
                h.update("\t".join(row).encode("utf-8"))
                h.update(b"\n")
            self._checksum = h.hexdigest()
        return self._checksum

    # -- disk format: passages.jsonl + manifest.json (no pickle)
    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "passages.jsonl"), "w", encoding="utf-8") as f:
            for i in range(len(self)):
                f.write(json.dumps(dataclasses.asdict(self[i]), ensure_ascii=False) + "\n")
        with open(os.path.join(directory, "manifest.json"), "w") as f:
            json.dump({"num_passages": len(self), "checksum": self.checksum}, f, indent=1)

    @classmethod
    def load(cls, directory: str) -> "PassageTable":
        """Loads a saved table and verifies its checksum against the manifest."""
        path = os.path.join(directory, "passages.jsonl")
        with open(os.path.join(directory, "manifest.json")) as f:
            manifest = json.load(f)
        passages = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    passages.append(Passage(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ValueError(f"{path}:{line_no}: bad passage row ({e})") from None
        table = cls.from_passages(passages)
        if table.checksum != manifest["checksum"]:
            raise ValueError(f"{path}: checksum {table.checksum} does not match the manifest's "
                             f"{manifest['checksum']}: the passage table was modified")
        return table
