"""Tests for the KILT retrieval metrics (official golden cases, hand-worked cases, edge cases)."""

from __future__ import annotations

import json
import logging
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

from multiret_jax.metrics import (compute, evaluate, evidence_rank, load_jsonl, metric_keys,
                                  record_metrics)

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kilt_scorer_golden"
needs_golden = pytest.mark.skipif(
    not GOLDEN_DIR.is_dir(), reason=f"KILT scorer golden files not found at {GOLDEN_DIR}"
)

PAGE = ["wikipedia_id"]
SECTION = ["wikipedia_id", "section"]
PASSAGE = ["wikipedia_id", "start_paragraph_id", "end_paragraph_id"]


def approx(expected: dict) -> dict:
    return {k: pytest.approx(float(v), rel=1e-12, abs=1e-12) for k, v in expected.items()}


# --- official golden cases (KILT tests/test_eval_retrieval.py) ---------------------------


@needs_golden
@pytest.mark.parametrize("rank_keys", [PAGE, SECTION, PASSAGE])
@pytest.mark.parametrize(
    "guess_file, expected",
    [
        ("guess2_1.jsonl", {"Rprec": Fraction(1, 2), "precision@1": 1, "precision@5": Fraction(2, 5),
                            "recall@5": Fraction(2, 3), "success_rate@5": 1}),
        ("guess2_2.jsonl", {"Rprec": 1, "precision@1": 1, "precision@5": Fraction(1, 5),
                            "recall@5": Fraction(1, 3), "success_rate@5": 1}),
    ],
)
def test_official_golden(rank_keys, guess_file, expected):
    result = evaluate(GOLDEN_DIR / "gold2.jsonl", GOLDEN_DIR / guess_file, ks=[1, 5], rank_keys=rank_keys)
    assert list(result) == ["Rprec", "precision@1", "precision@5", "recall@5", "success_rate@5"]
    assert result == approx(expected)


# --- hand-worked cases from the other golden files ----------------------------------------


@needs_golden
@pytest.mark.parametrize("rank_keys", [PAGE, ["wikipedia_id", "start_paragraph_id"]])
def test_gold1_guess1_1(rank_keys):
    # Three records, each with one gold page 10287141 (paragraph 5). Record 1 retrieves
    # exactly it: Rprec 1, rank [True] -> P@1 1, P@5 1/5, R@5 1, S@5 1. Records 2 and 3
    # retrieve page 999: rank [False], everything 0. Averages over the 3 records:
    expected = {"Rprec": Fraction(1, 3), "precision@1": Fraction(1, 3),
                "precision@5": Fraction(1, 15), "recall@5": Fraction(1, 3),
                "success_rate@5": Fraction(1, 3)}
    result = evaluate(GOLDEN_DIR / "gold1.jsonl", GOLDEN_DIR / "guess1_1.jsonl", ks=[1, 5], rank_keys=rank_keys)
    assert result == approx(expected)


@needs_golden
def test_gold1_guess1_1_missing_rank_key_is_an_error():
    # No provenance has a "section": officially every score is 0, silently. Now an error
    # naming the key, the keys the gold provenance has and the gold file.
    gold = GOLDEN_DIR / "gold1.jsonl"
    keys = ["bleu_score", "end_character", "end_paragraph_id", "meta", "start_character",
            "start_paragraph_id", "title", "wikipedia_id"]
    with pytest.raises(ValueError) as ei:
        evaluate(gold, GOLDEN_DIR / "guess1_1.jsonl", ks=[1, 5], rank_keys=SECTION)
    assert str(ei.value) == f"rank key(s) ['section'] in no gold provenance item of {gold}; keys present: {keys}"


@needs_golden
def test_gold3_guess3_1():
    # Two records, gold page "1" each. Record 1 guesses int 1 == "1" after str(): Rprec 1,
    # rank [True] -> P@1 1, P@5 1/5, R@5 1, S@5 1. Record 2 guesses "2": all 0. Averages:
    expected = {"Rprec": Fraction(1, 2), "precision@1": Fraction(1, 2),
                "precision@5": Fraction(1, 10), "recall@5": Fraction(1, 2),
                "success_rate@5": Fraction(1, 2)}
    result = evaluate(GOLDEN_DIR / "gold3.jsonl", GOLDEN_DIR / "guess3_1.jsonl", ks=[1, 5])
    assert result == approx(expected)


