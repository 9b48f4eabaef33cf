"""BM25 once (``data/bm25_cache.py``): cached negatives and rankings equal a fresh BM25
index's, are reused without building the index, are keyed by every input, survive a
damaged file, and the trainer's second run (and a resume) reuses them."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from multiret_jax.data import kilt
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import training_examples


@pytest.fixture(scope="module")
def world(small_minikilt):
    d, table = small_minikilt
    records = kilt.read_task_file(os.path.join(d, "nq-train-kilt.jsonl"))
    examples, _ = training_examples(records, table, min_bleu=0.5, name="nq")
    fresh = BM25Retriever().index(table, show_progress=False)
    rows, _ = fresh.search([e.query for e in examples], k=100, show_progress=False)
    want = fresh.hard_negatives(rows, [e.positives for e in examples], num=2)
    return table, examples, fresh, want


def _npy(cache):
    return sorted(f for f in os.listdir(cache.dir) if f.endswith(".npy"))


def test_negatives_equal_a_fresh_index_and_are_reused(world, tmp_path, monkeypatch):
    table, examples, fresh, want = world
    cache = BM25Cache(str(tmp_path), table, query_block=7, progress=False)  # many blocks
    got = cache.hard_negatives("nq", examples, num=2)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert (got >= 0).mean() > 0.9
    assert len(cache.computed) == 1 and os.path.isdir(os.path.join(cache.dir, "index"))
    meta = json.loads(open(cache.computed[0][:-4] + ".json").read())
    assert meta["shape"] == list(want.shape) and meta["settings"]["bm25"]["k1"] == 0.9

    # a second cache over the same data: nothing computed, the index never touched
    again = BM25Cache(str(tmp_path), table, progress=False)
    monkeypatch.setattr(BM25Cache, "retriever", property(lambda self: pytest.fail("indexed")))
    assert np.array_equal(again.hard_negatives("nq", examples, num=2), want)
    assert again.computed == []


def test_a_released_index_is_loaded_again(world, tmp_path):
    table, examples, fresh, _ = world
    cache = BM25Cache(str(tmp_path), table, progress=False)
    cache.hard_negatives("nq", examples[:5], num=1)
    built = cache.retriever
    cache.release()
    assert cache._retriever is None
    queries = [e.query for e in examples[:20]]
    got = cache.rankings("nq-dev", queries, k=10)  # loads the saved index
    assert cache.retriever is not built
    assert np.array_equal(got, fresh.search(queries, k=10, show_progress=False)[0])


def test_rankings_from_the_saved_index_equal_fresh_ones(world, tmp_path):
    table, examples, fresh, _ = world
    queries = [e.query for e in examples[:50]]
    BM25Cache(str(tmp_path), table, progress=False).hard_negatives("nq", examples[:5], num=1)
    loaded = BM25Cache(str(tmp_path), table, progress=False)  # loads the saved index (mmap)
    got = loaded.rankings("nq-dev", queries, k=20)
    want, _ = fresh.search(queries, k=20, show_progress=False)
    assert np.array_equal(got, want) and loaded.computed


def test_every_input_is_in_the_key(world, tmp_path):
    table, examples, _, want = world
    cache = BM25Cache(str(tmp_path), table, progress=False)
    cache.hard_negatives("nq", examples, num=2)
    # fewer negatives, other positives, another query: computed again, and right
    one = cache.hard_negatives("nq", examples, num=1)
    assert np.array_equal(one, want[:, :1])
    moved = [dataclasses.replace(examples[0], positives=np.asarray([int(want[0, 0])]))]
    assert cache.hard_negatives("nq", moved, num=2)[0, 0] != want[0, 0]
    renamed = [dataclasses.replace(examples[0], query=examples[1].query)] + list(examples[1:])
    assert cache.hard_negatives("nq", renamed, num=2).shape == want.shape
    assert len(cache.computed) == 4 and len(_npy(cache)) == 4
    # other BM25 settings or another table: another directory
    other = BM25Cache(str(tmp_path), table, bm25_params={"k1": 1.5}, progress=False)
    assert other.dir != cache.dir
    half = PassageTable(table.ids[:100], table.page_ids[:100], table.titles[:100],
                        table.texts[:100], table.spans[:100])
    assert BM25Cache(str(tmp_path), half, progress=False).dir != cache.dir


def test_a_damaged_file_is_computed_again(world, tmp_path, caplog):
    table, examples, _, want = world
    cache = BM25Cache(str(tmp_path), table, progress=False)
    cache.hard_negatives("nq", examples, num=2)
    path = cache.computed[0]
    with open(path, "r+b") as f:  # flip a byte of the data
        f.seek(-3, os.SEEK_END)
        b = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    again = BM25Cache(str(tmp_path), table, progress=False)
    assert np.array_equal(again.hard_negatives("nq", examples, num=2), want)
    assert again.computed == [path] and "sha256 differs" in caplog.text


def test_bad_query_block_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="query_block"):
        BM25Cache(str(tmp_path), world[0], query_block=0)


def test_the_default_cache_directory(monkeypatch):
    from multiret_jax.data.passage_store import default_cache_dir
    monkeypatch.setenv("MULTIRET_JAX_CACHE", "/given")
    assert default_cache_dir() == "/given"
    monkeypatch.delenv("MULTIRET_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_cache_dir() == "/xdg/multiret_jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_cache_dir() == "/home/u/.cache/multiret_jax"
