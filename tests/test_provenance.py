"""Tests for provenance -> passage mapping and training-example filtering
(multiret_jax.data.provenance)."""

from __future__ import annotations

import re
from typing import List, Optional

import numpy as np
import pytest

from multiret_jax.data.kilt import (
    KiltRecord,
    Page,
    Provenance,
    iter_knowledge_source,
    parse_record,
    read_task_file,
)
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import (
    FilterStats,
    gold_passage_sets,
    passage_gold_ids,
    provenance_rows,
    training_examples,
)


def _numbered(prefix: str, k: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(k))


OTHER = Page("11", "Other", ("Other", _numbered("o", 120)))
# Page "55": paragraph 1 has 250 words, 2 has 30, 3 has 50 (plus a heading, skipped).
P1, P2, P3 = _numbered("a", 250), _numbered("b", 30), _numbered("c", 50)
PAGE = Page("55", "Fifty five", ("Fifty five", P1, P2, "Section::::History.", P3))
LAST = Page("77_x", "Last", ("Last", "only a few words"))


def _start(par: str, k: int) -> int:
    """Character offset of the k-th word of a paragraph."""
    return [m.start() for m in re.finditer(r"\S+", par)][k]


def _end(par: str, k: int) -> int:
    """Character offset just after the k-th word of a paragraph."""
    return [m.end() for m in re.finditer(r"\S+", par)][k]


@pytest.fixture(scope="module")
def page_table() -> PassageTable:
    # page mode: 11_0, 11_1 | 55_0 = a0..a99, 55_1 = a100..a199,
    # 55_2 = a200..a249 + b0..b29 + c0..c19, 55_3 = c20..c49 | 77_x_0
    t = PassageTable.from_pages([OTHER, PAGE, LAST], mode="page")
    assert t.ids == ["11_0", "11_1", "55_0", "55_1", "55_2", "55_3", "77_x_0"]
    assert t.texts[4].split()[0] == "a200" and t.texts[4].split()[-1] == "c19"
    return t


@pytest.fixture(scope="module")
def par_table() -> PassageTable:
    # paragraph mode: 55_0 = a0..a99, 55_1 = a100..a199, 55_2 = a200..a249, 55_3 = b*, 55_4 = c*
    t = PassageTable.from_pages([OTHER, PAGE, LAST], mode="paragraph")
    assert t.ids == ["11_0", "11_1", "55_0", "55_1", "55_2", "55_3", "55_4", "77_x_0"]
    return t


def _prov(sp: Optional[int], sc: Optional[int], ep: Optional[int], ec: Optional[int],
          wid: str = "55", bleu: Optional[float] = None) -> Provenance:
    return Provenance(wid, "t", sp, sc, ep, ec, bleu)


def _ids(table: PassageTable, rows: np.ndarray) -> List[str]:
    return [table.ids[r] for r in rows]


# ----------------------------------------------------------------------------- provenance_rows


def test_span_inside_one_passage(page_table, par_table):
    prov = _prov(1, _start(P1, 10), 1, _end(P1, 20))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_0"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_0"]
    # a single word, the last of a passage / the first of the next
    assert _ids(page_table, provenance_rows(_prov(1, _start(P1, 99), 1, _end(P1, 99)),
                                            page_table)) == ["55_0"]
    assert _ids(page_table, provenance_rows(_prov(1, _start(P1, 100), 1, _end(P1, 100)),
                                            page_table)) == ["55_1"]
    # inside paragraph 3, within the tail passage
    assert _ids(page_table, provenance_rows(_prov(4, _start(P3, 25), 4, _end(P3, 30)),
                                            page_table)) == ["55_3"]


def test_span_crossing_a_passage_boundary(page_table, par_table):
    prov = _prov(1, _start(P1, 95), 1, _end(P1, 105))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_0", "55_1"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_0", "55_1"]
    # across paragraphs: from a150 to c40
    prov = _prov(1, _start(P1, 150), 4, _end(P3, 40))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_1", "55_2", "55_3"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_1", "55_2", "55_3", "55_4"]
    # a whole paragraph in page mode: paragraph 2 lies inside passage 55_2
    prov = _prov(2, 0, 2, len(P2))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_2"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_3"]


def test_span_end_is_exclusive(page_table):
    # ends exactly where 55_1 starts: 55_1 is not covered
    prov = _prov(1, _start(P1, 50), 1, _start(P1, 100))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_0"]
    # starts in the whitespace after a99: only 55_1
    prov = _prov(1, _end(P1, 99), 1, _end(P1, 120))
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_1"]


