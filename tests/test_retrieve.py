"""Dense retrieval CLI (``multiret_jax.retrieve``) with a tiny BERT run on a small mini-KILT:
KILT-valid guess files whose KILT-scorer metrics are results.json's, well-formed TREC run
files equal to exact search over the stored embeddings, reuse of shards and index on a
second run, another index spec over the same shards, a test split without gold, and
clear errors for a wrong model_dir, a missing config.gin and an index made otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest
from safetensors.numpy import save_file

from multiret_jax import metrics, retrieve, trec
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.experiments import compare
from multiret_jax.gin_utils import parse_gin
from multiret_jax.index.encode import encode_run, load_embeddings
from multiret_jax.index.mine import exact_search
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.run_dir import load_run, parse_run_config
from multiret_jax.train import flat_params

ROOT = Path(__file__).resolve().parents[1]
TASKS, K, VOCAB = ("nq", "fever", "aidayago2"), 20, 400  # AIDA's ids have spaces
BINDINGS = ["build_biencoder.encoder = 'bert'", "build_biencoder.config = 'bert_tiny'",
            "build_biencoder.shared = True", "build_biencoder.seed = 3",
            "build_biencoder.pooling = 'mean'",
            "build_biencoder.config_overrides = {'vocab_size': %d, 'dropout_rate': 0.0, "
            "'attention_dropout_rate': 0.0}" % VOCAB,
            "train.passage_len = 32", "train.query_len = 32", "train.marker = 'prefix'",
            "train.eval_batch_size = 32"]


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run directory as train.py leaves it (config.gin, final_params.safetensors,
    tokenizer/) for a tiny random BERT, and a mini-KILT of 178 passages."""
    return make_run(tmp_path_factory.mktemp("retrieve"))


def make_run(root):
    """``setup``'s (root, mini-KILT directory, run directory, passage table) in ``root``
    (also the retrieval service's tests' run)."""
    data = root / "minikilt"
    minikilt.generate(str(data), scale=0.05, seed=0)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(data / "knowledge_source.jsonl"))
    queries = [r.input for t in TASKS for r in kilt.read_task_file(data / f"{t}-dev-kilt.jsonl")]
    run = root / "run"
    (run / "tokenizer").mkdir(parents=True)
    Tokenization.train_wordlevel(table.contents() + queries, VOCAB).save(str(run / "tokenizer"))
    gin.clear_config()
    parse_gin([], BINDINGS + [f"train.data_dir = '{data}'"])
    _, params, _ = build_biencoder()
    save_file(flat_params(params), str(run / "final_params.safetensors"))
    (run / "config.gin").write_text(gin.config_str())
    gin.clear_config()
    return root, data, run, table


@pytest.fixture(scope="module")
def first(setup):
    """The CLI, as a user runs it: Flat index, three tasks, k=20."""
    root, data, run, _ = setup
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "multiret_jax.retrieve", f"--model_dir={run}", f"--out_dir={out}",
         f"--tasks={','.join(TASKS)}", f"--k={K}", "--shard_size=64"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "DENSE page R-prec" in proc.stdout
    return out, json.loads((out / "results.json").read_text())


def _trec_lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_guess_files_are_kilt_and_scored_from_the_files(setup, first):
    _, data, _, table = setup
    out, res = first
    assert res["index"] == "built" and res["encoded_shards"] == [0, 1, 2]  # 178 rows / 64
    assert list(res["tasks"]) == list(TASKS) and res["num_passages"] == len(table) == 178
    for task in TASKS:
        gold_path = data / f"{task}-dev-kilt.jsonl"
        gold = kilt.read_task_file(gold_path)
        guess_path = out / "guesses" / f"{task}-dev-guess.jsonl"
        lines = [json.loads(x) for x in guess_path.read_text().splitlines()]
        assert [g["id"] for g in lines] == [r.id for r in gold]  # one line per record, in order
        run = trec.read_trec(str(out / "trec" / f"{task}-dev.trec"))
        for g in lines:
            assert len(g["output"]) == 1
            prov = g["output"][0]["provenance"]
            pages = [p["wikipedia_id"] for p in prov]
            assert all(pages) and len(pages) == len(set(pages))
            # rank order: the pages of the TREC passage ranking, first occurrence first,
            # each with its best passage (and that passage's span)
            ranked = [pid for pid, _, _ in run[trec.trec_qid(g["id"])]]
            assert pages == list(dict.fromkeys(table.page_ids[table.row_of(p)] for p in ranked))
            for p in prov:
                best = next(pid for pid in ranked if table.page_ids[table.row_of(pid)] ==
                            p["wikipedia_id"])
                psg = table[table.row_of(best)]
                assert p["passage_id"] == best
                assert (p["start_paragraph_id"], p["end_paragraph_id"]) == (
                    psg.start_paragraph_id, psg.end_paragraph_id)
        assert len(kilt.read_task_file(guess_path)) == len(gold)  # our strict reader accepts it
        page = metrics.evaluate(gold_path, guess_path, ks=(1, 5, 10, 20),
                                rank_keys=["wikipedia_id"])
        assert page == res["tasks"][task]["page"]
        # passage level: AIDA's provenance has no paragraph spans
        assert (res["tasks"][task]["passage"] is None) == (task == "aidayago2")
    runs = compare.load_run("dense", str(out))
    assert runs.tasks["nq"]["page_rprec"] == res["tasks"]["nq"]["page"]["Rprec"]
    assert "| NQ |" in (out / "table.md").read_text().replace("FEV | NQ", "| NQ")