# --- in-memory semantics ------------------------------------------------------------------


def test_default_keys_order():
    assert metric_keys([20, 1, 10, 5]) == [
        "Rprec", "precision@1", "precision@5", "recall@5", "success_rate@5",
        "precision@10", "recall@10", "success_rate@10", "precision@20", "recall@20", "success_rate@20",
    ]
    assert list(record_metrics(["a"], [["a"]])) == metric_keys([1, 5, 10, 20])


def test_duplicate_guess_ids_deduplicated_before_rprec():
    assert record_metrics(["a", "a", "b"], [["a", "b"]], ks=[1])["Rprec"] == 1.0


def test_evidence_set_point_moves_to_its_last_page():
    # Set {a, b} is complete only at b; its partial point from a is removed, so the rank is
    # x:False, c:True, b:True (the {a,b} point) -> 3 points for 4 guesses.
    rank, n_sets = evidence_rank(["a", "x", "c", "b"], [["a", "b"], ["c"]])
    assert rank == [False, True, True] and n_sets == 2
    m = record_metrics(["a", "x", "c", "b"], [["a", "b"], ["c"]], ks=[1, 2, 3])
    assert m == approx({"Rprec": Fraction(1, 2), "precision@1": 0, "precision@2": Fraction(1, 2),
                        "recall@2": Fraction(1, 2), "success_rate@2": 1, "precision@3": Fraction(2, 3),
                        "recall@3": 1, "success_rate@3": 1})


def test_evidence_sets_dedup_empty_and_missing_provenance():
    # {a,b} == {b,a}: one set; [] is an (uncompletable) set, as officially; None is no set.
    rank, n_sets = evidence_rank(["a", "b"], [["a", "b"], ["b", "a"], [], None])
    assert n_sets == 2 and rank == [True]
    assert record_metrics(["a", "b"], [["a", "b"], ["b", "a"], [], None], ks=[5])["recall@5"] == 0.5
    # No evidence sets or no guesses: P/R/S are 0.
    assert record_metrics(["a"], [None], ks=[1, 2]) == approx({k: 0 for k in metric_keys([1, 2])})
    assert record_metrics([], [["a"]], ks=[1, 2]) == approx({k: 0 for k in metric_keys([1, 2])})
    assert record_metrics(["a"], [], ks=[1])["Rprec"] == 0.0


def test_overlapping_evidence_sets():
    # "a" is in both sets: it completes {a} (True) and leaves a partial point for {a,b}.
    rank, _ = evidence_rank(["a", "b"], [["a", "b"], ["a"]])
    assert rank == [True, True]


def test_compute_and_provenance_ids(caplog):
    gold = [{"id": 7, "output": [{"answer": "x"},  # no provenance: Rprec list [] and no set
                                 {"provenance": [{"wikipedia_id": 1, "section": " s "},
                                                 {"wikipedia_id": "2"}]}]}]  # 2nd lacks section
    guess = [{"id": "7 ", "output": [{"provenance": [{"wikipedia_id": "1", "section": "s"}]}]}]
    # The item lacking "section" is an error by default ...
    with pytest.raises(ValueError, match=r"^gold records: gold record '7', output 1, provenance "
                                         r"item 1 lacks rank key\(s\) 'section'"):
        compute(gold, guess, ks=[1, 5], rank_keys=SECTION)
    # ... and skipped, as officially, with one warning, on request.
    with caplog.at_level(logging.WARNING, logger="multiret_jax.metrics.kilt_retrieval"):
        result = compute(gold, guess, ks=[1, 5], rank_keys=SECTION, on_error="skip")
    assert result == approx({"Rprec": 1, "precision@1": 1, "precision@5": Fraction(1, 5),
                             "recall@5": 1, "success_rate@5": 1})
    assert caplog.messages == ["1 gold provenance item(s) skipped in gold records: "
                               "1 without 'section' (first: record '7')"]
    # No gold records: nothing to score is an error, not all zeros.
    with pytest.raises(ValueError, match="no gold records in gold records"):
        compute([], [], ks=[1])
    with pytest.raises(ValueError, match="aligned"):
        compute(gold, [{"id": 8, "output": [{"provenance": []}]}], ks=[1])
    with pytest.raises(ValueError, match="positive"):
        record_metrics(["a"], [["a"]], ks=[0])