def test_span_without_paragraph_ids_maps_to_whole_page(page_table, par_table):
    prov = _prov(None, None, None, None)  # AIDA-style page-only provenance
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_0", "55_1", "55_2", "55_3"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == [
        "55_0", "55_1", "55_2", "55_3", "55_4"]
    # page ids with underscores are not confused with passage ids
    prov = _prov(None, None, None, None, wid="77_x")
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["77_x_0"]


def test_span_on_unknown_page_is_empty(page_table):
    for prov in (_prov(1, 0, 1, 10, wid="999"), _prov(None, None, None, None, wid="999"),
                 _prov(None, None, None, None, wid="77")):
        rows = provenance_rows(prov, page_table)
        assert isinstance(rows, np.ndarray) and rows.size == 0


def test_missing_end_character_and_end_paragraph(page_table, par_table):
    # end_character None: to the end of the end paragraph
    prov = _prov(1, _start(P1, 150), 1, None)
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_1", "55_2"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_1", "55_2"]
    # NQ-style: only paragraph ids
    prov = _prov(2, None, 2, None)
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_2"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_3"]
    prov = _prov(1, None, 1, None)
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_0", "55_1", "55_2"]
    # end_paragraph_id None: the start paragraph
    prov = _prov(4, None, None, None)
    assert _ids(page_table, provenance_rows(prov, page_table)) == ["55_2", "55_3"]
    assert _ids(par_table, provenance_rows(prov, par_table)) == ["55_4"]


def test_zero_length_span_covers_its_start(page_table):
    at = _start(P1, 120)
    assert _ids(page_table, provenance_rows(_prov(1, at, 1, at), page_table)) == ["55_1"]


def test_span_on_skipped_heading(page_table, par_table):
    # A span on the "Section::::" heading (paragraph 3) maps to the passages overlapping it:
    # in page mode 55_2 runs from paragraph 1 to paragraph 4; in paragraph mode none does.
    assert _ids(page_table, provenance_rows(_prov(3, 0, 3, 5), page_table)) == ["55_2"]
    assert _ids(par_table, provenance_rows(_prov(3, 0, 3, 5), par_table)) == []


# ----------------------------------------------------------------------------- realmini NQ


@pytest.fixture(scope="module")
def realmini(shared_data):
    d = shared_data / "realmini"
    pages = {p.wikipedia_id: p for p in iter_knowledge_source(d / "knowledge_source.jsonl")}
    return d, pages


@pytest.mark.parametrize("mode", ["paragraph", "page"])
def test_realmini_nq_gold_passages_cover_provenance_paragraph(realmini, mode):
    d, pages = realmini
    table = PassageTable.from_pages(pages.values(), mode=mode)
    recs = read_task_file(d / "nq-dev-kilt.jsonl")
    assert len(recs) == 637
    n_checked = 0
    for rec in recs:
        for prov_set in rec.provenance_sets():
            for prov in prov_set:
                assert prov.start_paragraph_id is not None
                page = pages[prov.wikipedia_id]
                rows = provenance_rows(prov, table)
                assert rows.size >= 1, rec.id
                body = " ".join(" ".join(page.paragraphs[1:]).split())
                for r in rows:
                    assert table.page_ids[r] == prov.wikipedia_id
                    assert table.titles[r] == page.title
                    assert table.texts[r] in body  # a piece of this page's text
                par_words = page.paragraphs[prov.start_paragraph_id].split()
                gold_words = [w for r in rows for w in table.texts[r].split()]
                assert set(par_words) <= set(gold_words), rec.id
                joined, needle = " ".join(gold_words), " ".join(par_words)
                if mode == "paragraph":
                    assert joined == needle  # exactly the paragraph's passages
                else:
                    assert needle in joined  # contiguous, in order
                n_checked += 1
    assert n_checked >= 637


# ----------------------------------------------------------------------------- training examples


def _record(rid: str, provs: Optional[list], inp: Optional[str] = "q?") -> KiltRecord:
    outs = [{"answer": "a"}]
    if provs is not None:
        outs.append({"answer": "a", "provenance": provs})
    obj = {"id": rid, "output": outs}
    if inp is not None:
        obj["input"] = inp
    return parse_record(obj, f"mem:{rid}", require_input=False)


