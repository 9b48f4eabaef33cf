"""Tests for page -> 100-word passage chunking and the PassageTable (multiret_jax.data.passages)."""

from __future__ import annotations

import json
import math
import random
import re
from typing import List, Sequence

import numpy as np
import pytest

from multiret_jax.data.kilt import Page, iter_knowledge_source
from multiret_jax.data.passages import (
    CHUNK_MODES,
    Passage,
    PassageTable,
    chunk_page,
    iter_passages,
    page_of,
    passage_id,
)


# ----------------------------------------------------------------------------- helpers


def _expected_words(paragraphs: Sequence[str]) -> List[List[str]]:
    """Independent reference: per paragraph id, the words a passage must contain.

    The title (paragraph 0) and ``Section::::`` headings contribute nothing; ``BULLET::::-``
    markers are dropped and a ``BULLET::::`` prefix glued to a word is removed.
    """
    out: List[List[str]] = [[]]
    for par in paragraphs[1:]:
        words: List[str] = []
        if not par.lstrip().startswith("Section::::"):
            for w in par.split():
                if w in ("BULLET::::-", "BULLET::::"):
                    continue
                words.append(w[len("BULLET::::"):] if w.startswith("BULLET::::") else w)
        out.append(words)
    return out


def _words_in_span(paragraphs: Sequence[str], p: Passage) -> List[str]:
    """The (cleaned) words of the original text between the passage's span ends."""
    words: List[str] = []
    for par_id in range(p.start_paragraph_id, p.end_paragraph_id + 1):
        text = paragraphs[par_id]
        lo = p.start_character if par_id == p.start_paragraph_id else 0
        hi = p.end_character if par_id == p.end_paragraph_id else len(text)
        words.extend(_expected_words(["", text[lo:hi]])[1])
    return words


def _check_page(page: Page, passages: List[Passage], n: int, mode: str) -> None:
    """All chunking invariants for one page."""
    pars = page.paragraphs
    expected = _expected_words(pars)
    # ids, page fields
    assert [p.pid for p in passages] == [f"{page.wikipedia_id}_{k}" for k in range(len(passages))]
    assert all(p.page_id == page.wikipedia_id and p.title == page.title for p in passages)
    assert all(page_of(p.pid) == page.wikipedia_id for p in passages)
    # disjoint, ordered cover of every word exactly once, <= n words each
    got = [w for p in passages for w in p.text.split()]
    assert got == [w for ws in expected for w in ws]
    sizes = [len(p.text.split()) for p in passages]
    assert all(1 <= s <= n for s in sizes)
    assert all(p.text == " ".join(p.text.split()) for p in passages)
    prev_end = (0, 0)
    for p in passages:
        start = (p.start_paragraph_id, p.start_character)
        end = (p.end_paragraph_id, p.end_character)
        assert prev_end <= start < end
        prev_end = end
        assert 1 <= p.start_paragraph_id <= p.end_paragraph_id < len(pars)
        words = p.text.split()
        first, last = words[0], words[-1]
        # the span starts exactly at the first word and ends exactly after the last one
        sp, ep = pars[p.start_paragraph_id], pars[p.end_paragraph_id]
        assert sp[p.start_character:p.start_character + len(first)] == first
        assert p.start_character == 0 or not sp[p.start_character - 1].strip() \
            or sp[:p.start_character].endswith("BULLET::::")
        assert ep[p.end_character - len(last):p.end_character] == last
        assert p.end_character == len(ep) or ep[p.end_character].isspace()
        # and covers exactly the passage's words
        assert _words_in_span(pars, p) == words
    if mode == "paragraph":
        assert all(p.start_paragraph_id == p.end_paragraph_id for p in passages)
        for par_id, ws in enumerate(expected):
            chunk_sizes = [len(p.text.split()) for p in passages if p.start_paragraph_id == par_id]
            assert chunk_sizes == [min(n, len(ws) - i) for i in range(0, len(ws), n)]
    else:
        total = len(got)
        assert sizes == [min(n, total - i) for i in range(0, total, n)]