def test_trec_files_parse_and_equal_exact_search(setup, first):
    _, data, run_dir, table = setup
    out, res = first
    parse_run_config(str(run_dir))
    run = load_run(str(run_dir))
    emb = load_embeddings(str(out / "emb"), table)
    for task in TASKS:
        path = out / "trec" / f"{task}-dev.trec"
        lines = _trec_lines(path)
        assert all(len(c) == 6 and c[1] == "Q0" and c[5] == "run" for c in lines)
        records = kilt.read_task_file(data / f"{task}-dev-kilt.jsonl")
        parsed = trec.read_trec(str(path))  # ranks 1.. consecutive, scores non-increasing
        assert list(parsed) == [trec.trec_qid(r.id) for r in records]
        assert all([rk for _, rk, _ in v] == list(range(1, K + 1)) for v in parsed.values())
        q = retrieve.DenseRetriever(run, None, progress=False).encode(
            get_task(task), [r.input for r in records])
        rows, scores = exact_search(q, emb, K)
        ranked = [parsed[trec.trec_qid(r.id)] for r in records]
        got = np.asarray([[table.row_of(p) for p, _, _ in x] for x in ranked])
        got_scores = np.asarray([[s for _, _, s in x] for x in ranked])
        np.testing.assert_allclose(got_scores, scores, atol=2e-5, rtol=0)
        # same ranking; a swap only between passages whose exact scores tie to 1e-5
        full = q @ np.asarray(emb, np.float32).T
        differ = got != rows
        assert np.all(np.abs(np.take_along_axis(full, got, 1) - scores)[differ] < 1e-5)
        assert differ.mean() < 0.05


def test_second_run_reuses_shards_and_index(setup, first):
    root, data, run, table = setup
    out, res = first
    emb = out / "emb"
    shard_mtimes = lambda: {f: os.stat(emb / f).st_mtime_ns for f in os.listdir(emb)
                            if f.endswith(".npy")}  # emb_*.npy, ids_*.npy (not the manifest)
    mtimes = shard_mtimes()
    assert len(mtimes) == 6
    index_mtime = os.stat(Path(res["index_dir"]) / "index.faiss").st_mtime_ns
    before = (out / "trec" / "nq-dev.trec").read_text()
    again = retrieve.run_retrieval(str(run), str(out), tasks=TASKS, k=K, progress=False)
    assert again["index"] == "loaded" and again["encoded_shards"] == []
    assert shard_mtimes() == mtimes
    assert os.stat(Path(res["index_dir"]) / "index.faiss").st_mtime_ns == index_mtime
    assert (out / "trec" / "nq-dev.trec").read_text() == before
    for task in TASKS:
        assert again["tasks"][task]["page"] == res["tasks"][task]["page"]
    # Another index over the same shards: nothing encoded, an HNSW index built.
    hnsw = retrieve.run_retrieval(str(run), str(root / "out_hnsw"), tasks=["nq"], k=K,
                                  emb_dir=str(emb), index_spec="HNSW32", ef_search=8,
                                  progress=False)
    assert hnsw["index"] == "built" and hnsw["encoded_shards"] == []
    assert hnsw["reused_shards"] == [0, 1, 2] and hnsw["search_params"] == {"efSearch": 8}
    assert shard_mtimes() == mtimes
    lines = _trec_lines(root / "out_hnsw" / "trec" / "nq-dev.trec")
    n = len(kilt.read_task_file(data / "nq-dev-kilt.jsonl"))
    assert len(lines) == n * K  # efSearch raised to k: k results per query


