"""Streaming corpus encoding (``multiret_jax.index.encode``) on 75 mini-KILT passages in
shards of 16 rows: equals ``encoding.encode_passages_of`` (tiny BERT); resumes after a
crash encoding only the missing shards; rebuilds and refuses tampered shards; refuses a
directory of another table / model; 3 jobs make the single-job output; 8 devices equal 1;
the trained-run entry point."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from multiret_jax.data import kilt, minikilt
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_passages_of
from multiret_jax.gin_utils import parse_gin
from multiret_jax.index import encode as enc
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.train import flat_params

N, SHARD, BATCH, LEN, VOCAB = 75, 16, 8, 32, 300  # 5 shards: 4 x 16 + 11 rows
OVERRIDES = {"vocab_size": VOCAB, "dropout_rate": 0.0, "attention_dropout_rate": 0.0}


def _subset(table: PassageTable, n: int) -> PassageTable:
    return PassageTable(table.ids[:n], table.page_ids[:n], table.titles[:n], table.texts[:n],
                        table.spans[:n])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("minikilt"))
    minikilt.generate(data, scale=0.05, seed=0)
    full = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(data, "knowledge_source.jsonl")))
    return data, _subset(full, N), Tokenization.train_wordlevel(full.contents(), VOCAB)


@pytest.fixture(scope="module")
def tiny():
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=True,
                                       config_overrides=OVERRIDES)
    return model, jax.tree_util.tree_map(np.asarray, params)


_TOY = np.random.default_rng(0).normal(size=(VOCAB, 8)).astype(np.float32)


@jax.jit
def toy_encode(ids, mask):
    """A fast deterministic encoder: masked mean of fixed random token vectors."""
    m = mask[..., None].astype(jnp.float32)
    return (jnp.asarray(_TOY)[ids] * m).sum(1) / m.sum(1)


class Counting:
    """``toy_encode`` counting its calls; raises (a crash) on call ``fail_at`` (1-based)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, ids, mask):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated kill")
        return toy_encode(ids, mask)