def _numbered(prefix: str, k: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(k))


HAND_PAGE = Page("4_2", "Some Title", (
    "Some Title\n",
    "Section::::Abstract.",
    _numbered("a", 150),
    "  lead   spaces\tand\ttabs\nnew  lines  ",
    "BULLET::::- item one",
    "BULLET::::- item two",
    "   Section::::History.",
    _numbered("b", 30),
    "",
    "   ",
    "BULLET::::glued word BULLET:::: x",
    "BULLET::::-",
    "Zürich café — naïve ☃ 東京",
))


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("mode", CHUNK_MODES)
@pytest.mark.parametrize("n", [100, 7, 1])
def test_hand_page_invariants(mode, n):
    passages = chunk_page(HAND_PAGE, n, mode)
    _check_page(HAND_PAGE, passages, n, mode)


def test_hand_page_page_mode_exact():
    ps = chunk_page(HAND_PAGE, 100, "page")
    # 150 + 6 + 2 + 2 + 30 + 3 + 6 = 199 words -> 100 + 99
    assert [len(p.text.split()) for p in ps] == [100, 99]
    a, b = ps
    assert a.pid == "4_2_0" and b.pid == "4_2_1"
    assert (a.start_paragraph_id, a.start_character) == (2, 0)
    assert a.end_paragraph_id == 2 and a.text.split()[-1] == "a99"
    assert a.end_character == HAND_PAGE.paragraphs[2].index("a99") + 3
    assert b.text.split()[0] == "a100" and b.start_character == HAND_PAGE.paragraphs[2].index("a100")
    assert b.end_paragraph_id == 12 and b.end_character == len(HAND_PAGE.paragraphs[12])
    # page mode crosses paragraphs, markup dropped, offsets of the original text
    assert "item one item two" in b.text and "BULLET" not in b.text and "Section" not in b.text
    assert "glued word x" in b.text


def test_hand_page_paragraph_mode_exact():
    ps = chunk_page(HAND_PAGE, 100, "paragraph")
    assert [(p.start_paragraph_id, len(p.text.split())) for p in ps] == [
        (2, 100), (2, 50), (3, 6), (4, 2), (5, 2), (7, 30), (10, 3), (12, 6)]
    assert ps[2].text == "lead spaces and tabs new lines"
    assert (ps[2].start_character, ps[2].end_character) == (2, len(HAND_PAGE.paragraphs[3]) - 2)
    assert (ps[3].start_character, ps[3].end_character) == (len("BULLET::::- "), 20)
    # a BULLET:::: prefix glued to a word: the span starts at the word itself
    assert ps[6].text == "glued word x" and ps[6].start_character == len("BULLET::::")
    assert ps[7].text == "Zürich café — naïve ☃ 東京" and ps[7].end_character == len(HAND_PAGE.paragraphs[12])


def test_random_pages_invariants():
    rng = random.Random(0)
    seps = [" ", "  ", "\n", "\t", " \n "]
    for t in range(60):
        pars = [f"Title {t}\n"]
        for _ in range(rng.randint(0, 8)):
            kind = rng.random()
            words = [rng.choice(["w", "x", "yy", "ä", "1.5", "(z)"]) + str(rng.randint(0, 999))
                     for _ in range(rng.choice([0, 1, 3, 40, 99, 100, 101, 250]))]
            if kind < 0.1:
                pars.append(f"Section::::Heading {t}.")
                continue
            if kind < 0.25 and words:
                words[0] = "BULLET::::- " + words[0]
            text = ""
            for w in words:
                text += rng.choice(seps) + w
            pars.append(text + rng.choice(["", "\n", " "]))
        page = Page(f"{t}_{rng.randint(0, 9)}" if t % 3 else str(t), f"Title {t}", tuple(pars))
        for mode in CHUNK_MODES:
            for n in (100, rng.randint(1, 120)):
                _check_page(page, chunk_page(page, n, mode), n, mode)


