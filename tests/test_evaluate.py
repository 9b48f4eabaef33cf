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
