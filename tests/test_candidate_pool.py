"""The validation candidate pool (``data/candidate_pool.py``): what it holds, that it is
fixed by its seed, that ranking the pool equals ranking the full corpus with the other
passages left out, and the trainer validating on it, labelled."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from multiret_jax.data import kilt
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.candidate_pool import candidate_pool, gold_page_rows, random_rows
from multiret_jax.index.mine import exact_search
from multiret_jax.training.validation import ranking_metrics

TASKS = ("nq", "fever", "aidayago2")


@pytest.fixture(scope="module")
def world(small_minikilt, tmp_path_factory):
    d, table = small_minikilt
    dev = {t: kilt.read_task_file(os.path.join(d, f"{t}-dev-kilt.jsonl")) for t in TASKS}
    bm25 = BM25Cache(str(tmp_path_factory.mktemp("bm25")), table, progress=False)
    return table, dev, bm25


def test_the_pool_holds_gold_pages_bm25_top_and_random_passages(world):
    table, dev, bm25 = world
    size = len(table) // 2
    pool = candidate_pool(table, dev, bm25, size, bm25_depth=3, seed=0)
    rows = set(pool.rows.tolist())
    assert len(pool.rows) == size == pool.info["passages"] and len(pool.table) == size
    assert np.all(np.diff(pool.rows) > 0) and pool.info["kind"] == "pool"
    # every passage of every gold page (computed here from the records and page ids)
    records = [r for recs in dev.values() for r in recs if r.input is not None]
    gold_pages = {p.wikipedia_id for r in records for s in r.provenance_sets() for p in s}
    gold = {i for i, pg in enumerate(table.page_ids) if pg in gold_pages}
    assert gold and gold <= rows and pool.info["gold"] == len(gold)
    # every dev query's BM25 top 3 (a fresh search, not the cache's files)
    top = {int(x) for t, recs in dev.items() for x in
           bm25.retriever.search([r.input for r in recs if r.input is not None], k=3,
                                 show_progress=False)[0].reshape(-1)}
    assert top <= rows and pool.info["bm25"] == len(top - gold)
    assert pool.info["random"] == size - len(gold | top) > 0
    # the pool's passages are the table's rows, ids and texts alike
    for i in (0, size // 2, size - 1):
        r = int(pool.rows[i])
        assert (pool.table.ids[i], pool.table.texts[i], pool.table.page_ids[i]) == \
            (table.ids[r], table.texts[r], table.page_ids[r])
        assert np.array_equal(pool.table.spans[i], table.spans[r])
    assert pool.label() == f"pool of {size:,} of {len(table):,} passages"


def test_the_pool_is_fixed_by_its_seed(world):
    table, dev, bm25 = world
    size = len(table) // 2
    a = candidate_pool(table, dev, bm25, size, seed=0)
    assert np.array_equal(a.rows, candidate_pool(table, dev, bm25, size, seed=0).rows)
    b = candidate_pool(table, dev, bm25, size, seed=1)
    assert len(b.rows) == size and not np.array_equal(a.rows, b.rows)


def test_full_corpus_when_the_pool_would_hold_it_all(world):
    table, dev, bm25 = world
    for size in (None, len(table), 10 * len(table)):
        pool = candidate_pool(table, dev, bm25, size)
        assert pool.table is table and pool.info["kind"] == "full"
        assert np.array_equal(pool.rows, np.arange(len(table)))
        assert pool.label() == f"full corpus, {len(table):,} passages"
    with pytest.raises(ValueError, match="positive"):
        candidate_pool(table, dev, bm25, 0)


def test_required_passages_beyond_the_size_are_all_kept(world, caplog):
    table, dev, bm25 = world
    pool = candidate_pool(table, dev, bm25, 5, bm25_depth=3)
    assert len(pool.rows) > 5 and pool.info["random"] == 0
    assert "exceed the pool size 5" in caplog.text


def test_ranking_the_pool_equals_the_full_ranking_without_the_others(world):
    """Exact dense search over the pool = the full corpus's ranking with the passages
    outside the pool dropped; page R-precision can only rise (gold pages are all in)."""
    table, dev, bm25 = world
    pool = candidate_pool(table, dev, bm25, len(table) // 3, seed=0)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(table), 16)).astype(np.float32)
    records = [r for r in dev["nq"] if r.input is not None]
    q = rng.standard_normal((len(records), 16)).astype(np.float32)
    full_rows, _ = exact_search(q, emb, len(table))
    pool_rows, _ = exact_search(q, emb[pool.rows], 20)
    inside = np.isin(full_rows, pool.rows)
    want = np.stack([row[keep][:20] for row, keep in zip(full_rows, inside)])
    assert np.array_equal(pool.rows[pool_rows], want)
    on_pool = ranking_metrics(records, pool_rows, pool.table)
    on_full = ranking_metrics(records, full_rows[:, :20], table)
    assert on_pool["page_rprec"] >= on_full["page_rprec"]
    assert on_pool["passage_queries"] == on_full["passage_queries"]


def test_random_rows():
    exclude = np.asarray([0, 5, 7])
    a = random_rows(20, 10, exclude, seed=3)
    assert len(set(a.tolist())) == 10 and not set(a.tolist()) & {0, 5, 7}
    assert np.array_equal(a, random_rows(20, 10, exclude, seed=3))
    assert np.array_equal(random_rows(10, 7, exclude, 0),
                          np.setdiff1d(np.arange(10), exclude))  # every row left
    assert random_rows(10, 0, exclude, 0).size == 0
    with pytest.raises(ValueError, match="cannot draw"):
        random_rows(10, 8, exclude, 0)


def test_gold_page_rows_of_no_records(world):
    assert gold_page_rows(world[0], []).size == 0


@pytest.mark.slow  # ~1 min: a tiny trainer run; the pool itself is checked above by default
@pytest.mark.usefixtures("clean_gin")
def test_the_trainer_validates_on_the_pool_and_says_so(tmp_path):
    from multiret_jax.gin_utils import parse_gin
    from multiret_jax.train import train
    from multiret_jax.training.report import final_report
    parse_gin(["models/bert_tiny.gin"], [])
    summary = train(model_dir=str(tmp_path / "run"), steps=2, global_batch=16,
                    eval_every=2, passage_len=32, query_len=16, minikilt_scale=0.3,
                    val_pool_size=400, compare_bm25=True, tasks=["nq", "fever"],
                    val_tasks=["nq", "fever"])
    corpus = summary["validation"]["corpus"]
    assert corpus["kind"] == "pool" and corpus["passages"] >= 400
    assert corpus["passages"] < corpus["corpus_passages"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["validation"]["corpus"] == corpus
    text = (tmp_path / "run" / "table.txt").read_text()
    assert f"ranked: pool of {corpus['passages']:,} of {corpus['corpus_passages']:,}" in text
    assert "python -m multiret_jax.retrieve" in text
    assert "pool of" in final_report(str(tmp_path / "run"), saved)
