"""A passage table on disk, memory-mapped: KILT's 36M passages without 30+ GB of Python
strings in every process.

    write_store(iter_passages(pages), "/data/kilt/.passages/page")   # streamed, once
    table = open_store("/data/kilt/.passages/page")                   # a PassageTable
    table.texts[5], table.titles[100:200]                             # read from the map

Layout of a store directory: for each string column (``ids``, ``page_ids``, ``titles``,
``texts``) ``<col>.utf8`` (the strings' UTF-8 bytes back to back) and ``<col>.offsets``
(int64, ``n + 1`` byte offsets), ``spans.int32`` (``n x 4``), all raw little-endian
arrays, and ``store.json``: the row count, the table checksum (the same sha256 as
``PassageTable.checksum``), each file's size and sha256. ``write_store`` streams the
passages (memory O(one passage)) into temporary files and renames the directory into
place only when everything is written, so a store is complete or absent.

``open_store`` checks the files' sizes against ``store.json`` (and, with ``verify=True``,
their sha256); the returned ``PassageTable``'s string columns are ``TextColumn``
sequences that read rows and their offsets on access with ``os.pread`` (the spans are
memory-mapped), so a process holds only the rows it is using: the bytes it read stay in
the OS page cache, shared between the processes of a host, not in the process's memory
(a memory map would count every page ever read in its resident set).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from multiret_jax.checksums import file_sha256
from multiret_jax.data.kilt import iter_knowledge_source
from multiret_jax.data.passages import Passage, PassageTable, iter_passages

log = logging.getLogger(__name__)

FORMAT = "multiret_jax.data.passage_store/1"
STORE_FILE = "store.json"
COLUMNS = ("ids", "page_ids", "titles", "texts")
_BLOCK = 4096  # rows decoded at a time when iterating


class TextColumn(Sequence[str]):
    """String ``i`` = bytes ``offsets[i]:offsets[i + 1]`` of a file, decoded as UTF-8;
    both files are read with ``os.pread``, only the rows asked for.

    Args:
      path: the file of the strings' bytes back to back.
      offsets_path: its int64 little-endian offsets, ``n + 1`` of them.
      n: the number of strings.
    """

    mapped = True  # ``PassageTable`` keeps it as it is (no list of every string)

    def __init__(self, path: str, offsets_path: str, n: int):
        self.path, self.offsets_path, self.n = path, offsets_path, n
        self._fds: Dict[str, int] = {}

    def _read(self, path: str, lo: int, hi: int) -> bytes:
        if hi <= lo:
            return b""
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(self._fds[path], hi - lo, lo)
        if len(data) != hi - lo:
            raise ValueError(f"{path}: {len(data)} of {hi - lo} bytes at {lo} (truncated?)")
        return data

    def offsets(self, start: int, stop: int) -> np.ndarray:
        """int64 byte offsets of rows ``start .. stop`` (``stop - start + 1`` of them)."""
        return np.frombuffer(self._read(self.offsets_path, 8 * start, 8 * (stop + 1)), "<i8")

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Union[int, slice]) -> Union[str, List[str]]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            if stop <= start:
                return []
            offs = self.offsets(start, stop)
            raw = self._read(self.path, int(offs[0]), int(offs[-1]))
            cuts = (offs - offs[0]).tolist()
            return [raw[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} outside a column of {n}")
        lo, hi = self.offsets(i, i + 1).tolist()
        return self._read(self.path, lo, hi).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), _BLOCK):
            yield from self[start:start + _BLOCK]


def write_store(passages: Iterable[Passage], directory: str) -> PassageTable:
    """Writes ``passages`` as a store into ``directory`` (which must not exist), streamed.

    Returns:
      The store opened (``open_store``).
    Raises:
      FileExistsError: ``directory`` exists (a store is never overwritten in place).
    """
    if os.path.exists(directory):
        raise FileExistsError(f"{directory}: exists; a passage store is written only once")
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    files = {c: open(os.path.join(tmp, f"{c}.utf8"), "wb") for c in COLUMNS}
    offs = {c: open(os.path.join(tmp, f"{c}.offsets"), "wb") for c in COLUMNS}
    spans = open(os.path.join(tmp, "spans.int32"), "wb")
    pos = dict.fromkeys(COLUMNS, 0)
    check, n = hashlib.sha256(), 0
    try:
        for c in COLUMNS:
            offs[c].write(np.int64(0).tobytes())
        for p in passages:
            values = (p.pid, p.page_id, p.title, p.text)
            for c, v in zip(COLUMNS, values):
                b = v.encode("utf-8")
                files[c].write(b)
                pos[c] += len(b)
                offs[c].write(np.int64(pos[c]).tobytes())
            spans.write(np.asarray([p.start_paragraph_id, p.start_character,
                                    p.end_paragraph_id, p.end_character], "<i4").tobytes())
            check.update("\t".join((p.pid, p.title, p.text)).encode("utf-8"))
            check.update(b"\n")
            n += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left
        raise
    finally:
        for f in (*files.values(), *offs.values(), spans):
            f.close()
    names = [f"{c}.{e}" for c in COLUMNS for e in ("utf8", "offsets")] + ["spans.int32"]
    meta = {"format": FORMAT, "num_passages": n, "checksum": check.hexdigest(),
            "files": {f: {"bytes": os.path.getsize(os.path.join(tmp, f)),
                          "sha256": file_sha256(os.path.join(tmp, f))} for f in names}}
    with open(os.path.join(tmp, STORE_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    try:
        os.rename(tmp, directory)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(directory)


def open_store(directory: str, verify: bool = False) -> PassageTable:
    """The store in ``directory`` as a ``PassageTable`` whose columns are memory-mapped.

    Args:
      directory: a directory ``write_store`` wrote.
      verify: also compare every file's sha256 with ``store.json`` (reads every byte).
    Raises:
      ValueError: naming the file, when a file is missing, of another size or (``verify``)
        another content.
    """
    meta_path = os.path.join(directory, STORE_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: not a passage store (format {meta.get('format')!r})")
    n = meta["num_passages"]
    for name, want in meta["files"].items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != want["bytes"]:
            raise ValueError(f"{path}: missing or not {want['bytes']} bytes (a damaged store)")
        if verify and file_sha256(path) != want["sha256"]:
            raise ValueError(f"{path}: its sha256 differs from {meta_path}'s (modified)")

    def column(c):
        col = TextColumn(os.path.join(directory, f"{c}.utf8"),
                         os.path.join(directory, f"{c}.offsets"), n)
        if int(col.offsets(n, n)[0]) != os.path.getsize(col.path):
            raise ValueError(f"{directory}: {c} offsets do not match its bytes")
        return col

    spans_path = os.path.join(directory, "spans.int32")
    spans = (np.memmap(spans_path, "<i4", mode="r", shape=(n, 4)) if n else
             np.zeros((0, 4), np.int32))
    table = PassageTable(*(column(c) for c in COLUMNS), spans)
    table._checksum = meta["checksum"]  # of the files' contents, verified by size or sha256
    return table


def default_cache_dir() -> str:
    """Where results computed once per data set are kept (passage stores, BM25): the
    ``MULTIRET_JAX_CACHE`` environment variable, else ``$XDG_CACHE_HOME/multiret_jax``,
    else ``~/.cache/multiret_jax``. Everything in it is keyed by content (checksums, file
    sizes and times), so runs over other data never read each other's entries."""
    if os.environ.get("MULTIRET_JAX_CACHE"):
        return os.environ["MULTIRET_JAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "multiret_jax")


def knowledge_source_table(source: str, mode: str = "page", words_per_passage: int = 100,
                           cache_dir: Optional[str] = None,
                           progress: bool = True) -> PassageTable:
    """The passages of a KILT knowledge source, chunked once into a store under
    ``<cache_dir>/passages/`` and memory-mapped from then on.

    The store is keyed by the source's absolute path, size and modification time and the
    chunking settings: an edited source is chunked again into a new store.

    Args:
      source: ``knowledge_source.jsonl``.
      mode, words_per_passage: the chunking (``passages.chunk_page``).
      cache_dir: default ``default_cache_dir()``.
      progress: a tqdm bar over the pages while chunking.
    """
    st = os.stat(source)
    key = {"format": FORMAT, "source": os.path.abspath(source), "bytes": st.st_size,
           "mtime_ns": st.st_mtime_ns, "mode": mode, "words": words_per_passage}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    directory = os.path.join(cache_dir or default_cache_dir(), "passages",
                             f"{mode}{words_per_passage}-{digest}")
    if os.path.isfile(os.path.join(directory, STORE_FILE)):
        return open_store(directory)
    log.info("chunking %s into a passage store (once; kept in %s)", source, directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    pages = tqdm(iter_knowledge_source(source), desc="knowledge source", unit=" pages",
                 mininterval=2, disable=not progress)
    try:
        return write_store(iter_passages(pages, words_per_passage, mode), directory)
    except (FileExistsError, OSError):  # another process wrote it meanwhile
        if os.path.isfile(os.path.join(directory, STORE_FILE)):
            return open_store(directory)
        raise