def run(corpus, out, fn=toy_encode, table=None, **kw):
    _, tab, tok = corpus
    kw = {"fingerprint": "toy", "shard_size": SHARD, "batch_size": BATCH, "passage_len": LEN,
          "progress": False, "jit": not isinstance(fn, Counting), **kw}
    return enc.encode_corpus(fn, tok, table or tab, str(out), **kw)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted single-job run of ``toy_encode``."""
    out = tmp_path_factory.mktemp("reference")
    run(corpus, out)
    return out, enc.load_embeddings(str(out), corpus[1])


def test_matches_encode_passages_of(corpus, tiny, tmp_path):
    _, table, tok = corpus
    model, params = tiny
    res = enc.encode_corpus(enc.passage_encoder(model, params), tok, table, str(tmp_path),
                            fingerprint=enc.params_fingerprint(params), shard_size=SHARD,
                            batch_size=BATCH, passage_len=LEN, progress=False)
    assert res["encoded"] == [0, 1, 2, 3, 4] and res["complete"]
    want = encode_passages_of(model, params, tok, table, passage_len=LEN, batch_size=BATCH,
                              progress=False)
    got = enc.load_embeddings(str(tmp_path), table)
    assert got.shape == (N, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    shards = list(enc.iter_shards(str(tmp_path), table))
    assert [len(i) for i, _ in shards] == [16, 16, 16, 16, 11]
    assert all(isinstance(e, np.memmap) for _, e in shards)
    np.testing.assert_array_equal(np.concatenate([i for i, _ in shards]), table.ids)
    embs, ids = enc.load_shards(str(tmp_path), table)
    np.testing.assert_array_equal(np.concatenate(embs), got)
    with open(enc.manifest_path(str(tmp_path))) as f:
        m = json.load(f)
    assert m["table_checksum"] == table.checksum and m["dim"] == 64 and m["dtype"] == "float32"
    assert [m["shards"][str(k)]["rows"] for k in range(5)] == [16, 16, 16, 16, 11]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_float16(corpus, reference, tmp_path):
    run(corpus, tmp_path, dtype="float16")
    got = enc.load_embeddings(str(tmp_path), corpus[1])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), reference[1], atol=2e-3)


def test_resume_encodes_only_missing_shards(corpus, reference, tmp_path):
    crash = Counting(fail_at=6)  # 2 calls per shard: shards 0, 1 written, dies inside shard 2
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(corpus, tmp_path, crash)
    with open(enc.manifest_path(str(tmp_path))) as f:
        m = json.load(f)
    assert sorted(m["shards"]) == ["0", "1"] and not m["complete"]
    with pytest.raises(ValueError, match=r"jobs \[0\] have not finished"):
        enc.load_embeddings(str(tmp_path), corpus[1])
    again = Counting()
    res = run(corpus, tmp_path, again)
    assert res["reused"] == [0, 1] and res["encoded"] == [2, 3, 4] and again.calls == 6
    np.testing.assert_array_equal(enc.load_embeddings(str(tmp_path), corpus[1]), reference[1])
    last = Counting()
    assert run(corpus, tmp_path, last)["encoded"] == [] and last.calls == 0


def _patch_manifest(directory, fn):
    path = enc.manifest_path(str(directory))
    with open(path) as f:
        m = json.load(f)
    fn(m)
    with open(path, "w") as f:
        json.dump(m, f)


def test_tampered_shards_are_refused_and_rebuilt(corpus, reference, tmp_path, caplog):
    table = corpus[1]
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    emb1 = np.load(tmp_path / "emb_00001.npy")
    np.save(tmp_path / "emb_00001.npy", emb1[:-1])            # truncated rows
    raw = bytearray((tmp_path / "emb_00002.npy").read_bytes())
    raw[-1] ^= 1                                              # one changed byte
    (tmp_path / "emb_00002.npy").write_bytes(bytes(raw))
    os.remove(tmp_path / "emb_00004.npy")                     # missing
    for k in (1, 2, 4):
        with pytest.raises(ValueError, match=f"invalid.*emb_{k:05d}"):
            enc.load_embeddings(str(tmp_path), table)
        (tmp_path / f"emb_{k:05d}.npy").write_bytes((reference[0] / f"emb_{k:05d}.npy").read_bytes())
    # swapped ids files with matching checksums: only the ids comparison can catch it
    a, b = tmp_path / "ids_00000.npy", tmp_path / "ids_00003.npy"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)

    def swap(m):
        s = m["shards"]
        s["0"]["ids_sha256"], s["3"]["ids_sha256"] = s["3"]["ids_sha256"], s["0"]["ids_sha256"]
    _patch_manifest(tmp_path, swap)
    with pytest.raises(ValueError, match="ids differ"):
        enc.load_embeddings(str(tmp_path), table)
    with pytest.raises(ValueError, match="ids differ"):
        enc.load_embeddings(str(tmp_path), table, verify=False)
    with pytest.raises(ValueError, match="ids differ"):
        list(enc.iter_shards(str(tmp_path), table))
    np.save(tmp_path / "emb_00001.npy", emb1[:-1])
    counting = Counting()
    with caplog.at_level("WARNING"):
        res = run(corpus, tmp_path, counting)
    assert res["encoded"] == [0, 1, 3] and res["reused"] == [2, 4] and counting.calls == 6
    assert sum("invalid" in r.getMessage() for r in caplog.records) == 3
    np.testing.assert_array_equal(enc.load_embeddings(str(tmp_path), table), reference[1])


def test_other_table_or_model_is_refused(corpus, reference, tmp_path):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    table = corpus[1]
    changed = PassageTable(table.ids, table.page_ids, table.titles,
                           ["edited"] + table.texts[1:], table.spans)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*table_checksum"):
        run(corpus, tmp_path, table=changed)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*model_fingerprint"):
        run(corpus, tmp_path, fingerprint="another model")
    with pytest.raises(ValueError, match="another passage table"):
        enc.load_embeddings(str(tmp_path), changed)
    res = run(corpus, tmp_path, table=changed, overwrite=True)
    assert res["encoded"] == [0, 1, 2, 3, 4]
    got = enc.load_embeddings(str(tmp_path), changed)
    np.testing.assert_array_equal(got[1:], reference[1][1:])
    assert not np.array_equal(got[0], reference[1][0])


def test_jobs_union_equals_single_job(corpus, reference, tmp_path):
    assert [list(enc.job_shards(N, SHARD, i, 3)) for i in range(3)] == [[0], [1, 2], [3, 4]]
    for i in (0, 2):
        assert run(corpus, tmp_path, shard_id=i, num_shards=3)["complete"]
    with pytest.raises(ValueError, match=r"jobs \[1\] of 3 have no manifest"):
        enc.load_embeddings(str(tmp_path), corpus[1])
    run(corpus, tmp_path, shard_id=1, num_shards=3)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("manifest")) == [
        f"manifest_00{i}-of-003.json" for i in range(3)]
    np.testing.assert_array_equal(enc.load_embeddings(str(tmp_path), corpus[1]), reference[1])
    for k in range(5):  # byte-identical shards
        assert ((tmp_path / f"emb_{k:05d}.npy").read_bytes()
                == (reference[0] / f"emb_{k:05d}.npy").read_bytes())
    with pytest.raises(ValueError, match="num_shards"):  # a 1-job run into a 3-job directory
        run(corpus, tmp_path)
    shutil.copy(reference[0] / "manifest_000-of-001.json", tmp_path)  # mixed runs
    with pytest.raises(ValueError, match="mixed runs"):
        enc.read_manifests(str(tmp_path))


EIGHT_DEVICES = textwrap.dedent("""
    import os, jax, numpy as np
    from multiret_jax.data import kilt
    from multiret_jax.data.passages import PassageTable
    from multiret_jax.index import encode as enc
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.data.tokenization import Tokenization
    assert len(jax.local_devices()) == 8
    full = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join({data!r}, "knowledge_source.jsonl")))
    tok = Tokenization.train_wordlevel(full.contents(), {vocab})
    n = {n}
    table = PassageTable(full.ids[:n], full.page_ids[:n], full.titles[:n], full.texts[:n],
                         full.spans[:n])
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=True,
                                       config_overrides={overrides!r})
    params = jax.tree_util.tree_map(np.asarray, params)
    devices_seen = []
    fn = enc.passage_encoder(model, params)
    def spy(i, m):
        devices_seen.append(len(i.sharding.device_set))
        return fn(i, m)
    kw = dict(fingerprint="tiny", shard_size={shard}, batch_size=12, passage_len={length},
              progress=False)
    enc.encode_corpus(spy, tok, table, {out8!r}, jit=False, **kw)  # 12 -> 16 rows
    assert set(devices_seen) == {{8}}, devices_seen
    one = jax.local_devices()[:1]
    enc.encode_corpus(enc.passage_encoder(model, params, one), tok, table, {out1!r},
                      devices=one, **kw)
    e8, e1 = enc.load_embeddings({out8!r}, table), enc.load_embeddings({out1!r}, table)
    print("max diff", float(np.abs(e8 - e1).max()))
    np.testing.assert_allclose(e8, e1, atol=1e-5, rtol=0)
    print("OK_8_DEVICES")