def test_shards_of_several_encode_jobs_are_used(setup, first, tmp_path):
    """An embedding directory written by two ``index.encode`` jobs is used as it is (the
    run's fingerprint is encode_run's); an unfinished job is an error naming it."""
    _, _, run, _ = setup
    out, res = first
    emb = tmp_path / "emb2"
    for job in (0, 1):
        parse_run_config(str(run))
        encode_run(str(run), str(emb), shard_size=64, batch_size=32, shard_id=job, num_shards=2,
                   progress=False)
    got = retrieve.run_retrieval(str(run), str(tmp_path / "o"), tasks=["nq"], k=K,
                                 emb_dir=str(emb), progress=False)
    assert got["index"] == "built" and got["encoded_shards"] == []
    assert got["reused_shards"] == [0, 1, 2]
    assert (tmp_path / "o" / "trec" / "nq-dev.trec").read_text() == \
        (out / "trec" / "nq-dev.trec").read_text()
    manifest = emb / "manifest_001-of-002.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "complete": False}))
    with pytest.raises(ValueError, match=r"jobs \[1\] have not finished"):
        retrieve.run_retrieval(str(run), str(tmp_path / "o2"), tasks=["nq"], k=K,
                               emb_dir=str(emb), progress=False)


def test_test_split_without_gold_gets_guess_files(setup, first):
    root, data, run, _ = setup
    out, res = first
    gold = kilt.read_task_file(data / "nq-dev-kilt.jsonl")
    test_dir = root / "kilt_test"
    shutil.copytree(data, test_dir, ignore=shutil.ignore_patterns("*-kilt.jsonl"))
    kilt.write_jsonl(test_dir / "nq-test_without_answers-kilt.jsonl",
                     [{"id": r.id, "input": r.input} for r in gold])  # KILT test: no output
    out_test = root / "out_test"
    got = retrieve.run_retrieval(str(run), str(out_test), str(test_dir), split="test", k=K,
                                 index_dir=res["index_dir"], progress=False)
    assert list(got["tasks"]) == ["nq"] and got["index"] == "loaded"
    assert got["tasks"]["nq"]["page"] is None and got["tasks"]["nq"]["passage"] is None
    test_guess = (out_test / "guesses" / "nq-test-guess.jsonl").read_text()
    dev_guess = (out / "guesses" / "nq-dev-guess.jsonl").read_text()
    assert test_guess == dev_guess  # the same queries, the same index
    assert (out_test / "trec" / "nq-test.trec").read_text() == \
        (out / "trec" / "nq-dev.trec").read_text()
    assert "NQ" in (out_test / "table.md").read_text()


def test_clear_errors(setup, first, tmp_path):
    root, _, run, _ = setup
    out, res = first
    proc = subprocess.run([sys.executable, "-m", "multiret_jax.retrieve",
                           f"--model_dir={tmp_path / 'nope'}", f"--out_dir={tmp_path / 'o'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"model_dir '{tmp_path / 'nope'}': no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("config.gin"))
    with pytest.raises(FileNotFoundError, match=r"config.gin: missing .*--gin_file"):
        retrieve.run_retrieval(str(bare), str(tmp_path / "o"), progress=False)
    os.remove(bare / "final_params.safetensors")
    (bare / "config.gin").write_text((run / "config.gin").read_text())
    with pytest.raises(FileNotFoundError, match="final_params.safetensors: missing"):
        retrieve.run_retrieval(str(bare), str(tmp_path / "o"), progress=False)
    # The saved index was made with passage_len 32: refused for 16, before encoding.
    with pytest.raises(ValueError, match="built otherwise .*passage_len: 32 there, 16 now"):
        retrieve.run_retrieval(str(run), str(tmp_path / "o"), index_dir=res["index_dir"],
                               gin_params=["train.passage_len = 16"], progress=False)
    with pytest.raises(FileNotFoundError, match="no test file .*wow-test-kilt.jsonl"):
        retrieve.run_retrieval(str(run), str(tmp_path / "o"), split="test", tasks=["wow"],
                               progress=False)


def test_failed_rerun_keeps_the_previous_outputs(setup, first, tmp_path, monkeypatch):
    """retrieve shares evaluate's staged outputs: a rerun into the same --out_dir that fails
    after its first task (here: the second task's query encoding) leaves the earlier guess
    files, TREC files, results.json and tables byte-identical, with no staging left."""
    import shutil
    _, _, run, _ = setup
    out, _ = first
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    digest = lambda: {p.relative_to(copy): p.read_bytes() for p in sorted(copy.rglob("*"))
                      if p.is_file()}
    before = digest()
    calls = []
    encode = retrieve.DenseRetriever.encode

    def breaks(self, task, queries):
        calls.append(task.name)
        if len(calls) == 2:
            raise RuntimeError("encoder failed on the second task")
        return -encode(self, task, queries)  # another ranking for the first task

    monkeypatch.setattr(retrieve.DenseRetriever, "encode", breaks)
    with pytest.raises(RuntimeError, match="second task"):
        retrieve.run_retrieval(str(run), str(copy), tasks=TASKS, k=K, progress=False)
    assert len(calls) == 2 and digest() == before
    assert not [p for p in copy.iterdir() if p.name.startswith(".staging")]
