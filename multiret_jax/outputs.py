"""Outputs that appear whole or not at all, and checks on queries before they are answered.

``staged(out_dir)`` gives a staging directory inside ``out_dir``; a command writes all of
its outputs there and, only when everything succeeded, each top-level entry replaces the
one of the same name in ``out_dir`` (renames on one file system). A failure (bad input
found late, disk full, Ctrl-C) leaves the previous complete output untouched and removes
the staging directory. Entries of ``out_dir`` that the command does not write (a
retrieval's embedding shards and index) are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator, List, Sequence

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
EMPTY_QUERY_POLICIES = ("warn", "fail")


@contextlib.contextmanager
def staged(out_dir: str) -> Iterator[str]:
    """Yields a fresh staging directory in ``out_dir``; on a normal exit its entries
    replace those of ``out_dir`` (``publish``); on any exception nothing in ``out_dir``
    changes. The staging directory is removed either way."""
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        yield stage
        publish(stage, out_dir)
    except OSError as e:
        if e.filename:  # the path is in the message already
            raise
        # a write error (disk full) names no file: say where the outputs were going
        raise OSError(e.errno, f"writing the outputs into {out_dir}: {e.strerror or e}; "
                      "the previous outputs there are unchanged") from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: str, out_dir: str) -> List[str]:
    """Moves every entry of ``stage`` into ``out_dir``, replacing what is there; if a move
    fails the entries already replaced are put back. Returns the names published."""
    names = sorted(n for n in os.listdir(stage) if not n.startswith(".old-"))
    done: List[str] = []
    try:
        for name in names:
            dst, old = os.path.join(out_dir, name), os.path.join(stage, ".old-" + name)
            if os.path.lexists(dst):
                os.replace(dst, old)
            os.replace(os.path.join(stage, name), dst)
            done.append(name)
    except BaseException:
        for name in reversed(done):  # roll back: the previous output stays whole
            dst, old = os.path.join(out_dir, name), os.path.join(stage, ".old-" + name)
            if os.path.isdir(dst):
                shutil.rmtree(dst, ignore_errors=True)
            else:
                os.remove(dst)
            if os.path.lexists(old):
                os.replace(old, dst)
        raise
    return names


def blank_queries(ids: Sequence[str], queries: Sequence[str]) -> List[str]:
    """The ids of queries that are empty or only whitespace."""
    return [i for i, q in zip(ids, queries) if not (q or "").strip()]


def check_queries(ids: Sequence[str], queries: Sequence[str], source: str,
                  on_empty: str = "warn") -> List[str]:
    """Warns (``on_empty="warn"``) or raises ``ValueError`` (``"fail"``) when queries of
    ``source`` are empty or blank: any retriever returns a ranking for them (BM25 in table
    order with score 0, a dense model its nearest passages to an empty input), which
    scores as if it were an answer. Returns the blank ids."""
    if on_empty not in EMPTY_QUERY_POLICIES:
        raise ValueError(f"on_empty must be one of {EMPTY_QUERY_POLICIES}, got {on_empty!r}")
    blank = blank_queries(ids, queries)
    if blank:
        shown = ", ".join(repr(b) for b in blank[:10]) + (", ..." if len(blank) > 10 else "")
        msg = (f"{source}: {len(blank)} of {len(queries)} queries are empty or blank "
               f"(ids {shown}); their rankings carry no information")
        if on_empty == "fail":
            raise ValueError(msg)
        log.warning("%s (they are scored as they are; on_empty_query='fail' stops instead)",
                    msg)
    return blank


def read_json(path: str) -> Any:
    """A JSON file's content; ``ValueError`` naming the file, line and column when it is
    truncated or not JSON (a run killed while writing it, a hand edit)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                         "the file is truncated or damaged: rerun the command that wrote "
                         "it") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (temporary file + rename); on failure the
    temporary file is removed and the ``OSError`` names ``path`` (errno kept)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(e.errno, f"writing {path}: {e.strerror}") from e