def test_empty_pages():
    assert chunk_page(Page("1", "T", ("T",))) == []
    assert chunk_page(Page("1", "T", ("T", "", "  \n", "Section::::A.", "BULLET::::-"))) == []
    # the title paragraph is never chunked
    (p,) = chunk_page(Page("1", "T", ("many words in the title", "body")))
    assert p.text == "body" and p.start_paragraph_id == 1


def test_unknown_mode_and_bad_size():
    with pytest.raises(ValueError, match="unknown chunk mode 'sentence'"):
        chunk_page(HAND_PAGE, 100, "sentence")
    with pytest.raises(ValueError, match="unknown chunk mode"):
        PassageTable.from_pages([HAND_PAGE], mode="Page")
    with pytest.raises(ValueError):
        chunk_page(HAND_PAGE, 0)


def test_passage_ids_and_page_of():
    assert passage_id("123", 4) == "123_4"
    for page in ["123", "Foo_bar", "a_1_2", "_x", "90000001"]:
        for k in (0, 7, 123):
            assert page_of(passage_id(page, k)) == page
    for bad in ["123", "abc_", "abc_x", "12_-1", ""]:
        with pytest.raises(ValueError, match="passage id"):
            page_of(bad)


def test_iter_passages_streams_pages_in_order():
    pages = [Page("p_1", "A", ("A", "one two three")), Page("p_2", "B", ("B",)),
             Page("p_3", "C", ("C", "four", "five six"))]
    ps = list(iter_passages(iter(pages), 2, "paragraph"))
    assert [(p.pid, p.text) for p in ps] == [("p_1_0", "one two"), ("p_1_1", "three"),
                                            ("p_3_0", "four"), ("p_3_1", "five six")]
    ps = list(iter_passages(iter(pages), 2, "page"))
    assert [(p.pid, p.text) for p in ps] == [("p_1_0", "one two"), ("p_1_1", "three"),
                                            ("p_3_0", "four five"), ("p_3_1", "six")]
    assert (ps[2].start_paragraph_id, ps[2].end_paragraph_id, ps[2].end_character) == (1, 2, 4)


# ----------------------------------------------------------------------------- the table


def _small_table() -> PassageTable:
    pages = [Page("7", "Seven", ("Seven", _numbered("s", 230), "tail words")),
             Page("Foo_bar", "Foo bar", ("Foo bar", "foo text")),
             HAND_PAGE]
    return PassageTable.from_pages(pages, mode="page")


def test_table_access():
    t = _small_table()
    assert len(t) == 3 + 1 + 2
    assert t.ids[:4] == ["7_0", "7_1", "7_2", "Foo_bar_0"]
    assert t.spans.dtype == np.int32 and t.spans.shape == (len(t), 4)
    for i in range(len(t)):
        p = t[i]
        assert t.row_of(p.pid) == i and p.page_id == t.page_ids[i] == page_of(p.pid)
        assert list(t.spans[i]) == [p.start_paragraph_id, p.start_character,
                                    p.end_paragraph_id, p.end_character]
    assert t.rows_of_page("7").tolist() == [0, 1, 2]
    assert t.rows_of_page("Foo_bar").tolist() == [3]
    assert t.rows_of_page("nope").size == 0
    assert t.contents()[3] == "Foo bar foo text"
    assert t.contents(with_title=False)[3] == "foo text"
    assert t.contents(sep=" | ")[3] == "Foo bar | foo text"
    with pytest.raises(KeyError):
        t.row_of("7_9")
    with pytest.raises(ValueError, match="different lengths"):
        PassageTable(["a_0"], ["a"], ["t"], ["x", "y"], np.zeros((1, 4)))
    empty = PassageTable.from_passages([])
    assert len(empty) == 0 and empty.spans.shape == (0, 4)


