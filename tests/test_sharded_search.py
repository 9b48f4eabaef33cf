"""Corpus encoding and search split across processes (``index/distributed_search.py``):
merging partial top-k lists equals exact search over the whole table (score ties, shards
with fewer rows than k), per-process FAISS Flat indexes equal exact search, the ANCE
episode directory, and 2 ``jax.distributed`` processes on 127.0.0.1 mining exactly the
negatives (and ranking exactly the passages) of 1 process, each encoding only its shards.

Run as a script (``python tests/test_sharded_search.py OUT EMB_DIR [COORD PID N]``), this
file is the worker of the multi-process test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT = 300  # seconds, each worker process
SHARD_SIZE, DIM = 7, 8
NUM, DEPTH, K = 3, 20, 25


# ------------------------------------------------------------------ synthetic corpus
def _table(num_pages: int = 12, per_page: int = 5, seed: int = 0):
    """A seeded table of random-word passages (``per_page`` passages per page)."""
    from multiret_jax.data.passages import PassageTable
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    ids, pages, titles, texts = [], [], [], []
    for p in range(num_pages):
        for j in range(per_page):
            ids.append(f"page{p}_{j}")
            pages.append(f"page{p}")
            titles.append(f"title {words[p]}")
            texts.append(" ".join(rng.choice(words, size=int(rng.integers(3, 12)))))
    return PassageTable(ids, pages, titles, texts, np.zeros((len(ids), 4), np.int32))


def _data(table, seed: int = 1):
    """``{task: TaskData}`` of random queries, each with one gold passage and its page."""
    from multiret_jax.data.batching import TaskData
    from multiret_jax.data.provenance import TrainingExample
    from multiret_jax.data.tasks import get_task
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("nq", 9), ("fever", 6)):
        examples = []
        for i in range(n):
            row = int(rng.integers(len(table)))
            query = " ".join(table.texts[row].split()[:3] + [f"w{int(rng.integers(40))}"])
            examples.append(TrainingExample(f"{name}{i}", query, np.array([row]),
                                            (np.array([row]),), (table.page_ids[row],)))
        out[name] = TaskData(get_task(name), examples)
    return out


def _count_encoder(ids, mask):
    """A deterministic ``(ids, mask) -> [B, DIM]`` encoder: token-id counts modulo DIM
    (integer-valued embeddings, so inner products are exact and many scores tie)."""
    import jax
    return (jax.nn.one_hot(ids % DIM, DIM) * mask[..., None]).sum(axis=1)


def _tokenizer(table):
    from multiret_jax.data.tokenization import Tokenization
    return Tokenization.train_wordlevel(table.contents(), 60)


# ------------------------------------------------------------------ merge_topk
def _split_search(q, p, k, bounds):
    """``exact_search`` of each row range [a, b), rows made global, merged."""
    from multiret_jax.index.distributed_search import merge_topk
    from multiret_jax.index.mine import exact_search
    parts = [exact_search(q, p[a:b], k) for a, b in zip(bounds[:-1], bounds[1:])]
    return merge_topk(np.concatenate([r + a for (r, _), a in zip(parts, bounds)], 1),
                      np.concatenate([s for _, s in parts], 1), min(k, len(p)))


def test_merge_of_shard_searches_equals_exact_search_with_ties():
    from multiret_jax.index.mine import exact_search
    rng = np.random.default_rng(0)
    ties = 0
    for trial in range(40):
        num_p = int(rng.integers(1, 60))
        p = rng.integers(-2, 3, (num_p, 4)).astype(np.float32)  # small integers: many ties
        q = rng.integers(-2, 3, (9, 4)).astype(np.float32)
        k = int(rng.integers(1, 80))  # often more than a shard's rows, or than P
        bounds = [0, *np.sort(rng.integers(0, num_p + 1, 3)).tolist(), num_p]  # empty shards too
        want = exact_search(q, p, k)
        got = _split_search(q, p, k, bounds)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), trial
        ties += int((want[1][:, :-1] == want[1][:, 1:]).sum())
    assert ties > 100  # the rankings are full of score ties (broken to the lower row)
    p = rng.standard_normal((1000, 32)).astype(np.float32)  # random floats: exact scores too
    q = rng.standard_normal((50, 32)).astype(np.float32)
    want = exact_search(q, p, 20)
    got = _split_search(q, p, 20, list(range(0, 1000, 77)) + [1000])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_merge_topk_order_padding_and_nan():
    from multiret_jax.index.distributed_search import merge_topk
    rows = np.array([[5, -1, 2, 9, 3]])
    scores = np.array([[1.0, 7.0, 1.0, np.nan, -np.inf]], np.float32)
    r, s = merge_topk(rows, scores, 7)
    # score desc, then row asc; NaN as -inf; -1 (whatever its score) after every real row
    assert r.tolist() == [[2, 5, 3, 9, -1, -1, -1]]
    assert s.tolist() == [[1.0, 1.0, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf]]
    assert r.dtype == np.int64 and s.dtype == np.float32
    assert merge_topk(rows, scores, 2)[0].tolist() == [[2, 5]]
    with pytest.raises(ValueError, match="one shape"):
        merge_topk(rows, scores[:, :3], 2)


# ------------------------------------------------------------------ one process, shards
@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """The synthetic table encoded by ``encode_share`` (one process) in shards of 7."""
    from multiret_jax.index.distributed_search import encode_share
    table = _table()
    tokenizer = _tokenizer(table)
    emb_dir = str(tmp_path_factory.mktemp("emb"))
    info = encode_share(_count_encoder, tokenizer, table, emb_dir, fingerprint="count",
                        shard_size=SHARD_SIZE, batch_size=8, passage_len=32, progress=False)
    return table, tokenizer, emb_dir, info


def _queries(tokenizer, texts):
    import jax
    from multiret_jax.encoding import encode_texts
    return encode_texts(jax.jit(_count_encoder), tokenizer, texts, 16, 8, progress=False)


def _check_flat(flat, want, q, p):
    """A FAISS Flat search equals exact search: the same scores (integer-valued
    embeddings: exact) and rows, except that FAISS keeps any of the passages tied at the
    k-th score (its heap does not prefer the lower row at the cut-off)."""
    assert np.array_equal(flat[1], want[1])
    last = want[1][:, -1:]
    above = want[1] > last
    assert np.array_equal(np.where(above, flat[0], -1), np.where(above, want[0], -1))
    for i in range(len(q)):  # the rest: rows tied at the k-th score, in row order
        tied = flat[0][i][~above[i]]
        assert np.all((q[i] @ p[tied].T) == last[i]) and np.all(np.diff(tied) > 0)


def test_shard_searcher_equals_exact_search_and_per_process_merge(encoded):
    from multiret_jax.index.distributed_search import ShardSearcher, local_shards, merge_topk
    from multiret_jax.index.mine import exact_search
    from multiret_jax.index.shards import load_embeddings
    table, tokenizer, emb_dir, info = encoded
    assert info["encoded"] == list(range(9)) and info["shard_id"] == 0  # 60 rows / 7
    p = load_embeddings(emb_dir, table)
    q = _queries(tokenizer, [" ".join(t.split()[:2]) for t in table.texts[::3]])
    for k in (1, 5, 25, 100):  # 100 > the 60 passages: clamped like exact_search
        want = exact_search(q, p, k)
        assert (want[1][:, :-1] == want[1][:, 1:]).any() or k == 1  # score ties
        searcher = ShardSearcher(emb_dir, table, progress=False)
        got = searcher(q, k)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), k
        flat = ShardSearcher(emb_dir, table, index_spec="Flat", progress=False)(q, k)
        _check_flat(flat, want, q, p)
        # n "processes" each searching its own block of the 9 shards (n=11: some none)
        for n in (2, 4, 11):
            parts = []
            for pid in range(n):
                s = ShardSearcher(emb_dir, table, process_id=pid, num_processes=n,
                                  verify=True, progress=False)
                parts.append(s.search_local(q, min(k, len(table))))
            with pytest.raises(ValueError, match="search_local"):
                s(q, k)
            got = merge_topk(np.concatenate([r for r, _ in parts], 1),
                             np.concatenate([v for _, v in parts], 1), min(k, len(table)))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (k, n)
    blocks = [local_shards(emb_dir, table, pid, 4) for pid in range(4)]
    starts = [e["start"] for b in blocks for e in b]
    assert starts == list(range(0, 60, SHARD_SIZE))  # disjoint contiguous blocks, in order


def test_flat_indexes_per_process_equal_exact_search_without_ties(tmp_path):
    """Random integer embeddings of a wide range (exact inner products, no ties at the
    cut-off): per-"process" Flat indexes over blocks of shards, merged, give exactly the
    rows and scores of exact search over the whole table."""
    from multiret_jax.index.distributed_search import ShardSearcher, encode_share, merge_topk
    from multiret_jax.index.mine import exact_search
    from multiret_jax.index.shards import load_embeddings
    table = _table()
    tokenizer = _tokenizer(table)
    import jax.numpy as jnp
    weights = np.random.default_rng(3).integers(-100, 101, (64, DIM)).astype(np.float32)

    def encoder(ids, mask):
        return (jnp.asarray(weights)[ids] * mask[..., None]).sum(axis=1)

    encode_share(encoder, tokenizer, table, str(tmp_path), fingerprint="w", shard_size=SHARD_SIZE,
                 batch_size=8, passage_len=32, progress=False)
    p = load_embeddings(str(tmp_path), table)
    q = np.random.default_rng(4).integers(-100, 101, (30, DIM)).astype(np.float32)
    want = exact_search(q, p, K)
    assert not (want[1][:, :-1] == want[1][:, 1:]).any()  # no ties in this data
    flat = ShardSearcher(str(tmp_path), table, index_spec="Flat", progress=False)(q, K)
    assert np.array_equal(flat[0], want[0]) and np.array_equal(flat[1], want[1])
    for n in (2, 3, 11):  # 9 shards: with 11 "processes" some have none
        parts = [ShardSearcher(str(tmp_path), table, index_spec="Flat", process_id=pid,
                               num_processes=n, progress=False).search_local(q, K)
                 for pid in range(n)]
        got = merge_topk(np.concatenate([r for r, _ in parts], 1),
                         np.concatenate([v for _, v in parts], 1), K)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), n


def test_encode_share_resumes_and_clears_scratch_of_another_model(encoded, tmp_path):
    from multiret_jax.index.distributed_search import encode_share
    from multiret_jax.index.shards import read_manifests
    table, tokenizer, emb_dir, _ = encoded
    kw = dict(shard_size=SHARD_SIZE, batch_size=8, passage_len=32, progress=False)
    again = encode_share(_count_encoder, tokenizer, table, emb_dir, fingerprint="count", **kw)
    assert again["encoded"] == [] and again["reused"] == list(range(9))
    scratch = str(tmp_path / "scratch")
    encode_share(_count_encoder, tokenizer, table, scratch, fingerprint="old", **kw)
    with pytest.raises(ValueError, match="made otherwise"):
        encode_share(_count_encoder, tokenizer, table, scratch, fingerprint="new", **kw)
    res = encode_share(_count_encoder, tokenizer, table, scratch, fingerprint="new",
                       scratch=True, **kw)
    assert res["encoded"] == list(range(9))
    assert read_manifests(scratch)["model_fingerprint"] == "new"


def test_remove_episode_embeddings_only_after_the_negatives(tmp_path):
    from multiret_jax.training import ance
    model_dir = str(tmp_path)
    emb_dir = ance.episode_emb_dir(model_dir, 3)
    assert emb_dir == os.path.join(model_dir, "ance", "episode_3_emb")
    os.makedirs(emb_dir)
    assert not ance.remove_episode_embeddings(model_dir, 3)  # no negatives file yet
    assert os.path.isdir(emb_dir)
    ance.save_negatives(ance.negatives_path(model_dir, 3), {"nq": np.zeros((1, 2))})
    assert ance.remove_episode_embeddings(model_dir, 3)
    assert not os.path.exists(emb_dir) and os.listdir(os.path.dirname(emb_dir)) == ["episode_3.npz"]
    assert not ance.remove_episode_embeddings(model_dir, 3)


def test_mine_episode_through_shards_equals_in_memory_mining(tmp_path):
    """One process: mining through an episode directory (exact, and a Flat index) gives
    the negatives of in-memory mining over the same embeddings; the directory is resumed
    (nothing encoded again) by a second call."""
    from multiret_jax.index.shards import load_embeddings, read_all_manifests
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training import ance
    table = _table()
    data, tokenizer = _data(table), _tokenizer(table)
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=True)
    kw = dict(num=NUM, depth=DEPTH, passage_len=32, query_len=16, sample=True, seed=5,
              batch_size=8, progress=False)
    emb_dir = ance.episode_emb_dir(str(tmp_path), 1)
    got = ance.mine_episode(model, params, tokenizer, table, data, emb_dir=emb_dir,
                            shard_size=SHARD_SIZE, **kw)
    want = ance.mine_episode(model, params, tokenizer, table, data,
                             passage_emb=np.asarray(load_embeddings(emb_dir, table)), **kw)
    stamps = lambda: {n: os.stat(os.path.join(emb_dir, n)).st_mtime_ns
                      for n in os.listdir(emb_dir) if n.startswith("emb_")}
    before = stamps()
    flat = ance.mine_episode(model, params, tokenizer, table, data, emb_dir=emb_dir,
                             shard_size=SHARD_SIZE, index_spec="Flat", **kw)
    assert stamps() == before and len(before) == 9  # resumed: no shard written again
    ((_, manifest),) = read_all_manifests(emb_dir)
    assert len(manifest["shards"]) == 9 and manifest["complete"]
    for name in data:
        assert np.array_equal(got[name], want[name]), name
        assert got[name].shape == (len(data[name].examples), NUM) and (got[name] >= 0).any()
        assert np.mean(flat[name] == got[name]) > 0.9, name  # FAISS: near-ties may differ

# ------------------------------------------------------------------ 2 processes vs 1
def _worker(out: str, emb_dir: str, coordinator=None, pid: int = 0, count: int = 1) -> None:
    """Mines ANCE negatives with a tiny BERT through ``emb_dir`` (and ranks a task's
    queries over the shards); writes ``<out>/result_<pid>.npz``."""
    import jax

    from multiret_jax.encoding import encode_queries_of
    from multiret_jax.index.distributed_search import ShardSearcher
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.processes import initialize
    from multiret_jax.training import ance

    if coordinator:
        initialize(coordinator, count, pid)
    assert jax.process_count() == count and jax.local_device_count() == 1
    table, data = _table(), None
    data = _data(table)
    tokenizer = _tokenizer(table)
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=True)
    negs = ance.mine_episode(model, params, tokenizer, table, data, num=NUM, depth=DEPTH,
                             passage_len=32, query_len=16, sample=True, seed=5, batch_size=8,
                             emb_dir=emb_dir, shard_size=SHARD_SIZE, progress=False)
    q = encode_queries_of(model, params, tokenizer, data["nq"].task,
                          [e.query for e in data["nq"].examples], "prefix", 16, 8,
                          progress=False)
    rows, scores = ShardSearcher(emb_dir, table, progress=False)(q, K)
    np.savez(os.path.join(out, f"result_{pid}.npz"), rows=rows, scores=scores,
             **{f"neg_{k}": v for k, v in negs.items()})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, emb_dir: Path, log_path: Path, extra=(), env=None):
    out.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   PYTHONPATH=str(ROOT), **(env or {}))
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, __file__, str(out), str(emb_dir), *extra],
                                cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)


def _wait_all(procs, logs) -> None:
    """Waits for every process (killing the rest on a timeout); fails with the logs'
    tails unless all exited with 0."""
    try:
        codes = [p.wait(timeout=WORKER_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    assert codes == [0, 0, 0], tails


def test_two_processes_mine_exactly_the_negatives_of_one(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / f"{n}.log" for n in ("process0", "process1", "single")]
    procs = [_start(tmp_path / "multi", tmp_path / "multi_emb", logs[i],
                    [coordinator, str(i), "2"], {"JAX_COORDINATOR_BIND_ADDRESS": coordinator})
             for i in range(2)]
    procs.append(_start(tmp_path / "single", tmp_path / "single_emb", logs[2]))
    _wait_all(procs, logs)

    single = np.load(tmp_path / "single" / "result_0.npz")
    multi = [np.load(tmp_path / "multi" / f"result_{i}.npz") for i in range(2)]
    assert sorted(single.files) == sorted(multi[0].files) == sorted(multi[1].files)
    assert {"neg_nq", "neg_fever", "rows", "scores"} == set(single.files)
    for name in single.files:
        for m in multi:  # every process holds exactly the one-process result
            assert np.array_equal(m[name], single[name]), name
    assert single["rows"].shape == (9, K) and (single["neg_nq"] >= 0).any()

    # Each process encoded only its own block of shards (60 rows in 9 shards of 7).
    manifests = [json.loads((tmp_path / "multi_emb" / f"manifest_{i:03d}-of-002.json")
                            .read_text()) for i in range(2)]
    shards = [sorted(int(k) for k in m["shards"]) for m in manifests]
    assert [m["shard_id"] for m in manifests] == [0, 1] and all(m["complete"] for m in manifests)
    assert shards == [m["job_shards"] for m in manifests] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert sorted(os.listdir(tmp_path / "single_emb"))[-1] == "manifest_000-of-001.json"



# ------------------------------------------------------------------ the retrieval CLI
RETRIEVE_BINDINGS = ["build_biencoder.encoder = 'bert'", "build_biencoder.config = 'bert_tiny'",
                     "build_biencoder.shared = True", "build_biencoder.seed = 3",
                     "build_biencoder.config_overrides = {'vocab_size': 400}",
                     "train.passage_len = 32", "train.query_len = 32",
                     "train.eval_batch_size = 32"]


def _run_dir(root: Path) -> Path:
    """A run directory as train.py leaves it (config.gin, final_params.safetensors,
    tokenizer/) for a tiny random BERT over a mini-KILT of 178 passages."""
    import gin
    from safetensors.numpy import save_file

    from multiret_jax.data import kilt, minikilt
    from multiret_jax.data.passages import PassageTable
    from multiret_jax.data.tokenization import Tokenization
    from multiret_jax.gin_utils import parse_gin
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.train import flat_params
    data, run = root / "minikilt", root / "run"
    minikilt.generate(str(data), scale=0.05, seed=0)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(data / "knowledge_source.jsonl"))
    (run / "tokenizer").mkdir(parents=True)
    Tokenization.train_wordlevel(table.contents(), 400).save(str(run / "tokenizer"))
    gin.clear_config()
    try:
        parse_gin([], RETRIEVE_BINDINGS + [f"train.data_dir = '{data}'"])
        save_file(flat_params(build_biencoder()[1]), str(run / "final_params.safetensors"))
        (run / "config.gin").write_text(gin.config_str())
    finally:
        gin.clear_config()
    return run


def _retrieve(run: Path, out: Path, log_path: Path, extra=(), env=None):
    cmd = [sys.executable, "-m", "multiret_jax.retrieve", f"--model_dir={run}",
           f"--out_dir={out}", "--tasks=nq,fever", f"--k={K}", "--shard_size=64", *extra]
    environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env or {}))
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.usefixtures("clean_gin")
def test_retrieve_with_two_processes_ranks_like_one(tmp_path):
    """``retrieve --multihost`` as 2 processes: each encodes its shards into the shared
    emb_dir (178 passages: shard 0 and shards 1-2), Flat indexes per process, merged;
    process 0 alone writes TREC and guess files equal to one process's."""
    run = _run_dir(tmp_path)
    coordinator = f"127.0.0.1:{_free_port()}"
    multi = ["--multihost", f"--coordinator_address={coordinator}", "--num_processes=2"]
    logs = [tmp_path / f"{n}.log" for n in ("process0", "process1", "single")]
    procs = [_retrieve(run, tmp_path / "multi", logs[i], [*multi, f"--process_id={i}"],
                       {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}) for i in range(2)]
    procs.append(_retrieve(run, tmp_path / "single", logs[2]))
    _wait_all(procs, logs)
    assert "DENSE page R-prec" in logs[0].read_text() and "R-prec" not in logs[1].read_text()
    for task in ("nq", "fever"):
        for sub in (f"trec/{task}-dev.trec", f"guesses/{task}-dev-guess.jsonl"):
            got = (tmp_path / "multi" / sub).read_text()
            assert got == (tmp_path / "single" / sub).read_text(), sub
    res = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert res["processes"] == 2 and res["index_dir"] is None
    manifests = [json.loads((tmp_path / "multi" / "emb" / f"manifest_{i:03d}-of-002.json")
                            .read_text()) for i in range(2)]
    assert [sorted(int(k) for k in m["shards"]) for m in manifests] == [[0], [1, 2]]

if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], *(sys.argv[3:4] or [None]),
            *(int(a) for a in sys.argv[4:6]))
