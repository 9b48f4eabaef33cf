"""End-to-end evaluation CLI: guess files in KILT format, scores equal an independent path."""

import json

import numpy as np
import pytest

from multiret_jax import evaluate, metrics
from multiret_jax.data import kilt
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.passages import PassageTable


def test_run_evaluation_on_realmini(shared_data, tmp_path):
    d = shared_data / "realmini"
    res = evaluate.run_evaluation(data_dir=str(d), out_dir=str(tmp_path), tasks=["nq", "fever"],
                                  chunk_mode="paragraph", ks=(1, 5))
    assert res["num_passages"] == 10329
    # Independent path: our own BM25 search + in-memory page-level R-precision.
    table = PassageTable.from_pages(kilt.iter_knowledge_source(d / "knowledge_source.jsonl"),
                                    mode="paragraph")
    ret = BM25Retriever().index(table, show_progress=False)
    for task in ("nq", "fever"):
        recs = kilt.read_task_file(d / f"{task}-dev-kilt.jsonl")
        rows, _ = ret.search([r.input for r in recs], 100, show_progress=False)
        rprec = np.mean([metrics.r_precision(pages, [list(dict.fromkeys(p.wikipedia_id for p in s))
                                                     for s in r.provenance_sets()])
                         for r, pages in zip(recs, ret.page_ranking(rows))])
        assert res["tasks"][task]["page"]["Rprec"] == pytest.approx(rprec, abs=1e-12)
        # The guess file is KILT-format: one output, ordered, de-duplicated page provenance.
        guesses = kilt.read_task_file(tmp_path / "guesses" / f"{task}-dev-guess.jsonl")
        assert [g.id for g in guesses] == [r.id for r in recs]
        for g in guesses:
            assert len(g.outputs) == 1
            pages = [p.wikipedia_id for p in g.outputs[0].provenance]
            assert len(pages) == len(set(pages)) > 0
        assert res["tasks"][task]["passage_rprec"] is not None
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["tasks"]["nq"]["page"] == res["tasks"]["nq"]["page"]
    assert "| NQ |" in (tmp_path / "table.md").read_text().replace("FEV | NQ", "| NQ")


def test_missing_task_file_is_a_clear_error(tmp_path):
    (tmp_path / "knowledge_source.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="no KILT task files"):
        evaluate.run_evaluation(data_dir=str(tmp_path), out_dir=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="nq-dev-kilt.jsonl"):
        evaluate.run_evaluation(data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), tasks=["nq"])
    with pytest.raises(KeyError, match="unknown retriever"):
        evaluate.run_evaluation(data_dir=str(tmp_path), retriever="nope")


# ------------------------------------------------------------------- no lost or mixed outputs

@pytest.fixture(scope="module")
def small_kilt(tmp_path_factory):
    from multiret_jax.data import minikilt
    out = tmp_path_factory.mktemp("mk")
    minikilt.generate(str(out), scale=0.05, seed=0)
    return out


def _digest(root):
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_failed_rerun_leaves_the_previous_output_whole(small_kilt, tmp_path):
    """A rerun that fails after the first task (here the retriever breaks on the second
    task) used to leave new guess files beside the old results.json and tables; now the
    previous output is byte-identical and no staging directory is left."""
    out = tmp_path / "out"
    kw = dict(data_dir=str(small_kilt), out_dir=str(out), tasks=["nq", "fever"], ks=(1, 5))
    evaluate.run_evaluation(**kw)
    before = _digest(out)
    calls = []

    class Breaks:
        def __init__(self, table):
            self.bm25 = BM25Retriever().index(table, show_progress=False)

        def search(self, queries, k, show_progress=False):
            calls.append(len(queries))
            if len(calls) == 2:
                raise RuntimeError("retriever failed on the second task")
            rows, scores = self.bm25.search(queries, k, show_progress=False)
            return rows[:, ::-1], scores[:, ::-1]  # another ranking: other files

    evaluate.register_retriever("breaks", Breaks)
    try:
        with pytest.raises(RuntimeError, match="second task"):
            evaluate.run_evaluation(retriever="breaks", **kw)
    finally:
        evaluate.RETRIEVERS.pop("breaks")
    assert len(calls) == 2
    assert _digest(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_bad_task_file_fails_before_anything_is_written(small_kilt, tmp_path):
    data = _copy(small_kilt, tmp_path / "data")
    with open(data / "fever-dev-kilt.jsonl", "a") as f:
        f.write('{"id": "broken", "input": "x", "output": [}\n')
    line = len((data / "fever-dev-kilt.jsonl").read_text().splitlines())
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"mine": 1}\n')
    with pytest.raises(kilt.KiltFormatError, match=f"fever-dev-kilt.jsonl:{line}: invalid JSON"):
        evaluate.run_evaluation(data_dir=str(data), out_dir=str(out), tasks=["nq", "fever"])
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == '{"mine": 1}\n'


def test_blank_queries_are_counted_and_named(small_kilt, tmp_path, caplog):
    data = _copy(small_kilt, tmp_path / "data")
    path = data / "nq-dev-kilt.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[0]["input"], recs[2]["input"] = "", "   "
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with caplog.at_level("WARNING"):
        evaluate.run_evaluation(data_dir=str(data), out_dir=str(tmp_path / "o"), tasks=["nq"])
    assert f"2 of {len(recs)} queries are empty or blank" in caplog.text
    assert repr(recs[0]["id"]) in caplog.text and repr(recs[2]["id"]) in caplog.text
    with pytest.raises(ValueError, match="2 of .* queries are empty or blank"):
        evaluate.run_evaluation(data_dir=str(data), out_dir=str(tmp_path / "o2"), tasks=["nq"],
                                on_empty_query="fail")
    assert not (tmp_path / "o2" / "results.json").exists()


def test_empty_task_file_is_noted_under_the_table(small_kilt, tmp_path):
    data = _copy(small_kilt, tmp_path / "data")
    (data / "fever-dev-kilt.jsonl").write_text("")
    res = evaluate.run_evaluation(data_dir=str(data), out_dir=str(tmp_path / "o"),
                                  tasks=["nq", "fever"])
    note = evaluate.missing_note(res)
    assert note and "FEVER" not in note and "fever" in note and "other 1 of 2" in note
    assert note in (tmp_path / "o" / "table.md").read_text()
    table = json.loads((tmp_path / "o" / "table.json").read_text())
    row = table["BM25 page R-prec"]
    assert row["fever"] is None and row["Avg"] == pytest.approx(row["nq"])


def test_disk_full_names_the_directory_and_leaves_no_staging(small_kilt, tmp_path,
                                                             monkeypatch):
    """A write that fails with ENOSPC (results.json here) names where the outputs were
    going; the staging directory is removed and the earlier outputs are untouched."""
    import errno
    out = tmp_path / "out"
    kw = dict(data_dir=str(small_kilt), out_dir=str(out), tasks=["nq"])
    evaluate.run_evaluation(**kw)
    before = _digest(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate.json, "dump", full)
    with pytest.raises(OSError, match=f"writing the outputs into {out}: No space left"):
        evaluate.run_evaluation(**kw)  # (gin re-raises a copy: errno is not kept)
    assert _digest(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