def test_checksum_stable_and_sensitive():
    t1, t2 = _small_table(), _small_table()
    assert t1.checksum == t2.checksum
    assert re.fullmatch(r"[0-9a-f]{64}", t1.checksum)
    seen = {t1.checksum}
    for i in range(len(t1)):
        for col in ("texts", "titles", "ids"):
            values = {"ids": list(t1.ids), "titles": list(t1.titles), "texts": list(t1.texts)}
            values[col][i] = values[col][i] + "!"
            t = PassageTable(values["ids"], t1.page_ids, values["titles"], values["texts"],
                             t1.spans)
            assert t.checksum not in seen
            seen.add(t.checksum)
    # row order matters
    perm = list(range(len(t1)))[::-1]
    t = PassageTable([t1.ids[i] for i in perm], [t1.page_ids[i] for i in perm],
                     [t1.titles[i] for i in perm], [t1.texts[i] for i in perm], t1.spans[perm])
    assert t.checksum != t1.checksum


def test_save_load_round_trip(tmp_path):
    t = _small_table()
    d = tmp_path / "table"
    t.save(str(d))
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest == {"num_passages": len(t), "checksum": t.checksum}
    u = PassageTable.load(str(d))
    assert (u.ids, u.page_ids, u.titles, u.texts) == (t.ids, t.page_ids, t.titles, t.texts)
    np.testing.assert_array_equal(u.spans, t.spans)
    assert u.spans.dtype == np.int32 and u.checksum == t.checksum
    assert "Zürich" in (d / "passages.jsonl").read_text(encoding="utf-8")


def test_load_tampered_raises_naming_file(tmp_path):
    d = tmp_path / "table"
    _small_table().save(str(d))
    path = d / "passages.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["text"] = row["text"].replace("s150", "s151")
    path.write_text("\n".join(lines[:1] + [json.dumps(row)] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="checksum") as ei:
        PassageTable.load(str(d))
    assert str(path) in str(ei.value) and "modified" in str(ei.value)

    # a broken row names file and line
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3:")):
        PassageTable.load(str(d))
    path.write_text("\n".join(lines[:3] + [json.dumps({"pid": "x_0"})] + lines[4:]) + "\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4:")):
        PassageTable.load(str(d))


# ----------------------------------------------------------------------------- realmini


@pytest.fixture(scope="module")
def realmini_pages(shared_data):
    return list(iter_knowledge_source(shared_data / "realmini" / "knowledge_source.jsonl"))


def test_realmini_paragraph_mode_count(realmini_pages):
    t = PassageTable.from_pages(iter(realmini_pages), mode="paragraph")
    assert len(t) == 10329  # shared/data/README.md's reference figure
    assert len(set(t.ids)) == len(t)
    assert all(len(x.split()) <= 100 for x in t.texts)
    assert np.all(t.spans[:, 0] == t.spans[:, 2])
    expected = sum(math.ceil(len(w) / 100) for pg in realmini_pages
                   for w in _expected_words(pg.paragraphs)[1:])
    assert len(t) == expected
    # stable checksum across builds
    assert PassageTable.from_pages(realmini_pages, mode="paragraph").checksum == t.checksum


def test_realmini_page_mode_count(realmini_pages):
    t = PassageTable.from_pages(iter(realmini_pages), mode="page")
    expected = sum(math.ceil(len(" ".join(pg.paragraphs[1:]).split()) / 100)
                   for pg in realmini_pages)
    assert len(t) == expected
    assert len(set(t.ids)) == len(t)
    # every page with body text has passages; their words are the page's words in order
    by_page = {}
    for i, pg in enumerate(t.page_ids):
        by_page.setdefault(pg, []).append(i)
    for pg in realmini_pages[:500]:
        rows = by_page.get(pg.wikipedia_id, [])
        words = [w for i in rows for w in t.texts[i].split()]
        assert words == " ".join(pg.paragraphs[1:]).split()
