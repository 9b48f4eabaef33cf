"""Tests for KILT file IO (multiret_jax.data.kilt): real files, bad input, guess writing."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
from pathlib import Path
from typing import List, Union

import pytest

from multiret_jax.data import kilt
from multiret_jax.data.kilt import (
    KiltFormatError,
    KiltRecord,
    ReadStats,
    check_on_error,
    guess_record,
    iter_knowledge_source,
    iter_records,
    read_task_file,
    write_jsonl,
)

SAMPLE_TASKS = ("aidayago2", "fever", "hotpotqa", "nq", "structured_zeroshot", "trex", "wow")


def _write_lines(path: Path, lines: List[Union[str, bytes, dict]]) -> Path:
    """Writes one line per item: dicts as JSON, str as is (UTF-8), bytes raw."""
    with open(path, "wb") as f:
        for item in lines:
            if isinstance(item, dict):
                item = json.dumps(item)
            if isinstance(item, str):
                item = item.encode("utf-8")
            f.write(item + b"\n")
    return path


def _rec(rid, inp="a question?", prov=None, **extra) -> dict:
    prov = [{"wikipedia_id": "123", "title": "T", "start_paragraph_id": 1,
             "start_character": 0, "end_paragraph_id": 1, "end_character": 10,
             "bleu_score": 1.0}] if prov is None else prov
    rec = {"id": rid, "input": inp, "output": [{"answer": "x"}, {"provenance": prov}]}
    if inp is None:
        del rec["input"]
    rec.update(extra)
    return rec


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("split", ["dev", "train"])
@pytest.mark.parametrize("task", SAMPLE_TASKS)
def test_kilt_samples_read_and_validate(shared_data, task, split):
    path = shared_data / "kilt_samples" / f"{task}-{split}-kilt.jsonl"
    stats = ReadStats()
    recs = read_task_file(path, stats=stats)
    assert 4 <= len(recs) <= 5
    assert stats.read == len(recs) and stats.skipped == 0
    assert len({r.id for r in recs}) == len(recs)
    for i, r in enumerate(recs, start=1):
        assert r.id and isinstance(r.input, str) and r.input
        assert r.outputs
        assert r.source == f"{path}:{i}"
    # Every task's sample carries gold provenance somewhere.
    assert any(r.provenance_sets() for r in recs)


def test_kilt_samples_shapes(shared_data):
    d = shared_data / "kilt_samples"
    aida = read_task_file(d / "aidayago2-dev-kilt.jsonl")
    assert all("[START_ENT]" in r.input and "[END_ENT]" in r.input for r in aida)
    # AIDA provenance is page-only: no paragraph span.
    assert all(p.start_paragraph_id is None for r in aida for s in r.provenance_sets() for p in s)
    for task in ("trex", "structured_zeroshot"):
        assert all(" [SEP] " in r.input for r in read_task_file(d / f"{task}-dev-kilt.jsonl"))


@pytest.mark.parametrize("split", ["dev", "train"])
def test_triviaqa_id_files_need_require_input_false(shared_data, split):
    path = shared_data / "kilt_samples" / f"triviaqa-{split}_id-kilt.jsonl"
    with pytest.raises(KiltFormatError) as ei:
        read_task_file(path)
    err = ei.value
    assert err.line == 1 and err.path == str(path)
    msg = str(err)
    assert msg.startswith(f"{path}:1:")
    assert "TriviaQA" in msg and "_id" in msg and "no question text" in msg
    assert "require_input=False" in msg

    recs = read_task_file(path, require_input=False)
    assert len(recs) == 5
    assert all(r.input is None and r.id and r.outputs for r in recs)
    # Answers and provenance are kept (some TriviaQA records have answers but no provenance).
    assert any(r.provenance_sets() for r in recs)


def test_all_sixteen_sample_files_covered(shared_data):
    files = sorted((shared_data / "kilt_samples").glob("*.jsonl"))
    assert len(files) == 16
    total = 0
    for f in files:
        total += len(read_task_file(f, require_input="_id-" not in f.name))
    assert total == sum(1 for f in files for line in open(f, "rb") if line.strip())


@pytest.mark.parametrize("name,count", [("hotpotqa", 5600), ("wow", 3054)])
def test_kilt_dev_files_read_fully(shared_data, name, count):
    path = shared_data / "kilt_dev" / f"{name}-dev-kilt.jsonl"
    stats = ReadStats()
    recs = read_task_file(path, stats=stats)
    assert len(recs) == count == stats.read and stats.skipped == 0
    assert len({r.id for r in recs}) == count
    for r in recs:
        assert isinstance(r, KiltRecord)
        assert r.id and isinstance(r.input, str) and r.input.strip() and r.outputs
        assert r.provenance_sets()  # every record of both dev files has gold provenance
    if name == "hotpotqa":
        # HotpotQA is multi-hop: some output names >= 2 gold pages (exactly 2 in this file).
        for r in recs:
            assert max(len({p.wikipedia_id for p in s}) for s in r.provenance_sets()) >= 2, r.id
    else:
        # WoW: one gold page per provenance set.
        assert all(len(s) == 1 for r in recs for s in r.provenance_sets())


def test_realmini_knowledge_source(shared_data):
    stats = ReadStats()
    pages = list(iter_knowledge_source(shared_data / "realmini" / "knowledge_source.jsonl",
                                       stats=stats))
    assert len(pages) == 7778 == stats.read and stats.skipped == 0
    assert len({p.wikipedia_id for p in pages}) == 7778
    assert sum(len(p.paragraphs) - 1 for p in pages) == 8445
    assert all(p.title and len(p.paragraphs) >= 1 for p in pages)


# ----------------------------------------------------------------------------- bad task input

# (name, bad line, expected message fragment, ReadStats reason)
BAD_RECORDS = [
    ("invalid_json", '{"id": "b", "input": ', "invalid JSON", "invalid JSON"),
    ("not_object", "[1, 2]", "must be a JSON object", "record must be a JSON object"),
    ("missing_id", json.dumps({"input": "q", "output": []}), "missing 'id'", "missing 'id'"),
    ("empty_id", json.dumps({"id": " ", "input": "q", "output": []}), "missing 'id'",
     "missing 'id'"),
    ("missing_input", json.dumps(_rec("b", inp=None)), "missing 'input'", "missing 'input'"),
    ("input_not_str", json.dumps(_rec("b", inp=3)), "'input' must be a string",
     "'input' must be a string"),
    ("missing_output", json.dumps({"id": "b", "input": "q"}), "missing 'output'",
     "missing 'output' list"),
    ("prov_no_wid", json.dumps(_rec("b", prov=[{"title": "T", "start_paragraph_id": 1}])),
     "provenance without wikipedia_id", "provenance without wikipedia_id"),
    ("prov_empty_wid", json.dumps(_rec("b", prov=[{"wikipedia_id": ""}])),
     "provenance without wikipedia_id", "provenance without wikipedia_id"),
    ("non_utf8", b'{"id": "b", "input": "caf\xff\xfe", "output": []}', "invalid UTF-8",
     "invalid UTF-8"),
    ("par_id_str", json.dumps(_rec("b", prov=[{"wikipedia_id": "1", "start_paragraph_id": "x"}])),
     "start_paragraph_id must be an integer", "provenance start_paragraph_id must be an integer"),
    ("par_id_float", json.dumps(_rec("b", prov=[{"wikipedia_id": "1", "end_paragraph_id": 1.5}])),
     "end_paragraph_id must be an integer", "provenance end_paragraph_id must be an integer"),
    ("par_id_bool", json.dumps(_rec("b", prov=[{"wikipedia_id": "1", "start_paragraph_id": True}])),
     "start_paragraph_id must be an integer", "provenance start_paragraph_id must be an integer"),
    ("char_list", json.dumps(_rec("b", prov=[{"wikipedia_id": "1", "start_character": [0]}])),
     "start_character must be an integer", "provenance start_character must be an integer"),
]


def _bad_file(tmp_path: Path, bad) -> Path:
    # good (line 1), blank (2), good (3), whitespace-only (4), BAD (5), good (6)
    return _write_lines(tmp_path / "task-kilt.jsonl",
                        [_rec("a1"), "", _rec("a2"), "   \t", bad, _rec("a3")])


@pytest.mark.parametrize("name,bad,fragment,reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_raises_with_file_and_line(tmp_path, name, bad, fragment, reason):
    path = _bad_file(tmp_path, bad)
    it = iter_records(path)
    assert [next(it).id, next(it).id] == ["a1", "a2"]  # streaming: good records come first
    with pytest.raises(KiltFormatError) as ei:
        next(it)
    err = ei.value
    assert err.path == str(path) and err.line == 5
    assert str(err).startswith(f"{path}:5: ")
    assert fragment in str(err)
    with pytest.raises(KiltFormatError):
        read_task_file(path)


@pytest.mark.parametrize("name,bad,fragment,reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_skipped_and_counted(tmp_path, name, bad, fragment, reason):
    path = _bad_file(tmp_path, bad)
    stats = ReadStats()
    recs = read_task_file(path, on_error="skip", stats=stats)
    assert [r.id for r in recs] == ["a1", "a2", "a3"]
    assert [r.source for r in recs] == [f"{path}:1", f"{path}:3", f"{path}:6"]
    assert stats.path == str(path)
    assert stats.read == 3 and stats.skipped == 1
    assert dict(stats.reasons) == {reason: 1}


def test_missing_input_allowed_without_require_input(tmp_path):
    path = _write_lines(tmp_path / "t.jsonl", [_rec("a1", inp=None), _rec("a2")])
    recs = read_task_file(path, require_input=False)
    assert [r.input for r in recs] == [None, "a question?"]


def test_duplicate_ids_name_both_lines(tmp_path):
    path = _write_lines(tmp_path / "t.jsonl", [_rec("a1"), "", _rec("dup"), _rec("a2"), "",
                                               _rec("dup"), _rec("a3")])
    with pytest.raises(KiltFormatError) as ei:
        read_task_file(path)
    err = ei.value
    assert err.line == 6 and str(err).startswith(f"{path}:6: ")
    assert "duplicate id" in str(err) and "'dup'" in str(err) and "line 3" in str(err)

    stats = ReadStats()
    recs = read_task_file(path, on_error="skip", stats=stats)
    assert [r.id for r in recs] == ["a1", "dup", "a2", "a3"]
    assert recs[1].source == f"{path}:3"  # the first occurrence is kept
    assert (stats.read, stats.skipped) == (4, 1)
    assert dict(stats.reasons) == {"duplicate id": 1}


def test_ids_compared_as_strings(tmp_path):
    # KILT files mix int and str ids: 7 and "7" are the same record id.
    path = _write_lines(tmp_path / "t.jsonl", [_rec(7), _rec("7")])
    with pytest.raises(KiltFormatError, match="duplicate id"):
        read_task_file(path)


def test_many_bad_lines_counted_by_reason(tmp_path):
    lines = [_rec("g1"), "{oops", b"\xff\xfe", json.dumps({"input": "q", "output": []}),
             json.dumps({"id": "m1", "input": "q"}), json.dumps({"id": "m2", "input": "q"}),
             _rec("g2"), _rec("g1"), "", json.dumps(_rec("p1", prov=[{"title": "t"}])),
             _rec("g3")]
    path = _write_lines(tmp_path / "t.jsonl", lines)
    stats = ReadStats()
    recs = list(iter_records(path, on_error="skip", stats=stats))
    assert [r.id for r in recs] == ["g1", "g2", "g3"]
    assert [r.source.rsplit(":", 1)[1] for r in recs] == ["1", "7", "11"]
    assert stats.read == 3 and stats.skipped == 7
    assert dict(stats.reasons) == {"invalid JSON": 1, "invalid UTF-8": 1, "missing 'id'": 1,
                                   "missing 'output' list": 2, "duplicate id": 1,
                                   "provenance without wikipedia_id": 1}
    assert sum(stats.reasons.values()) == stats.skipped


def test_non_utf8_message(tmp_path):
    path = _write_lines(tmp_path / "t.jsonl", [_rec("a"), b"\xff\xfe"])
    with pytest.raises(KiltFormatError, match=r":2: invalid UTF-8") as ei:
        read_task_file(path)
    assert ei.value.line == 2 and str(path) in str(ei.value)


def test_blank_lines_ignored_line_numbers_kept(tmp_path):
    path = _write_lines(tmp_path / "t.jsonl", ["", "", _rec("a"), "  ", "", _rec("b"), ""])
    recs = read_task_file(path)
    assert [(r.id, r.source) for r in recs] == [("a", f"{path}:3"), ("b", f"{path}:6")]


def test_crlf_and_unicode(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(_rec("a", inp="Zürich ☃"), ensure_ascii=False).encode() + b"\r\n")
    (rec,) = read_task_file(path)
    assert rec.input == "Zürich ☃"


def test_on_error_must_be_known(tmp_path):
    path = _write_lines(tmp_path / "t.jsonl", [_rec("a")])
    with pytest.raises(ValueError, match="on_error"):
        read_task_file(path, on_error="ignore")


@pytest.mark.parametrize("reader", [iter_records, iter_knowledge_source],
                         ids=["iter_records", "iter_knowledge_source"])
def test_on_error_checked_at_the_call_with_one_message(tmp_path, reader):
    # Both readers share one check (the knowledge source reader accepted any value before),
    # and it fires at the call, not at the first page.
    path = _write_lines(tmp_path / "ks.jsonl", [_page("1")])
    with pytest.raises(ValueError) as ei:
        reader(path, on_error="ignore")
    assert str(ei.value) == "on_error must be 'raise' or 'skip', got 'ignore'"
    assert check_on_error("skip") == "skip"


def test_record_parsing_details(tmp_path):
    prov = [{"wikipedia_id": 42, "title": "T", "start_paragraph_id": "3", "start_character": 5,
             "end_paragraph_id": 4, "end_character": 1.0, "bleu_score": "0.25",
             "section": "Section::::A"},
            {"wikipedia_id": " 43 "}]
    path = _write_lines(tmp_path / "t.jsonl", [_rec(" r1 ", prov=prov, meta={"k": 1})])
    (rec,) = read_task_file(path)
    assert rec.id == "r1" and rec.meta == {"k": 1}
    assert [o.answer for o in rec.outputs] == ["x", None]
    p, q = rec.provenance_sets()[0]
    assert (p.wikipedia_id, p.start_paragraph_id, p.start_character, p.end_paragraph_id,
            p.end_character, p.bleu_score, p.section) == ("42", 3, 5, 4, 1, 0.25, "Section::::A")
    assert q.wikipedia_id == "43" and q.start_paragraph_id is None and q.bleu_score is None
    assert rec.gold_pages() == ["42", "43"]


# ----------------------------------------------------------------------------- knowledge source


def _page(wid, text=("Title", "Para one."), **extra) -> dict:
    d = {"_id": str(wid), "wikipedia_id": wid, "wikipedia_title": text[0] if text else "T",
         "text": list(text) if isinstance(text, (list, tuple)) else text}
    d.update(extra)
    return d


BAD_PAGES = [
    ("missing_wid", json.dumps({"wikipedia_title": "T", "text": ["T", "p"]}),
     "missing 'wikipedia_id'", "missing 'wikipedia_id'"),
    ("empty_wid", json.dumps({"wikipedia_id": "", "text": ["T", "p"]}),
     "missing 'wikipedia_id'", "missing 'wikipedia_id'"),
    ("text_not_list", json.dumps(_page("9", text="just a string")),
     "'text' must be a non-empty list of strings", "'text' must be a non-empty list of strings"),
    ("text_empty", json.dumps(_page("9", text=[])),
     "'text' must be a non-empty list of strings", "'text' must be a non-empty list of strings"),
    ("text_not_strings", json.dumps(_page("9", text=["T", 3])),
     "'text' must be a non-empty list of strings", "'text' must be a non-empty list of strings"),
    ("duplicate_page", json.dumps(_page("1")), "duplicate wikipedia_id", "duplicate wikipedia_id"),
    ("invalid_json", '{"wikipedia_id": "9"', "invalid JSON", "invalid JSON"),
    ("non_utf8", b"\xff\xfe{}", "invalid UTF-8", "invalid UTF-8"),
    ("not_object", '"a page"', "page must be a JSON object", "page must be a JSON object"),
]


@pytest.mark.parametrize("name,bad,fragment,reason", BAD_PAGES, ids=[b[0] for b in BAD_PAGES])
def test_bad_page(tmp_path, name, bad, fragment, reason):
    path = _write_lines(tmp_path / "ks.jsonl", [_page("1"), "", _page("2"), bad, _page("3")])
    with pytest.raises(KiltFormatError) as ei:
        list(iter_knowledge_source(path))
    err = ei.value
    assert err.path == str(path) and err.line == 4
    assert str(err).startswith(f"{path}:4: ") and fragment in str(err)

    stats = ReadStats()
    pages = list(iter_knowledge_source(path, on_error="skip", stats=stats))
    assert [p.wikipedia_id for p in pages] == ["1", "2", "3"]
    assert stats.read == 3 and stats.skipped == 1 and dict(stats.reasons) == {reason: 1}


def test_page_fields(tmp_path):
    path = _write_lines(tmp_path / "ks.jsonl", [
        _page(5, text=["Five\n", "Para."]),
        {"_id": "6", "text": ["  Six\n", "p"]},  # no wikipedia_id / title: from _id, text[0]
    ])
    p5, p6 = iter_knowledge_source(path)
    assert (p5.wikipedia_id, p5.title, p5.paragraphs) == ("5", "Five\n", ("Five\n", "Para."))
    assert (p6.wikipedia_id, p6.title) == ("6", "Six")


# ----------------------------------------------------------------------------- guess writing


def test_guess_record_and_write_jsonl_round_trip(tmp_path):
    provs = [{"wikipedia_id": "30", "title": "C", "start_paragraph_id": 2, "end_paragraph_id": 2},
             {"wikipedia_id": "10", "title": "A"},
             {"wikipedia_id": "20", "title": "B", "start_paragraph_id": 1}]
    recs = [guess_record("q1", provs, input_text="who?", answer="ans"),
            guess_record(2, provs[::-1]),
            guess_record("q3", [])]
    assert recs[0]["output"][0]["provenance"] is not provs  # copied, not aliased
    path = tmp_path / "sub" / "guess-kilt.jsonl"
    assert write_jsonl(path, iter(recs)) == 3
    assert not list(path.parent.glob("*.tmp*"))

    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert raw == recs
    for r in raw:
        assert len(r["output"]) == 1
    assert [p["wikipedia_id"] for p in raw[0]["output"][0]["provenance"]] == ["30", "10", "20"]
    assert raw[0]["output"][0]["answer"] == "ans" and "answer" not in raw[1]["output"][0]
    assert "input" not in raw[1]

    back = read_task_file(path, require_input=False)
    assert [r.id for r in back] == ["q1", "2", "q3"]
    assert back[0].input == "who?" and back[1].input is None
    assert all(len(r.outputs) == 1 for r in back)
    assert [p.wikipedia_id for p in back[0].outputs[0].provenance] == ["30", "10", "20"]
    assert [p.wikipedia_id for p in back[1].outputs[0].provenance] == ["20", "10", "30"]
    assert back[0].outputs[0].provenance[0].start_paragraph_id == 2
    assert back[2].provenance_sets() == []
    with pytest.raises(KiltFormatError, match=r":2: missing 'input'"):
        read_task_file(path)


def test_write_jsonl_overwrites_atomically(tmp_path):
    path = tmp_path / "g.jsonl"
    write_jsonl(path, [guess_record("a", [{"wikipedia_id": "1"}], input_text="é")])
    write_jsonl(path, [guess_record("b", [{"wikipedia_id": "2"}], input_text="ü")])
    (rec,) = read_task_file(path)
    assert rec.id == "b" and rec.input == "ü"
    assert "ü" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u-escaped
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]


def _old_file(tmp_path) -> Path:
    path = tmp_path / "g.jsonl"
    write_jsonl(path, [guess_record("old", [{"wikipedia_id": "1"}])])
    return path


def _records_then(err: BaseException):
    """Two records, then ``err`` raised by the iterator itself."""
    yield guess_record("a", [{"wikipedia_id": "1"}])
    yield guess_record("b", [{"wikipedia_id": "2"}])
    raise err


def test_write_jsonl_disk_full_removes_tmp_and_keeps_old_file(tmp_path):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(OSError) as ei:
        write_jsonl(path, _records_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    assert ei.value.errno == errno.ENOSPC
    assert str(ei.value) == f"[Errno {errno.ENOSPC}] writing {path}: {os.strerror(errno.ENOSPC)}"
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"] and path.read_bytes() == before


class _FullDisk:
    """A text file whose writes fail with ENOSPC once ``budget`` characters are written."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, text: str) -> int:
        if len(text) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(text)
        return self.f.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def test_write_jsonl_write_failure_removes_tmp_and_keeps_old_file(tmp_path, monkeypatch):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    opened = []

    def full_open(file, mode="r", **kwargs):
        opened.append(os.fspath(file))
        return _FullDisk(builtins.open(file, mode, **kwargs), budget=60)

    monkeypatch.setattr(kilt, "open", full_open, raising=False)
    records = [guess_record(str(i), [{"wikipedia_id": str(i)}]) for i in range(10)]
    with pytest.raises(OSError, match=rf"writing {re.escape(str(path))}: No space left") as ei:
        write_jsonl(path, records)
    assert ei.value.errno == errno.ENOSPC
    assert opened and opened[0] != str(path)  # it wrote a temporary file, now gone
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"] and path.read_bytes() == before


@pytest.mark.parametrize("err, exc_type, message", [
    (OSError("device gone"), OSError, "writing {path}: device gone"),
    (PermissionError(errno.EACCES, "Permission denied"), PermissionError,
     "[Errno 13] writing {path}: Permission denied"),
    (KeyError("boom"), KeyError, "'boom'"),
], ids=["oserror_without_errno", "permission", "not_an_oserror"])
def test_write_jsonl_any_failure_cleans_up(tmp_path, err, exc_type, message):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(exc_type) as ei:
        write_jsonl(path, _records_then(err))
    assert str(ei.value) == message.format(path=path)
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"] and path.read_bytes() == before


def test_write_jsonl_unserialisable_record_cleans_up(tmp_path):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_jsonl(path, [guess_record("a", []), {"id": object()}])
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"] and path.read_bytes() == before
