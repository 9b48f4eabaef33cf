"""Run comparison (experiments/compare.py) and the passage-level metrics of evaluate.py, on
hand-made results whose tables are computed here by hand."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from multiret_jax import evaluate, tables
from multiret_jax.data import kilt
from multiret_jax.data.kilt import Page
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import get_task
from multiret_jax.experiments import compare


def _page(rprec, r5, s5):
    return {"Rprec": rprec, "precision@1": rprec, "precision@5": r5 / 5,
            "recall@5": r5, "success_rate@5": s5}


def _write_results(d, tasks):
    d.mkdir(parents=True, exist_ok=True)
    out = {"retriever": "bm25", "split": "dev", "tasks": {}}
    for t, (page, passage) in tasks.items():
        out["tasks"][t] = {"task": t, "page": page, "passage": passage,
                           "passage_rprec": None if passage is None else passage["Rprec"]}
    (d / "results.json").write_text(json.dumps(out))
    return d


def _write_summary(d, final, initial=None):
    d.mkdir(parents=True, exist_ok=True)
    val = lambda v: None if v is None else {
        "avg_page_rprec": float(np.mean([r[0] for r in v.values()])),
        "tasks": {t: {"page_rprec": p, "passage_rprec": q, "recall@5": r5, "num_queries": 3}
                  for t, (p, q, r5) in v.items()}}
    (d / "summary.json").write_text(json.dumps({"steps": 10, "tasks": list(final),
                                                "validation": val(final),
                                                "initial_validation": val(initial)}))
    return d


@pytest.fixture
def runs(tmp_path):
    """bm25: evaluate dir with fever, nq, wow (wow without passage gold); taco: a train
    dir with fever, nq, hotpotqa (no wow), final and initial validation."""
    bm25 = _write_results(tmp_path / "bm25", {
        "nq": (_page(0.40, 0.60, 0.70), _page(0.20, 0.30, 0.40)),
        "wow": (_page(0.30, 0.50, 0.50), None),
        "fever": (_page(0.50, 0.80, 0.90), _page(0.10, 0.20, 0.30))})
    taco = _write_summary(tmp_path / "taco",
                          {"fever": (0.75, 0.25, 0.85), "nq": (0.45, 0.35, 0.65),
                           "hotpotqa": (0.30, None, 0.40)},
                          initial={"fever": (0.05, 0.01, 0.1), "nq": (0.02, 0.0, 0.03),
                                   "hotpotqa": (0.0, None, 0.0)})
    return {"bm25": str(bm25), "taco": str(taco)}


def test_values_averages_and_differences(runs):
    rs = compare.parse_runs([f"bm25={runs['bm25']}", f"taco={runs['taco']}",
                             f"zero={runs['taco']}#initial"])
    assert [r.kind for r in rs] == ["evaluate", "train", "train"]
    res = compare.compare(rs, ["page_rprec", "passage_rprec"], reference="bm25")
    assert res["tasks"] == ["fever", "nq", "hotpotqa", "wow"]  # the papers' order
    v = res["metrics"]["page_rprec"]["values"]
    assert v["bm25"] == pytest.approx({"fever": 50.0, "nq": 40.0, "hotpotqa": None, "wow": 30.0,
                                       "Avg": 40.0})
    assert v["taco"] == pytest.approx({"fever": 75.0, "nq": 45.0, "hotpotqa": 30.0, "wow": None,
                                       "Avg": 50.0})
    assert v["zero"]["Avg"] == pytest.approx((5 + 2 + 0) / 3)
    d = res["metrics"]["page_rprec"]["differences"]
    assert set(d) == {"taco", "zero"}  # the reference row is not repeated
    # Defined where both have the task; Avg = mean of those differences.
    assert d["taco"] == pytest.approx({"fever": 25.0, "nq": 5.0, "hotpotqa": None, "wow": None,
                                       "Avg": 15.0})
    assert d["zero"] == pytest.approx({"fever": -45.0, "nq": -38.0, "hotpotqa": None,
                                       "wow": None, "Avg": -41.5})
    p = res["metrics"]["passage_rprec"]["values"]
    assert p["bm25"] == pytest.approx({"fever": 10.0, "nq": 20.0, "hotpotqa": None, "wow": None,
                                       "Avg": 15.0})
    assert p["taco"]["Avg"] == pytest.approx(30.0)
    assert res["metrics"]["passage_rprec"]["differences"]["taco"]["fever"] == pytest.approx(15.0)


def test_written_tables_parse_back(runs, tmp_path):
    rs = compare.parse_runs([f"bm25={runs['bm25']}", f"taco={runs['taco']}"])
    res = compare.compare(rs, ["Rprec", "recall@5"], reference="bm25")
    assert list(res["metrics"]) == ["page_rprec", "page_recall@5"]
    md, csv_path, js = compare.write_comparison(str(tmp_path / "out" / "cmp"), res)
    rows = list(csv.reader(open(csv_path)))
    assert rows[0] == ["metric", "table", "run", "FEV", "NQ", "HoPo", "WoW", "Avg"]
    body = {(r[0], r[1], r[2]): r[3:] for r in rows[1:]}
    assert body[("page_rprec", "value", "bm25")] == ["50.00", "40.00", "-", "30.00", "40.00"]
    assert body[("page_rprec", "value", "taco")] == ["75.00", "45.00", "30.00", "-", "50.00"]
    assert body[("page_rprec", "minus bm25", "taco")] == ["+25.00", "+5.00", "-", "-", "+15.00"]
    assert body[("page_recall@5", "value", "taco")] == ["85.00", "65.00", "40.00", "-", "63.33"]
    assert body[("page_recall@5", "minus bm25", "taco")] == ["+5.00", "+5.00", "-", "-", "+5.00"]
    assert len(rows) == 1 + 3 + 3
    text = open(md).read()
    lines = text.splitlines()
    start = lines.index("### page_rprec x100")
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[start + 2:start + 6]]
    assert table[0] == ["", "FEV", "NQ", "HoPo", "WoW", "Avg"]
    assert table[2] == ["bm25", "50.00", "40.00", "-", "30.00", "40.00"]
    assert "### page_rprec x100, minus bm25" in text
    assert "Avg over the tasks present ('-' excluded): bm25: 3 of 4; taco: 3 of 4" in text
    saved = json.load(open(js))
    assert saved["metrics"]["page_rprec"]["values"]["taco"]["Avg"] == pytest.approx(50.0)
    assert saved["runs"]["taco"]["kind"] == "train"
    assert saved["runs"]["bm25"]["path"].endswith("results.json")


def test_errors_name_the_run_and_path(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run 'x': .*empty is neither"):
        compare.load_run("x", str(tmp_path / "empty"))
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="other.json is neither"):
        compare.load_run("x", str(tmp_path / "other.json"))
    rs = compare.parse_runs([f"bm25={runs['bm25']}", f"taco={runs['taco']}"])
    with pytest.raises(ValueError, match=r"run 'taco' \(.*summary.json\) has no page_success@5"):
        compare.compare(rs, ["success@5"])
    with pytest.raises(ValueError, match="unknown metric"):
        compare.compare(rs, ["ndcg@10"])
    with pytest.raises(KeyError, match="reference run 'nope'"):
        compare.compare(rs, ["page_rprec"], reference="nope")
    with pytest.raises(ValueError, match="#initial applies to training runs"):
        compare.load_run("b", runs["bm25"] + "#initial")
    _write_summary(tmp_path / "unfinished", {"nq": (0.1, 0.1, 0.1)})
    with pytest.raises(ValueError, match="no 'initial_validation'"):
        compare.load_run("u", str(tmp_path / "unfinished") + "#initial")
    with pytest.raises(ValueError, match="unique"):
        compare.compare(compare.parse_runs([runs["bm25"], runs["bm25"]]))


def test_metric_names():
    assert compare.canonical_metric("Rprec") == "page_rprec"
    assert compare.canonical_metric("passage_success_rate@5") == "passage_success@5"
    assert compare.canonical_metric("page_recall@20") == "page_recall@20"
    assert compare.canonical_metric("precision@1") == "page_precision@1"


def test_cli(runs, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "multiret_jax.experiments.compare", "--runs", f"bm25={runs['bm25']}",
         f"taco={runs['taco']}", "--reference=bm25", "--metric=page_rprec",
         f"--out={tmp_path / 'c'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "page_rprec x100:"
    assert lines[1].split() == ["FEV", "NQ", "HoPo", "WoW", "Avg"]
    assert lines[3].split() == ["taco", "75.00", "45.00", "30.00", "-", "50.00"]
    assert "+25.00" in out.stdout and (tmp_path / "c.csv").exists()
    bad = subprocess.run([sys.executable, "-m", "multiret_jax.experiments.compare",
                          f"--runs=x={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and f"{tmp_path} is neither" in bad.stderr


def test_signed_tables():
    text = tables.format_table({"a": {"nq": 1.234, "fever": -0.5}}, ["nq", "fever"], "csv",
                               signed=True)
    assert list(csv.reader(io.StringIO(text)))[1] == ["a", "-0.50", "+1.23", "+0.37"]


# ----------------------------------------------------------------------------------------
# evaluate.py: passage-level recall / success (KILT semantics over passage ids)
# ----------------------------------------------------------------------------------------
class _FixedRetriever:
    def __init__(self, rows):
        self.rows = np.asarray(rows)

    def search(self, queries, k, show_progress=False):
        assert len(queries) == len(self.rows)
        return self.rows[:, :k], -np.arange(self.rows.shape[1], dtype=float)[None].repeat(
            len(self.rows), 0)[:, :k]


def test_evaluate_task_passage_metrics(tmp_path):
    pages = [Page(str(i), f"T{i}", (f"T{i}", f"alpha beta {i}", f"gamma delta {i}", f"eps {i}"))
             for i in (1, 2, 3)]
    table = PassageTable.from_pages(pages, 100, "paragraph")
    assert table.ids == ["1_0", "1_1", "1_2", "2_0", "2_1", "2_2", "3_0", "3_1", "3_2"]
    span = lambda wid, par: {"wikipedia_id": wid, "start_paragraph_id": par,
                             "end_paragraph_id": par, "start_character": 0, "end_character": 3}
    gold = [  # q1: passage 1_1; q2: one evidence set {2_2, 3_0}; q3: page only (no passage gold)
        {"id": "q1", "input": "a", "output": [{"provenance": [span("1", 2)]}]},
        {"id": "q2", "input": "b", "output": [{"provenance": [span("2", 3), span("3", 1)]}]},
        {"id": "q3", "input": "c", "output": [{"provenance": [{"wikipedia_id": "3"}]}]}]
    gold_path = tmp_path / "nq-dev-kilt.jsonl"
    kilt.write_jsonl(gold_path, gold)
    rows = [[0, 1, 3, 6, 4], [7, 6, 2, 5, 0], [6, 0, 3, 1, 2]]
    res = evaluate.evaluate_task(get_task("nq"), kilt.read_task_file(gold_path), str(gold_path),
                                 _FixedRetriever(rows), table, str(tmp_path / "g.jsonl"),
                                 depth=5, ks=(1, 2, 5))
    # By hand. q1: 1_1 at rank 2 -> Rprec 0, recall@2 1. q2 (R=2): 3_1 3_0 -> Rprec 1/2;
    # rank points [F, F, T, F] (3_0's partial point dropped when 2_2 completes the set) ->
    # recall@2 0, recall@5 1. q3 is not counted.
    assert res["passage_queries"] == 2
    assert res["passage_rprec"] == pytest.approx(0.25)
    p = res["passage"]
    assert p["Rprec"] == pytest.approx(0.25)
    assert p["recall@2"] == pytest.approx(0.5) and p["success_rate@2"] == pytest.approx(0.5)
    assert p["recall@5"] == pytest.approx(1.0) and p["success_rate@5"] == pytest.approx(1.0)
    assert p["precision@1"] == 0.0
    # Page level (pages of the ranking: q1 1,2,3; q2 3,1,2; q3 3,1,2): Rprec 1, 1/2, 1.
    assert res["page"]["Rprec"] == pytest.approx((1 + 0.5 + 1) / 3)
    # q2's pages 3, 1, 2: page 3 is a partial point, dropped when 2 completes the set, so
    # the rank is [False, True] and success@2 is 1 (KILT's rank semantics), as for q1, q3.
    assert res["page"]["success_rate@2"] == pytest.approx(1.0)

    results = {"retriever": "bm25", "tasks": {"nq": res, "aidayago2": {
        **res, "passage": None, "passage_rprec": None}}}
    rr = evaluate.result_rows(results, ks=(2, 5))
    assert list(rr) == ["BM25 page R-prec", "BM25 passage R-prec",
                        "BM25 page recall@2", "BM25 passage recall@2",
                        "BM25 page success@2", "BM25 passage success@2",
                        "BM25 page recall@5", "BM25 passage recall@5",
                        "BM25 page success@5", "BM25 passage success@5"]
    assert rr["BM25 passage recall@2"] == pytest.approx({"nq": 50.0, "aidayago2": None})
    assert rr["BM25 page success@2"]["nq"] == pytest.approx(100.0)
    # ... and compare.py reads the passage metrics of such a results.json.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    run = compare.load_run("r", str(tmp_path / "run"))
    assert run.tasks["nq"]["passage_success@2"] == pytest.approx(0.5)
    assert "passage_recall@5" not in run.tasks["aidayago2"]
