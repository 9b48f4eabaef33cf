"""KILT file IO: task records, the knowledge source and guess files.

Formats (Petroni et al. 2021, https://github.com/facebookresearch/KILT):

* task file, one JSON object a line::

    {"id": ..., "input": "...", "output": [{"answer": "...", "provenance": [
        {"wikipedia_id": "...", "title": "...", "start_paragraph_id": 1,
         "start_character": 0, "end_paragraph_id": 1, "end_character": 80,
         "bleu_score": 0.9, "section": "..."}]}], "meta": {...}}

* knowledge source, one page a line: ``{"wikipedia_id", "wikipedia_title", "text": [title,
  paragraph, ...]}`` (``text[0]`` is the title, paragraph ids index ``text``).

Everything streams: the real knowledge source is 35 GB. Every record is validated; bad
input raises :class:`KiltFormatError` naming file and line, or, with ``on_error="skip"``,
is counted in a :class:`ReadStats` and logged (:func:`check_on_error` validates the choice
for every reader). :func:`write_jsonl` writes atomically: a failed write leaves no
temporary file and the old file untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

ON_ERROR_CHOICES: Tuple[str, ...] = ("raise", "skip")


def check_on_error(on_error: str) -> str:
    """Validates an ``on_error`` choice (``"raise"`` or ``"skip"``) and returns it.

    Raises:
      ValueError: ``on_error must be 'raise' or 'skip', got 'ignore'``.
    """
    if on_error not in ON_ERROR_CHOICES:
        allowed = " or ".join(repr(c) for c in ON_ERROR_CHOICES)
        raise ValueError(f"on_error must be {allowed}, got {on_error!r}")
    return on_error


class KiltFormatError(ValueError):
    """Bad KILT input, with the file and 1-based line it was found at."""

    def __init__(self, path: PathLike, line: int, message: str):
        self.path, self.line, self.reason = str(path), line, message
        super().__init__(f"{path}:{line}: {message}")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """One provenance item; paragraph/character fields are None when absent (e.g. AIDA)."""

    wikipedia_id: str
    title: Optional[str] = None
    start_paragraph_id: Optional[int] = None
    start_character: Optional[int] = None
    end_paragraph_id: Optional[int] = None
    end_character: Optional[int] = None
    bleu_score: Optional[float] = None
    section: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Output:
    answer: Optional[str]
    provenance: Tuple[Provenance, ...]


@dataclasses.dataclass(frozen=True)
class KiltRecord:
    """A validated task record. ``input`` is None only for TriviaQA ``_id`` files read with
    ``require_input=False``. ``source`` is ``"file:line"`` for messages."""

    id: str
    input: Optional[str]
    outputs: Tuple[Output, ...]
    meta: Dict[str, Any]
    source: str

    def provenance_sets(self) -> List[Tuple[Provenance, ...]]:
        """The gold provenance sets: one per output that has provenance."""
        return [o.provenance for o in self.outputs if o.provenance]

    def gold_pages(self) -> List[str]:
        """All gold page ids, de-duplicated in order."""
        return list(dict.fromkeys(p.wikipedia_id for s in self.provenance_sets() for p in s))


@dataclasses.dataclass(frozen=True)
class Page:
    """One knowledge-source page; ``paragraphs[0]`` is the title paragraph."""

    wikipedia_id: str
    title: str
    paragraphs: Tuple[str, ...]


@dataclasses.dataclass
class ReadStats:
    """Counts of a read: records kept and skipped, with skip reasons."""

    path: str = ""
    read: int = 0
    skipped: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)

    def skip(self, err: KiltFormatError) -> None:
        self.skipped += 1
        # The reason's kind: the message up to its details ("(record ...)", ", got ...", ": ...").
        self.reasons[re.split(r":|\s\(|, got", err.reason, maxsplit=1)[0].strip()] += 1
        log.warning("skipping %s", err)


def iter_json_lines(path: PathLike) -> Iterator[Tuple[int, Any, Optional[str]]]:
    """Yields ``(line_no, object, error)`` for each non-blank line (1-based line numbers);
    decodes strictly as UTF-8. ``error`` (object None) says why a line is unreadable."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, None, f"invalid UTF-8 (at byte {e.start} of the line)"
                continue
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text), None
            except json.JSONDecodeError as e:
                yield line_no, None, f"invalid JSON ({e.msg} at column {e.colno})"