# --- file-level errors --------------------------------------------------------------------


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rec(rid, *id_lists):
    return {"id": rid, "output": [{"provenance": [{"wikipedia_id": i} for i in ids]} for ids in id_lists]}


def test_guess_with_two_outputs_is_an_error(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"], ["b"])])
    with pytest.raises(ValueError, match="'q1'.*exactly one output"):
        evaluate(gold, guess)
    with pytest.raises(ValueError, match="'q1'.*exactly one output"):
        compute([rec("q1", ["a"])], [rec("q1", ["a"], ["b"])])


def test_guess_output_without_provenance_is_dropped_like_official(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    guess_rec = rec("q1", ["a"])
    guess_rec["output"].insert(0, {"answer": "text"})
    guess = write_jsonl(tmp_path / "guess.jsonl", [guess_rec])
    assert evaluate(gold, guess, ks=[1])["Rprec"] == 1.0


def test_missing_guess_is_an_error(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"]), rec("q2", ["b"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"])])
    with pytest.raises(ValueError, match=r"'q2'.*guess\.jsonl"):
        evaluate(gold, guess)


def test_duplicate_ids_are_errors(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"]), rec(" q1", ["b"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"])])
    with pytest.raises(ValueError, match="gold ids must be unique"):
        evaluate(gold, guess)
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"]), rec("q1", ["a"])])
    with pytest.raises(ValueError, match="guess ids must be unique"):
        evaluate(gold, guess)


def test_invalid_json_names_file_and_line(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec("q1", ["a"])) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        evaluate(gold, bad)


def test_guesses_reordered_and_extras_warned(tmp_path, caplog):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec(1, ["a"]), rec(2, ["b"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("3", ["c"]), rec("2", ["b"]), rec(" 1 ", ["x", "a"])])
    with caplog.at_level(logging.WARNING, logger="multiret_jax.metrics.kilt_retrieval"):
        result = evaluate(gold, guess, ks=[1, 2])
    assert "ignored" in caplog.text
    # q1: Rprec 0 (first 1 guess is x), rank [F, T]; q2: Rprec 1, rank [T].
    assert result == approx({"Rprec": Fraction(1, 2), "precision@1": Fraction(1, 2),
                             "precision@2": Fraction(1, 2), "recall@2": 1, "success_rate@2": 1})


# --- randomized cross-check of R-precision against a set-based reference -------------------


def reference_rprec(guess: Sequence[str], gold_lists: Sequence[Optional[Sequence[str]]]) -> float:
    """Set-based: grow the set of distinct guesses until it has R = |gold set| members."""
    best = 0.0
    for gold in gold_lists:
        gold_set = set(gold or [])
        if not gold_set:
            continue
        retrieved = set()
        for g in guess:
            if len(retrieved) == len(gold_set):
                break
            retrieved.add(g)
        best = max(best, len(retrieved & gold_set) / len(gold_set))
    return best


def test_rprec_matches_set_based_reference():
    rng = random.Random(1234)
    alphabet = list("abcdefg")
    for _ in range(200):
        guess = [rng.choice(alphabet) for _ in range(rng.randint(0, 9))]
        gold: List[Optional[List[str]]] = []
        for _ in range(rng.randint(0, 3)):
            gold.append(None if rng.random() < 0.15 else [rng.choice(alphabet) for _ in range(rng.randint(0, 4))])
        got = record_metrics(guess, gold, ks=[1])["Rprec"]
        assert got == pytest.approx(reference_rprec(guess, gold), abs=1e-12), (guess, gold)


# --- bad input never passes silently (files written in tmp_path) ---------------------------

LOGGER = "multiret_jax.metrics.kilt_retrieval"


def prov_rec(rid, *items):
    """A record with one output whose provenance is ``items`` as given (any JSON value)."""
    return {"id": rid, "output": [{"provenance": list(items)}]}