""")


def test_eight_devices_equal_one(corpus, tiny, run_on_8_devices, tmp_path):
    data, table, tok = corpus
    script = EIGHT_DEVICES.format(data=data, vocab=VOCAB, n=N, overrides=OVERRIDES, shard=SHARD,
                                  length=LEN, out8=str(tmp_path / "d8"), out1=str(tmp_path / "d1"))
    run_on_8_devices(script, "OK_8_DEVICES", timeout=300)
    model, params = tiny
    want = encode_passages_of(model, params, tok, table, passage_len=LEN, batch_size=BATCH,
                              progress=False)
    np.testing.assert_allclose(enc.load_embeddings(str(tmp_path / "d8"), table), want,
                               atol=1e-5, rtol=0)


def test_encode_run_from_a_trained_run_dir(corpus, tiny, tmp_path):
    data, _, tok = corpus
    model, params = tiny
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    save_file(flat_params(params), str(run_dir / "final_params.safetensors"))
    tok.save(str(run_dir / "tokenizer"))
    gin.clear_config()
    try:
        parse_gin([], ["build_biencoder.encoder = 'bert'", "build_biencoder.config = 'bert_tiny'",
                       "build_biencoder.shared = True", "build_biencoder.seed = 1",
                       f"build_biencoder.config_overrides = {OVERRIDES!r}",
                       f"train.passage_len = {LEN}"])
        res = enc.encode_run(str(run_dir), str(tmp_path / "emb"), data_dir=data,
                             shard_size=64, batch_size=BATCH, progress=False)
    finally:
        gin.clear_config()
    assert res["passage_len"] == LEN and "params_sha256=" in res["model_fingerprint"]
    table = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(data, "knowledge_source.jsonl")))
    want = encode_passages_of(model, params, tok, table, passage_len=LEN, batch_size=BATCH,
                              progress=False)  # the saved params, not seed 1's
    np.testing.assert_allclose(enc.load_embeddings(str(tmp_path / "emb"), table), want,
                               atol=1e-6, rtol=0)
