"""The memory-mapped passage store (``data/passage_store.py``): the same table as the
in-memory one (rows, spans, checksum), errors for damaged stores, and the knowledge
source chunked once."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from multiret_jax.data import kilt, minikilt, passage_store
from multiret_jax.data.passage_store import (TextColumn, knowledge_source_table, open_store,
                                             write_store)
from multiret_jax.data.passages import PassageTable, iter_passages


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("mk")
    minikilt.generate(str(d), scale=0.3, seed=0)
    return str(d / "knowledge_source.jsonl")


def _columns(t):
    return [list(t.ids), list(t.page_ids), list(t.titles), list(t.texts)]


def test_the_store_is_the_in_memory_table(source, tmp_path):
    want = PassageTable.from_pages(kilt.iter_knowledge_source(source), mode="paragraph")
    got = write_store(iter_passages(kilt.iter_knowledge_source(source), mode="paragraph"),
                      str(tmp_path / "store"))
    assert isinstance(got.texts, TextColumn) and len(got) == len(want) > 500
    assert _columns(got) == _columns(want)
    assert np.array_equal(got.spans, want.spans)
    fresh = PassageTable(*_columns(got), np.asarray(got.spans))  # checksum recomputed
    assert got.checksum == want.checksum == fresh.checksum
    n = len(want)
    assert got.texts[-1] == want.texts[-1] and got.titles[n // 2] == want.titles[n // 2]
    assert got.texts[3:9] == want.texts[3:9] and got.ids[10:2:-3] == want.ids[10:2:-3]
    assert got.texts[5:5] == [] and got[7] == want[7]
    assert list(got.rows_of_page(want.page_ids[0])) == list(want.rows_of_page(want.page_ids[0]))
    with pytest.raises(IndexError):
        got.texts[n]
    again = open_store(str(tmp_path / "store"), verify=True)
    assert _columns(again) == _columns(want)
    sub = got.select([4, 2])
    assert sub.texts == [want.texts[4], want.texts[2]]


def test_non_ascii_and_empty_stores(tmp_path):
    from multiret_jax.data.passages import Passage
    ps = [Passage("1_0", "1", "Zürich", "naïve café — 東京", 1, 0, 1, 5),
          Passage("2_0", "2", "", "", 1, 0, 1, 0)]
    t = write_store(ps, str(tmp_path / "a"))
    assert list(t.titles) == ["Zürich", ""] and list(t.texts) == ["naïve café — 東京", ""]
    assert t.checksum == PassageTable.from_passages(ps).checksum
    empty = write_store([], str(tmp_path / "b"))
    assert len(empty) == 0 and list(empty.texts) == [] and empty.spans.shape == (0, 4)


def test_damaged_stores_are_refused(source, tmp_path):
    d = str(tmp_path / "store")
    write_store(iter_passages(kilt.iter_knowledge_source(source)), d)
    with pytest.raises(FileExistsError, match="exists"):
        write_store([], d)
    path = os.path.join(d, "texts.utf8")
    data = bytearray(open(path, "rb").read())
    data[10] ^= 0x01  # same size, other content: only the sha256 tells
    open(path, "wb").write(bytes(data))
    open_store(d)
    with pytest.raises(ValueError, match="texts.utf8.*sha256"):
        open_store(d, verify=True)
    open(path, "ab").write(b"x")
    with pytest.raises(ValueError, match="texts.utf8.*bytes"):
        open_store(d)
    meta = json.loads(open(os.path.join(d, "store.json")).read())
    meta["format"] = "other"
    open(os.path.join(d, "store.json"), "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match="not a passage store"):
        open_store(d)


def test_the_knowledge_source_is_chunked_once(source, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = knowledge_source_table(source, "page", cache_dir=cache, progress=False)
    assert first.checksum == PassageTable.from_pages(kilt.iter_knowledge_source(source)).checksum
    monkeypatch.setattr(passage_store, "write_store", lambda *a: pytest.fail("chunked again"))
    again = knowledge_source_table(source, "page", cache_dir=cache, progress=False)
    assert again.checksum == first.checksum
    monkeypatch.undo()
    other = knowledge_source_table(source, "paragraph", cache_dir=cache, progress=False)
    assert other.checksum != first.checksum  # another chunking, another store
    assert len(os.listdir(os.path.join(cache, "passages"))) == 2


def test_an_edited_source_is_chunked_again_and_a_bad_one_leaves_nothing(source, tmp_path):
    cache = str(tmp_path / "cache")
    copy = tmp_path / "knowledge_source.jsonl"
    lines = open(source).read().splitlines(keepends=True)
    copy.write_text("".join(lines[:50]))
    a = knowledge_source_table(str(copy), cache_dir=cache, progress=False)
    copy.write_text("".join(lines[:60]))
    os.utime(copy, ns=(0, os.stat(copy).st_mtime_ns + 10 ** 9))
    b = knowledge_source_table(str(copy), cache_dir=cache, progress=False)
    assert len(b) > len(a)
    copy.write_text("".join(lines[:5]) + "{not json\n")
    os.utime(copy, ns=(0, os.stat(copy).st_mtime_ns + 2 * 10 ** 9))
    with pytest.raises(ValueError, match="knowledge_source.jsonl"):
        knowledge_source_table(str(copy), cache_dir=cache, progress=False)
    assert len(os.listdir(os.path.join(cache, "passages"))) == 2  # no half-written store