def warnings_of(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_rank_key_in_no_gold_provenance_names_key_present_keys_and_file(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [prov_rec("q1", {"wikipedia_id": "a", "title": "A"})])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"])])
    with pytest.raises(ValueError) as ei:
        evaluate(gold, guess, rank_keys=["wikipedia"])
    assert str(ei.value) == (f"rank key(s) ['wikipedia'] in no gold provenance item of {gold}; "
                             "keys present: ['title', 'wikipedia_id']")
    with pytest.raises(ValueError, match=r"rank key\(s\) \['section', 'x'\] in no gold provenance"):
        evaluate(gold, guess, rank_keys=["wikipedia_id", "section", "x"])
    with pytest.raises(ValueError, match=r"\['wikipedia'\].*gold records; keys present"):
        compute(load_jsonl(gold), load_jsonl(guess), rank_keys="wikipedia")


def test_gold_without_any_provenance_is_an_error(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "q1", "output": [{"answer": "x"}]},
                                                 prov_rec("q2")])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"]), rec("q2", ["a"])])
    with pytest.raises(ValueError, match=rf"no gold provenance item .* in {re.escape(str(gold))} "
                                         r"\(2 records\): nothing to score"):
        evaluate(gold, guess)


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank_lines"])
def test_empty_gold_file_is_an_error(tmp_path, content):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(content, encoding="utf-8")
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"])])
    with pytest.raises(ValueError) as ei:
        evaluate(gold, guess)
    assert str(ei.value) == f"gold file {gold} has no records: nothing to score"


def _gold_missing_paragraph_ids(tmp_path) -> Path:
    """q1 complete; q2 (line 3, after a blank line) has two items without paragraph ids."""
    full = {"wikipedia_id": "a", "start_paragraph_id": 1, "end_paragraph_id": 1}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(prov_rec("q1", full)) + "\n\n"
                    + json.dumps(prov_rec("q2", full, {"wikipedia_id": "b"}, {"wikipedia_id": "c"}))
                    + "\n", encoding="utf-8")
    return path


def test_gold_item_without_rank_key_raises_naming_file_line_record(tmp_path):
    gold = _gold_missing_paragraph_ids(tmp_path)
    guess = write_jsonl(tmp_path / "guess.jsonl", [prov_rec("q1"), prov_rec("q2")])
    with pytest.raises(ValueError) as ei:
        evaluate(gold, guess, rank_keys=PASSAGE)
    assert str(ei.value) == (
        f"{gold}:3: gold record 'q2', output 0, provenance item 1 lacks rank key(s) "
        "'start_paragraph_id', 'end_paragraph_id': {'wikipedia_id': 'b'} "
        "(on_error='skip' drops such items, as the official scorer does)")


def test_gold_item_without_rank_key_skipped_with_one_warning(tmp_path, caplog):
    gold = _gold_missing_paragraph_ids(tmp_path)
    guess = write_jsonl(tmp_path / "guess.jsonl", [
        prov_rec("q1", {"wikipedia_id": "a", "start_paragraph_id": 1, "end_paragraph_id": 1}),
        prov_rec("q2", {"wikipedia_id": "a", "start_paragraph_id": 1, "end_paragraph_id": 1})])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = evaluate(gold, guess, ks=[1], rank_keys=PASSAGE, on_error="skip")
    assert warnings_of(caplog) == [
        f"2 gold provenance item(s) skipped in {gold}: 2 without 'start_paragraph_id', "
        "'end_paragraph_id' (first: line 3, record 'q2')"]
    assert result == {"Rprec": 1.0, "precision@1": 1.0}  # as officially: only "a+1+1" is gold


def test_guess_item_not_an_object_raises_naming_file_line_record(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"]), rec("q2", ["b"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [
        rec("q1", ["a"]), prov_rec("q2", {"wikipedia_id": "b"}, "Berlin")])
    with pytest.raises(ValueError) as ei:
        evaluate(gold, guess)
    assert str(ei.value) == (f"{guess}:2: guess record 'q2', output 0, provenance item 1 is not a "
                             "JSON object: 'Berlin' (on_error='skip' drops such items, as the "
                             "official scorer does)")
    # A string that contains a rank key used to crash with a TypeError.
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"]), prov_rec("q2", "wikipedia_id b")])
    with pytest.raises(ValueError, match=r"guess\.jsonl:2: guess record 'q2', output 0, provenance "
                                         r"item 0 is not a JSON object"):
        evaluate(gold, guess)