def _opt_int(prov: dict, key: str) -> Optional[int]:
    v = prov.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"provenance {key} must be an integer, got {v!r}")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"provenance {key} must be an integer, got {v!r}") from None


def _parse_provenance(prov: Any) -> Provenance:
    if not isinstance(prov, dict):
        raise ValueError(f"provenance item must be an object, got {type(prov).__name__}")
    wid = prov.get("wikipedia_id")
    if wid is None or str(wid).strip() == "":
        raise ValueError("provenance without wikipedia_id")
    bleu = prov.get("bleu_score")
    return Provenance(
        wikipedia_id=str(wid).strip(), title=prov.get("title"),
        start_paragraph_id=_opt_int(prov, "start_paragraph_id"),
        start_character=_opt_int(prov, "start_character"),
        end_paragraph_id=_opt_int(prov, "end_paragraph_id"),
        end_character=_opt_int(prov, "end_character"),
        bleu_score=None if bleu is None else float(bleu), section=prov.get("section"))


def parse_record(obj: Any, source: str, *, require_input: bool = True,
                 require_output: bool = True) -> KiltRecord:
    """Validates one decoded JSON object as a KILT task record. With
    ``require_output=False`` a record without ``output`` (KILT's test files) has no outputs.

    Raises:
      ValueError: with a message naming the problem (callers add file:line).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    if "id" not in obj or obj["id"] is None or str(obj["id"]).strip() == "":
        raise ValueError("missing 'id'")
    rid = str(obj["id"]).strip()
    inp = obj.get("input")
    if inp is None:
        if require_input:
            raise ValueError(
                f"missing 'input' (record {rid!r}). KILT's TriviaQA '_id' files carry no "
                "question text: merge the questions from TriviaQA first, or read with "
                "require_input=False to keep provenance only")
    elif not isinstance(inp, str):
        raise ValueError(f"'input' must be a string (record {rid!r})")
    outs = obj.get("output")
    if outs is None and not require_output:
        outs = []
    if not isinstance(outs, list):
        raise ValueError(f"missing 'output' list (record {rid!r})")
    outputs = []
    for o in outs:
        if not isinstance(o, dict):
            raise ValueError(f"output items must be objects (record {rid!r})")
        try:
            provs = tuple(_parse_provenance(p) for p in (o.get("provenance") or []))
        except ValueError as e:
            raise ValueError(f"{e} (record {rid!r})") from None
        ans = o.get("answer")
        outputs.append(Output(None if ans is None else str(ans), provs))
    meta = obj.get("meta") or {}
    return KiltRecord(rid, inp, tuple(outputs), meta if isinstance(meta, dict) else {}, source)


def iter_records(path: PathLike, *, on_error: str = "raise", require_input: bool = True,
                 require_output: bool = True,
                 stats: Optional[ReadStats] = None) -> Iterator[KiltRecord]:
    """Streams validated records of a KILT task file.

    Args:
      path: a ``*-kilt.jsonl`` file.
      on_error: ``"raise"`` (default) or ``"skip"`` (count in ``stats`` and log).
      require_input: records without ``input`` are an error unless False.
      require_output: records without ``output`` are an error unless False (test files).
      stats: filled with counts when given.
    Yields:
      ``KiltRecord`` in file order. Duplicate ids are bad input too.
    Raises:
      ValueError: at the call, for an unknown ``on_error`` (see :func:`check_on_error`).
    """
    check_on_error(on_error)
    return _iter_records(path, on_error, require_input, require_output, stats)


def _iter_records(path: PathLike, on_error: str, require_input: bool, require_output: bool,
                  stats: Optional[ReadStats]) -> Iterator[KiltRecord]:
    """The generator behind :func:`iter_records` (arguments already validated)."""
    stats = stats if stats is not None else ReadStats()
    stats.path = str(path)
    seen: Dict[str, int] = {}
    for line_no, obj, err in iter_json_lines(path):
        try:
            if err:
                raise ValueError(err)
            rec = parse_record(obj, f"{path}:{line_no}", require_input=require_input,
                               require_output=require_output)
            if rec.id in seen:
                raise ValueError(f"duplicate id ({rec.id!r}, first on line {seen[rec.id]})")
        except ValueError as e:
            kerr = KiltFormatError(path, line_no, str(e))
            if on_error == "raise":
                raise kerr from None
            stats.skip(kerr)
            continue
        seen[rec.id] = line_no
        stats.read += 1
        yield rec


def read_task_file(path: PathLike, **kwargs) -> List[KiltRecord]:
    """All records of a task file (see ``iter_records`` for the arguments)."""
    return list(iter_records(path, **kwargs))


def iter_knowledge_source(path: PathLike, *, on_error: str = "raise",
                          stats: Optional[ReadStats] = None) -> Iterator[Page]:
    """Streams pages of a KILT knowledge source (``text[0]`` is the title).

    Validates ``wikipedia_id`` (unique), ``text`` (a non-empty list of strings); the title
    comes from ``wikipedia_title`` or, when absent, ``text[0]``. ``on_error`` and ``stats``
    as in :func:`iter_records`; an unknown ``on_error`` raises ``ValueError`` at the call.
    """
    check_on_error(on_error)
    return _iter_pages(path, on_error, stats)


def _iter_pages(path: PathLike, on_error: str, stats: Optional[ReadStats]) -> Iterator[Page]:
    """The generator behind :func:`iter_knowledge_source` (arguments already validated)."""
    stats = stats if stats is not None else ReadStats()
    stats.path = str(path)
    seen: set = set()
    for line_no, obj, err in iter_json_lines(path):
        try:
            if err:
                raise ValueError(err)
            if not isinstance(obj, dict):
                raise ValueError("page must be a JSON object")
            wid = obj.get("wikipedia_id", obj.get("_id"))
            if wid is None or str(wid).strip() == "":
                raise ValueError("missing 'wikipedia_id'")
            wid = str(wid).strip()
            text = obj.get("text")
            if not isinstance(text, list) or not text or not all(isinstance(t, str) for t in text):
                raise ValueError(f"'text' must be a non-empty list of strings (page {wid})")
            if wid in seen:
                raise ValueError(f"duplicate wikipedia_id ({wid!r})")
        except ValueError as e:
            kerr = KiltFormatError(path, line_no, str(e))
            if on_error == "raise":
                raise kerr from None
            stats.skip(kerr)
            continue
        seen.add(wid)
        stats.read += 1
        title = obj.get("wikipedia_title") or text[0].strip()
        yield Page(wid, str(title), tuple(text))


# ----------------------------------------------------------------------------- writing


def guess_record(record_id: str, provenance: Sequence[Dict[str, Any]], *,
                 input_text: Optional[str] = None, answer: Optional[str] = None) -> dict:
    """A KILT guess record: exactly one output whose provenance is in rank order."""
    out: Dict[str, Any] = {"provenance": [dict(p) for p in provenance]}
    if answer is not None:
        out["answer"] = answer
    rec: Dict[str, Any] = {"id": record_id}
    if input_text is not None:
        rec["input"] = input_text
    rec["output"] = [out]
    return rec


def write_jsonl(path: PathLike, records: Iterable[dict]) -> int:
    """Writes records as UTF-8 JSONL atomically (tmp file + rename); returns the count.

    On any failure (the disk full, a record that is not JSON-serialisable, an error raised
    by ``records`` itself) the temporary file is removed and the file at ``path``, if any,
    is left as it was.

    Raises:
      OSError: an IO failure, re-raised with the same errno (so the same subclass) and a
        message naming ``path``, e.g. ``[Errno 28] writing out/g.jsonl: No space left on
        device``.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        n = _write_lines(tmp, records)
        os.replace(tmp, path)
    except BaseException as e:
        _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    return n


def _write_lines(tmp: str, records: Iterable[dict]) -> int:
    """Writes one JSON line per record to ``tmp``; returns the count."""
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def _remove_quietly(path: str) -> None:
    """Removes ``path`` if it exists; a failure to remove never hides the original error."""
    with contextlib.suppress(OSError):
        os.remove(path)


def _naming(err: OSError, path: str) -> OSError:
    """``err`` as a new OSError whose message names ``path`` (errno, hence subclass, kept)."""
    if err.errno is None:
        return OSError(f"writing {path}: {err}")
    return OSError(err.errno, f"writing {path}: {err.strerror or err}")
