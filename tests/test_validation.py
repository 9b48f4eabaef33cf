"""Dense validation (``multiret_jax.training.validation``) with the real all-MiniLM-L6-v2 on a small
realmini subset: ~370 passages, the nq dev queries whose gold pages are all in it."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from multiret_jax.data import kilt
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import passage_gold_ids
from multiret_jax.data.tasks import get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_texts
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.training.validation import BestCheckpoint, page_ranking, validate

NUM_DISTRACTOR_PAGES = 200
NUM_RECORDS = 60


@pytest.fixture(scope="module")
def setup(minilm_dir, shared_data):
    root = shared_data / "realmini"
    records = kilt.read_task_file(root / "nq-dev-kilt.jsonl")[:NUM_RECORDS]
    gold = {p for r in records for p in r.gold_pages()}
    pages = list(itertools.islice(
        (p for i, p in enumerate(kilt.iter_knowledge_source(root / "knowledge_source.jsonl"))
         if i < NUM_DISTRACTOR_PAGES or p.wikipedia_id in gold), NUM_DISTRACTOR_PAGES + len(gold)))
    table = PassageTable.from_pages(pages, mode="paragraph")
    assert len(table) <= 400
    in_table = set(table.page_ids)
    records = [r for r in records if r.gold_pages() and set(r.gold_pages()) <= in_table]
    assert len(records) >= 30
    model, params, _ = build_biencoder("bert", checkpoint_dir=str(minilm_dir), pooling="mean",
                                       shared=True)
    tok = Tokenization.from_dir(str(minilm_dir))
    return model, params, tok, table, records


@pytest.fixture(scope="module")
def result(setup):
    model, params, tok, table, records = setup
    return validate(model, params, tok, table, {"nq": records}, passage_len=128, marker="none",
                    k=100, batch_size=64, progress=False)


def test_encode_texts_restores_order(setup):
    model, params, tok, table, _ = setup
    texts = table.contents()[:6] + ["a short one", "who wrote hamlet"]
    fn = jax.jit(lambda i, m: model.encode_passages(params, i, m))
    got = encode_texts(fn, tok, texts, 64, batch_size=3, progress=False)  # last batch padded
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    want = np.concatenate([np.asarray(fn(*tok.encode([t], 64, pad_to_multiple_of=16)))
                           for t in texts])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # an un-jitted function and a partial with params bound give the same
    got2 = encode_texts(lambda i, m: model.encode_passages(params, i, m), tok, texts[:5], 64,
                        batch_size=8, progress=False)
    np.testing.assert_allclose(got2, want[:5], atol=1e-5)


def _set_rprec(ranking, gold_sets):
    best = 0.0
    for gold in gold_sets:
        gold = set(gold)
        best = max(best, len(set(ranking[:len(gold)]) & gold) / len(gold))
    return best


def test_validate_matches_brute_force(setup, result):
    model, params, tok, table, records = setup
    res = result["tasks"]["nq"]
    assert res["num_queries"] == len(records)
    p = result["passage_emb"]
    assert p.shape == (len(table), 384)
    task = get_task("nq")
    q = encode_texts(jax.jit(lambda i, m: model.encode_queries(params, i, m)), tok,
                     [r.input for r in records], task.max_query_len, progress=False)
    order = np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :100]
    page_r, pass_r = [], []
    for rec, ranked in zip(records, order):
        pages = list(dict.fromkeys(table.page_ids[i] for i in ranked))
        page_r.append(_set_rprec(pages, [{x.wikipedia_id for x in s} for s in rec.provenance_sets()]))
        assert pages == page_ranking(ranked, table)
        gold_passages = passage_gold_ids(rec, table)
        if gold_passages:
            pass_r.append(_set_rprec([table.ids[i] for i in ranked], gold_passages))
    assert res["page_rprec"] == pytest.approx(float(np.mean(page_r)), abs=1e-9)
    assert result["avg_page_rprec"] == pytest.approx(res["page_rprec"])
    assert 0.0 <= res["recall@5"] <= 1.0 and res["recall@5"] >= res["page_rprec"] - 1e-9
    assert res["passage_queries"] == len(pass_r) > 0
    assert res["passage_rprec"] == pytest.approx(float(np.mean(pass_r)), abs=1e-9)


def test_minilm_beats_random(setup, result):
    _, _, _, table, records = setup
    rprec = result["tasks"]["nq"]["page_rprec"]
    num_pages = len(set(table.page_ids))
    print(f"MiniLM page R-prec {rprec:.3f}, passage R-prec "
          f"{result['tasks']['nq']['passage_rprec']:.3f} on {len(records)} nq queries, "
          f"{len(table)} passages / {num_pages} pages (random ~{1 / num_pages:.3f})")
    assert rprec > 0.5


def test_reuse_passage_emb_and_best_checkpoint(setup, result):
    model, params, tok, table, records = setup
    again = validate(model, params, tok, table, {get_task("nq"): records[:20]}, marker="none",
                     passage_emb=result["passage_emb"], progress=False)
    assert again["passage_emb"] is result["passage_emb"]
    assert again["tasks"]["nq"]["num_queries"] == 20
    with pytest.raises(ValueError):
        validate(model, params, tok, table, {"nq": records}, passage_emb=result["passage_emb"][:5])
    best = BestCheckpoint()
    assert best.update(100, {"avg_page_rprec": 0.3})
    assert not best.update(200, {"avg_page_rprec": 0.2})
    assert best.update(300, result)
    assert best.best_step == 300 and best.best_value == result["avg_page_rprec"]