def test_bad_provenance_items_skipped_one_warning_per_file(tmp_path, caplog):
    gold = write_jsonl(tmp_path / "gold.jsonl", [
        prov_rec("q1", {"wikipedia_id": "a"}, ["a"]),        # a list: not an object
        prov_rec("q2", {"wikipedia_id": "b"}, {"title": "B"})])  # no wikipedia_id
    guess = write_jsonl(tmp_path / "guess.jsonl", [
        prov_rec("q1", "x", {"wikipedia_id": "a"}, 7),       # two non-objects
        prov_rec("q2", {"title": "no id"}, {"wikipedia_id": "b"})])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = evaluate(gold, guess, ks=[1], on_error="skip")
    assert result == {"Rprec": 1.0, "precision@1": 1.0}
    assert warnings_of(caplog) == [
        f"2 gold provenance item(s) skipped in {gold}: 1 not a JSON object, 1 without "
        "'wikipedia_id' (first: line 1, record 'q1')",
        f"3 guess provenance item(s) skipped in {guess}: 2 not a JSON object, 1 without "
        "'wikipedia_id' (first: line 1, record 'q1')"]
    with pytest.raises(ValueError, match=r"gold\.jsonl:1: gold record 'q1', output 0, provenance "
                                         r"item 1 is not a JSON object: \['a'\]"):
        evaluate(gold, guess, ks=[1])


def test_guess_item_without_rank_key_raises(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [prov_rec("q1", {"title": "A"})])
    with pytest.raises(ValueError, match=r"guess\.jsonl:1: guess record 'q1', output 0, provenance "
                                         r"item 0 lacks rank key\(s\) 'wikipedia_id'"):
        evaluate(gold, guess)


def test_on_error_must_be_known(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    message = "on_error must be 'raise' or 'skip', got 'ignore'"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate(gold, gold, on_error="ignore")
    with pytest.raises(ValueError, match=re.escape(message)):
        compute([rec("q1", ["a"])], [rec("q1", ["a"])], on_error="ignore")


def test_malformed_structure_names_file_line_record(tmp_path):
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"])])
    gold = write_jsonl(tmp_path / "gold.jsonl",
                       [rec("q0", ["a"]), {"id": "q1", "output": [{"provenance": None}]}])
    with pytest.raises(ValueError, match=rf"{re.escape(str(gold))}:2: gold record 'q1', output 0: "
                                         r"'provenance' must be a list, got NoneType"):
        evaluate(gold, guess)
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    guess = write_jsonl(tmp_path / "guess.jsonl", [rec("q1", ["a"]), {"output": []}])
    with pytest.raises(ValueError, match=r"guess\.jsonl:2: guess record without an 'id'"):
        evaluate(gold, guess)
    guess = write_jsonl(tmp_path / "guess.jsonl", [{"id": "q1", "output": [{"answer": "x"}]}])
    with pytest.raises(ValueError, match=r"guess\.jsonl:1: guess record 'q1' must have exactly one "
                                         r"output with provenance, has 0"):
        evaluate(gold, guess)


def test_load_jsonl_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(rec("q1", ["a"])).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(ValueError) as ei:
        load_jsonl(path)
    assert str(ei.value) == f"{path}:2: invalid UTF-8 (at byte 8 of the line)"
    gold = write_jsonl(tmp_path / "gold.jsonl", [rec("q1", ["a"])])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: invalid UTF-8"):
        evaluate(gold, path)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"x"', "str"), ("3", "int"),
                                        ("null", "NoneType")])
def test_load_jsonl_non_object_line_names_file_and_line(tmp_path, line, kind):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec("q1", ["a"])) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as ei:
        load_jsonl(path)
    assert str(ei.value) == f"{path}:2: record must be a JSON object, got {kind}"


def test_load_jsonl_with_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("\n" + json.dumps({"id": 1}) + "\n\n" + json.dumps({"id": 2}) + "\n", encoding="utf-8")
    assert load_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert load_jsonl(path, with_lines=True) == [(2, {"id": 1}), (4, {"id": 2})]