def _span(k0: int, k1: int, bleu: Optional[float] = None, wid: str = "55") -> dict:
    d = {"wikipedia_id": wid, "start_paragraph_id": 1, "start_character": _start(P1, k0),
         "end_paragraph_id": 1, "end_character": _end(P1, k1)}
    if bleu is not None:
        d["bleu_score"] = bleu
    return d


def test_training_examples_bleu_filter(page_table):
    recs = [
        _record("good", [_span(10, 20, 0.9)]),
        _record("low", [_span(10, 20, 0.3), _span(150, 160, 0.49)]),
        _record("mixed", [_span(10, 20, 0.2), _span(150, 160, 0.5)]),
        _record("nobleu", [_span(150, 160), {"wikipedia_id": "11"}]),
        _record("noprov", None),
        _record("emptyprov", []),
        _record("unmapped", [_span(1, 2, 1.0, wid="404")]),
        _record("noinput", [_span(10, 20, 0.9)], inp=None),
        _record("twosets", None),
    ]
    # a record with two provenance sets (two outputs)
    recs[-1] = parse_record({"id": "twosets", "input": "q?", "output": [
        {"answer": "x", "provenance": [_span(10, 12, 0.8)]},
        {"answer": "y", "provenance": [_span(98, 101, 0.7), _span(10, 11, 0.1)]}]}, "mem")

    examples, stats = training_examples(recs, page_table, min_bleu=0.5, name="toy")
    assert isinstance(stats, FilterStats)
    by_id = {e.id: e for e in examples}
    assert list(by_id) == ["good", "mixed", "nobleu", "twosets"]
    assert stats.total == len(recs) and stats.kept == 4
    assert dict(stats.dropped) == {"provenance bleu < min_bleu": 1, "no provenance": 2,
                                   "provenance not in passages": 1, "no input": 1}
    assert stats.unmapped_provenance >= 1
    assert "kept 4/9 examples" in stats.summary()

    row = page_table.row_of
    e = by_id["good"]
    assert e.query == "q?" and e.positives.tolist() == [row("55_0")]
    assert e.gold_pages == ("55",)
    assert by_id["mixed"].positives.tolist() == [row("55_1")]  # the 0.2 item was dropped
    e = by_id["nobleu"]  # items without a score are kept, page-only ones map to the page
    assert e.positives.tolist() == [row("55_1"), row("11_0"), row("11_1")]
    assert e.gold_pages == ("55", "11")
    e = by_id["twosets"]
    assert [s.tolist() for s in e.positive_sets] == [[row("55_0")], [row("55_0"), row("55_1")]]
    assert e.positives.tolist() == [row("55_0"), row("55_1")]

    # min_bleu=None keeps every mapped record
    examples, stats = training_examples(recs, page_table, min_bleu=None)
    assert [e.id for e in examples] == ["good", "low", "mixed", "nobleu", "twosets"]
    assert dict(stats.dropped) == {"no provenance": 2, "provenance not in passages": 1,
                                   "no input": 1}
    assert examples[2].positives.tolist() == [row("55_0"), row("55_1")]


def test_gold_passage_sets(page_table):
    rec = _record("r", [_span(10, 20, 0.1), {"wikipedia_id": "404"}])
    stats = FilterStats()
    assert gold_passage_sets(rec, page_table, 0.5, stats) == []
    assert stats.unmapped_provenance == 1
    sets = gold_passage_sets(rec, page_table)
    assert [s.tolist() for s in sets] == [[page_table.row_of("55_0")]]


def test_passage_gold_ids_skips_page_only_provenance(page_table):
    rec = parse_record({"id": "p", "input": "q", "output": [
        {"provenance": [{"wikipedia_id": "11"}, _span(95, 105)]},  # page-only item skipped
        {"provenance": [{"wikipedia_id": "55"}]},                 # page-only set: left out
        {"answer": "no provenance"},
        {"provenance": [_span(10, 11), _span(12, 13), {"wikipedia_id": "404",
                                                        "start_paragraph_id": 1}]},
    ]}, "mem")
    assert passage_gold_ids(rec, page_table) == [["55_0", "55_1"], ["55_0"]]
    aida_like = parse_record({"id": "a", "input": "q", "output": [
        {"provenance": [{"wikipedia_id": "55"}]}]}, "mem")
    assert passage_gold_ids(aida_like, page_table) == []
