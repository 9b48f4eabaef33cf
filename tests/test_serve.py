"""The retrieval service (``python -m multiret_jax.serve``), started as a user starts it, in
a subprocess on a free local port, over the index that ``retrieve`` built for a tiny BERT
run on a small mini-KILT (``test_retrieve.make_run``), queried over HTTP with httpx:
results equal to retrieve's TREC files and to its retriever, embeddings equal to the
training-time query encoding, concurrent clients each getting their own results in shared
batches without a compilation after the warm-up, 4xx messages for every kind of bad
request with the server serving on, the index files untouched, and a damaged index or one
of other embeddings refused at start naming the file."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from multiret_jax import retrieve, trec
from multiret_jax.data import kilt
from multiret_jax.data.tasks import get_task
from multiret_jax.encoding import encode_queries_of
from multiret_jax.index.faiss_index import DenseIndex
from multiret_jax.run_dir import load_run, parse_run_config
from multiret_jax.serve.engine import batch_buckets, length_buckets, load_engine
from test_retrieve import TASKS, make_run

ROOT = Path(__file__).resolve().parents[1]
K, MAX_BATCH, MAX_QUERIES = 20, 8, 16
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("clean_gin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests(directory: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def build_served_run(tmp_path_factory):
    """The tiny run, its Flat index and TREC files written by ``retrieve.run_retrieval``
    (the retrieval CLI's function), and retrieve's retriever over the same index
    (conftest's session fixture ``built``, shared with ``test_search_page``)."""
    import gin
    root, data, run_dir, table = make_run(tmp_path_factory.mktemp("serve"))
    out = root / "out"
    retrieve.run_retrieval(str(run_dir), str(out), tasks=TASKS, k=K, progress=False)
    parse_run_config(str(run_dir))
    run = load_run(str(run_dir))
    index_dir = out / "index" / "Flat"
    retriever = retrieve.DenseRetriever(run, DenseIndex.load(str(index_dir)), progress=False)
    gin.clear_config()
    return {"data": data, "run_dir": run_dir, "table": table, "out": out, "run": run,
            "index_dir": index_dir, "retriever": retriever}


def start_server(built, tmp_path_factory):
    """``python -m multiret_jax.serve`` on a free port; its base URL once /health answers.
    Terminated (then killed) at teardown (conftest's session fixture ``server``)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve_log") / "server.log"
    before = _digests(built["index_dir"])
    cmd = [sys.executable, "-m", "multiret_jax.serve", f"--model_dir={built['run_dir']}",
           f"--index_dir={built['index_dir']}", f"--port={port}", f"--max_batch={MAX_BATCH}",
           "--max_wait_ms=100", f"--max_queries={MAX_QUERIES}", f"--max_k={K}",
           f"--tasks={','.join(TASKS)}"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, JAX_PLATFORMS="cpu"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server not ready in 240 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.3)
        yield {"url": url, "proc": proc, "log": log_path, "digests_before": before}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _search(url, queries, task, k=K, client=httpx):
    r = client.post(f"{url}/search", json={"queries": queries, "task": task, "k": k},
                    timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _assert_same_ranking(hits, want_ids, want_scores):
    """``hits`` (one query's) rank the passages ``want_ids`` with ``want_scores`` within
    TOL; passages may trade places only where their scores tie within TOL."""
    got_ids = [h["passage_id"] for h in hits]
    got_scores = np.asarray([h["score"] for h in hits])
    assert len(got_ids) == len(want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=TOL, rtol=0)
    for i, (g, w) in enumerate(zip(got_ids, want_ids)):
        if g != w:  # a swap between tied scores: the same set at tied positions
            tied = [j for j in range(len(want_ids)) if abs(want_scores[j] - want_scores[i]) < TOL]
            assert g in [want_ids[j] for j in tied], (i, got_ids, list(want_ids))


def _dev_queries(data, task):
    return kilt.read_task_file(data / f"{task}-dev-kilt.jsonl")


def test_search_equals_retrieve_and_encode_equals_training(built, server):
    table = built["table"]
    for name in TASKS:
        records = _dev_queries(built["data"], name)
        run = trec.read_trec(str(built["out"] / "trec" / f"{name}-dev.trec"))
        results = _search(server["url"], [r.input for r in records], name)
        assert len(results) == len(records)
        for r, hits in zip(records, results):
            want = run[trec.trec_qid(r.id)]
            _assert_same_ranking(hits, [p for p, _, _ in want], [s for _, _, s in want])
            for h in hits:  # the passage table's fields
                row = table.row_of(h["passage_id"])
                assert (h["wikipedia_id"], h["title"], h["text"]) == (
                    table.page_ids[row], table.titles[row], table.texts[row])
        # query embeddings as training and validation encode them (marker, length, tower)
        r = httpx.post(f"{server['url']}/encode",
                       json={"queries": [x.input for x in records], "task": name}, timeout=60)
        assert r.status_code == 200, r.text
        run_ = built["run"]
        want = encode_queries_of(run_.model, run_.params, run_.tokenizer, get_task(name),
                                 [x.input for x in records], run_.marker, run_.query_len,
                                 progress=False)
        assert r.json()["dim"] == want.shape[1]
        np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), want, atol=TOL, rtol=0)


def test_concurrent_clients_get_their_own_results(built, server):
    """12 clients at once, each its own task, queries and k, three requests each."""
    data, retriever = built["data"], built["retriever"]
    pool = {t: [r.input for r in kilt.read_task_file(data / f"{t}-train-kilt.jsonl")][:24]
            for t in ("nq", "fever")}
    plans = []
    for c in range(12):
        task = ("nq", "fever")[c % 2]
        queries = pool[task][c:c + 1 + c % 5]  # 1 to 5 queries
        k = (K, 5, 1)[c % 3]
        rows, scores = retriever.search_task(get_task(task), queries, k)
        plans.append((task, queries, k, rows, scores))
    start, errors, got = threading.Barrier(len(plans)), [], {}

    def client(c):
        task, queries, k, _, _ = plans[c]
        try:
            with httpx.Client() as http:
                start.wait(timeout=60)
                got[c] = [_search(server["url"], queries, task, k, http) for _ in range(3)]
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append((c, repr(e)))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    table = built["table"]
    for c, (task, queries, k, rows, scores) in enumerate(plans):
        for results in got[c]:
            assert len(results) == len(queries)
            for hits, rr, ss in zip(results, rows, scores):
                _assert_same_ranking(hits, [table.ids[r] for r in rr], ss)
    m = httpx.get(f"{server['url']}/metrics", timeout=10).json()
    assert max(int(n) for n in m["batches"]["requests_per_batch"]) > 1  # batched together
    assert m["compiles_after_warm_up"] == 0, m
    shapes = {f"{b}x{n}" for b in batch_buckets(MAX_BATCH) for n in length_buckets(32)}
    assert set(m["encoder_calls"]["padded_shapes"]) <= shapes
    assert m["warm_up"]["shapes"] == len(shapes)
    search = m["requests"]["/search"]
    assert search["count"] >= 36 and search["status"]["200"] >= 36
    assert 0 < search["latency_ms"]["p50"] <= search["latency_ms"]["p90"] <= \
        search["latency_ms"]["p99"]


BAD = [  # (what, body or raw bytes, status, words in the message)
    ("unknown task", {"queries": ["q"], "task": "msmarco"}, 422, ["msmarco", "nq"]),
    ("empty query list", {"queries": [], "task": "nq"}, 422, ["queries", "got 0"]),
    ("too many queries", {"queries": ["q"] * (MAX_QUERIES + 1), "task": "nq"}, 422,
     ["queries", str(MAX_QUERIES + 1)]),
    ("blank query", {"queries": ["who", "  "], "task": "nq"}, 422, ["queries[1]", "empty"]),
    ("k = 0", {"queries": ["q"], "task": "nq", "k": 0}, 422, ["k", "got 0"]),
    ("k too large", {"queries": ["q"], "task": "nq", "k": K + 1}, 422, ["k", str(K + 1)]),
    ("k not an integer", {"queries": ["q"], "task": "nq", "k": "ten"}, 422, ["k"]),
    ("queries not a list", {"queries": "who", "task": "nq"}, 422, ["queries"]),
    ("a query not a string", {"queries": [3], "task": "nq"}, 422, ["queries"]),
    ("no task", {"queries": ["q"]}, 422, ["task", "required"]),
    ("unknown field", {"queries": ["q"], "task": "nq", "top_k": 3}, 422, ["top_k"]),
    ("malformed JSON", b'{"queries": ["q"], "task": ', 400, ["malformed JSON"]),
    ("not an object", b'["q"]', 422, []),
]


@pytest.mark.parametrize("what,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_4xx_and_the_server_goes_on(server, what, body, status, words):
    url = server["url"]
    for path in ("/search", "/encode"):
        if path == "/encode" and isinstance(body, dict) and "k" in body:
            continue
        if isinstance(body, bytes):
            r = httpx.post(f"{url}{path}", content=body,
                           headers={"content-type": "application/json"}, timeout=30)
        else:
            r = httpx.post(f"{url}{path}", json=body, timeout=30)
        assert r.status_code == status, (what, path, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail, r.text
        for w in words:
            assert w in detail, (what, detail)
    assert len(_search(url, ["who wrote it"], "nq", 3)) == 1  # still serving
    assert server["proc"].poll() is None


def test_health_docs_and_metrics(server):
    url = server["url"]
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["tasks"] == sorted(TASKS)
    assert health["num_passages"] == 178 and health["index_spec"] == "Flat"
    assert health["limits"] == {"max_queries": MAX_QUERIES, "max_query_chars": 100_000,
                                "max_k": K}
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/search", "/encode", "/health", "/metrics"} <= set(spec["paths"])
    assert "SearchRequest" in spec["components"]["schemas"]
    assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
    assert httpx.get(f"{url}/search", timeout=10).status_code == 405
    m = httpx.get(f"{url}/metrics", timeout=10).json()
    assert m["requests"]["/health"]["count"] >= 1
    assert set(m["requests"]["/health"]["latency_ms"]) == {"p50", "p90", "p99"}


def test_the_index_is_read_only(built, server):
    assert _digests(built["index_dir"]) == server["digests_before"]


def test_a_damaged_index_or_other_embeddings_are_refused(built, tmp_path):
    bad = tmp_path / "Flat"
    shutil.copytree(built["index_dir"], bad)
    blob = bytearray((bad / "index.faiss").read_bytes())
    blob[-5] ^= 0xFF  # one byte of a vector
    (bad / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"index\.faiss: damaged"):
        load_engine(str(built["run_dir"]), str(bad))
    shutil.copy(built["index_dir"] / "index.faiss", bad / "index.faiss")
    build = (bad / "build.json").read_text()
    (bad / "build.json").write_text(build.replace('"passage_len": 32', '"passage_len": 64'))
    with pytest.raises(ValueError, match=r"build\.json: an index of other embeddings "
                                         r"\(passage_len"):
        load_engine(str(built["run_dir"]), str(bad))
    (bad / "build.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"build\.json: missing"):
        load_engine(str(built["run_dir"]), str(bad))


@pytest.mark.slow
def test_the_command_refuses_a_damaged_index(built, tmp_path):
    bad = tmp_path / "Flat"
    shutil.copytree(built["index_dir"], bad)
    blob = bytearray((bad / "index.faiss").read_bytes())
    blob[-5] ^= 0xFF
    (bad / "index.faiss").write_bytes(bytes(blob))
    proc = subprocess.run([sys.executable, "-m", "multiret_jax.serve",
                           f"--model_dir={built['run_dir']}", f"--index_dir={bad}",
                           f"--port={_free_port()}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"serve: error: {bad / 'index.faiss'}: damaged" in proc.stderr
