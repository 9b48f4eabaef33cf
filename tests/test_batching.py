"""Stacked per-step batches for the vmapped per-task gradient (data/batching.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.data.batching import StepBatch, TaskData, build_step_batch, padding_waste
from multiret_jax.data.kilt import Page
from multiret_jax.data.mixing import MixingSampler
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import TrainingExample
from multiret_jax.data.tasks import get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.training.losses import nce_loss

WORDS = ("river mountain castle king queen battle city music film album river song "
         "painter novel island bridge planet ocean forest desert empire train").split()
TASKS = ("nq", "fever", "hotpotqa")
SIZES = {"nq": 5, "fever": 3, "hotpotqa": 4}
H = 2


def _text(rng, n):
    return " ".join(rng.choice(WORDS, size=n))


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenization.from_dir(str(minilm_dir))


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    pages = [Page(str(i), f"Page {WORDS[i]}", (f"Page {WORDS[i]}", _text(rng, 30), _text(rng, 20)))
             for i in range(8)]
    return PassageTable.from_pages(pages, words_per_passage=12)


@pytest.fixture(scope="module")
def task_data(table):
    rng = np.random.default_rng(1)
    out = {}
    for name in TASKS:
        exs, negs = [], np.full((10, 3), -1, np.int64)
        for i in range(10):
            page = str(rng.integers(8))
            pos = table.rows_of_page(page)[: 1 + i % 3]
            qlen = 4 + 7 * i if name == "fever" else 3 + i
            exs.append(TrainingExample(f"{name}-{i}", _text(rng, qlen), pos, (pos,), (page,)))
            others = np.setdiff1d(np.arange(len(table)), table.rows_of_page(page))
            k = i % 4  # 0..3 real negatives, the rest -1
            negs[i, :min(k, 3)] = rng.choice(others, size=min(k, 3), replace=False)
        out[name] = TaskData(get_task(name), exs, negs)
    return out


def _assert_marker(tok, ids, marker):
    """Row decodes to ``marker.lower() ...`` and its tokens are [CLS] marker [SEP] query."""
    q = tok.decode(ids)
    assert q.startswith(marker.lower() + " "), q
    toks = [tok.tokenizer.id_to_token(int(i)) for i in ids if i != tok.pad_id]
    head = tok.decode(tok.encode([marker], 8)[0][0])
    n = len(tok.tokens(head)) - 2  # marker word pieces without [CLS]/[SEP]
    assert toks[0] == "[CLS]" and toks[n + 1] == "[SEP]" and toks[-1] == "[SEP]", toks
    assert len(toks) > n + 3


def _step(seed=0):
    s = MixingSampler({t: 10 for t in TASKS}, batch_sizes=SIZES, seed=0)
    return s.batch(seed)


def _build(tok, table, task_data, seed=0, **kw):
    kw.setdefault("num_negatives", H)
    return build_step_batch(_step(), task_data, tok, table, passage_len=24,
                            rng=np.random.default_rng(seed), **kw)


def test_shapes_and_masks(tok, table, task_data):
    batch = _build(tok, table, task_data)
    k, b, lq, lp = 3, 5, 64, 24
    assert batch.tasks == TASKS
    assert batch.query_ids.shape == batch.query_mask_tokens.shape == (k, b, lq)
    assert batch.pos_ids.shape == batch.pos_mask.shape == (k, b, lp)
    assert batch.neg_ids.shape == batch.neg_mask.shape == (k, b, H, lp)
    assert batch.query_mask.shape == batch.positive_rows.shape == (k, b)
    assert batch.negative_mask.shape == batch.negative_rows.shape == (k, b, H)
    np.testing.assert_array_equal(batch.task_counts, [5, 3, 4])
    np.testing.assert_array_equal(batch.task_query_lens, [32, 64, 32])
    for ki, t in enumerate(TASKS):
        n = SIZES[t]
        np.testing.assert_array_equal(batch.query_mask[ki], np.arange(b) < n)
        # Real rows: masks mark exactly the non-pad tokens, as a prefix; padded rows all pad.
        for ids, m in ((batch.query_ids[ki], batch.query_mask_tokens[ki]),
                       (batch.pos_ids[ki], batch.pos_mask[ki])):
            np.testing.assert_array_equal(m, (ids != tok.pad_id).astype(np.int32))
            assert (m[:n].sum(-1) > 0).all() and (m[n:] == 0).all() and (ids[n:] == tok.pad_id).all()
            assert (np.diff(m, axis=-1) <= 0).all()  # 1s then 0s
        # Task query length respected (nq stays within 32 of the 64 slots).
        assert (batch.query_mask_tokens[ki, :, batch.task_query_lens[ki]:] == 0).all()
        nm, nids, ntok = batch.negative_mask[ki], batch.neg_ids[ki], batch.neg_mask[ki]
        np.testing.assert_array_equal(ntok.any(-1), nm.astype(bool))
        assert (nids[nm == 0] == tok.pad_id).all() and (ntok[nm == 0] == 0).all()
        assert (nm[n:] == 0).all() and (batch.positive_rows[ki, n:] == -1).all()
        assert (batch.negative_rows[ki][nm == 1] >= 0).all()
        assert (batch.negative_rows[ki][nm == 0] == -1).all()
    assert batch.negative_mask.sum() > 0 and (batch.negative_mask == 0).any()


def test_positive_negative_rows_and_text(tok, table, task_data):
    batch = _build(tok, table, task_data)
    step = _step()
    contents = table.contents()
    for ki, t in enumerate(TASKS):
        for j, i in enumerate(step[t]):
            ex = task_data[t].examples[i]
            assert batch.positive_rows[ki, j] in ex.positives
            np.testing.assert_array_equal(batch.negative_rows[ki, j],
                                          task_data[t].hard_negatives[i, :H])
            ids, _ = tok.encode([contents[batch.positive_rows[ki, j]]], 24)
            np.testing.assert_array_equal(batch.pos_ids[ki, j], ids[0])
            _assert_marker(tok, batch.query_ids[ki, j], task_data[t].task.prefix)


def test_more_negatives_than_columns_and_query_len(tok, table, task_data):
    batch = _build(tok, table, task_data, num_negatives=5, query_len=16, marker="type")
    assert batch.neg_ids.shape[2] == 5 and (batch.negative_mask[:, :, 3:] == 0).all()
    assert batch.query_ids.shape[-1] == 16
    np.testing.assert_array_equal(batch.task_query_lens, [16, 16, 16])
    _assert_marker(tok, batch.query_ids[1, 0], "FC")
    none = _build(tok, table, task_data, num_negatives=0)
    assert none.neg_ids.shape == (3, 5, 0, 24)


def test_deterministic_with_seed(tok, table, task_data):
    a, b = _build(tok, table, task_data, seed=3), _build(tok, table, task_data, seed=3)
    for f in StepBatch.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    # Different seeds choose (some) different positives among multi-positive examples.
    rows = {tuple(_build(tok, table, task_data, seed=s).positive_rows.ravel()) for s in range(6)}
    assert len(rows) > 1


def test_errors(tok, table, task_data):
    step = _step()
    with pytest.raises(ValueError, match="no TaskData.*'nq'"):
        build_step_batch(step, {t: task_data[t] for t in ("fever", "hotpotqa")}, tok, table,
                         24, H, rng=np.random.default_rng(0))
    bad = list(task_data["nq"].examples)
    bad[int(step["nq"][0])] = TrainingExample("empty", "q", np.zeros(0, np.int64), (), ())
    data = dict(task_data, nq=TaskData(get_task("nq"), bad, task_data["nq"].hard_negatives))
    with pytest.raises(ValueError, match="'empty' has no positive"):
        build_step_batch(step, data, tok, table, 24, H, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="hard_negatives"):
        TaskData(get_task("nq"), bad, np.zeros((3, 2), np.int64))
    with pytest.raises(IndexError):
        build_step_batch({"nq": np.array([10])}, task_data, tok, table, 24, H,
                         rng=np.random.default_rng(0))


def test_padding_waste(tok, table, task_data):
    batch = _build(tok, table, task_data)
    w = padding_waste(batch)
    assert w["rows"] == pytest.approx(1 - 12 / 15)
    # Unrolled: 5*32 + 3*64 + 4*32 query slots vs 15*64 stacked.
    assert w["query_slot_ratio"] == pytest.approx(15 * 64 / (5 * 32 + 3 * 64 + 4 * 32))
    assert w["passage_slots_vs_unrolled"] == pytest.approx(1 - 12 / 15)
    assert 0 < w["query_tokens"] < 1 and 0 < w["passage_tokens"] < 1


def test_vmapped_padded_loss_equals_unpadded(tok, table, task_data):
    from multiret_jax.models.encoders import build_biencoder

    model, params, _ = build_biencoder("bert", "bert_tiny")
    batch = _build(tok, table, task_data)
    arr = {f: jnp.asarray(v % 1000 if f.endswith("_ids") else v)
           for f, v in batch.arrays().items()}

    def loss(q_ids, q_tok, p_ids, p_tok, n_ids, n_tok, qm, nm, prow, nrow):
        b, h, lp = n_ids.shape
        q = model.encode_queries(params, q_ids, q_tok)
        p = model.encode_passages(params, p_ids, p_tok)
        n = model.encode_passages(params, n_ids.reshape(b * h, lp),
                                  n_tok.reshape(b * h, lp)).reshape(b, h, -1)
        assert_finite = jnp.isfinite(q).all() & jnp.isfinite(n).all()
        return nce_loss(q, p, n, qm, nm, prow, nrow), assert_finite

    keys = ("query_ids", "query_mask_tokens", "pos_ids", "pos_mask", "neg_ids", "neg_mask",
            "query_mask", "negative_mask", "positive_rows", "negative_rows")
    stacked, finite = jax.jit(jax.vmap(loss))(*(arr[k] for k in keys))
    assert bool(finite.all())  # all-padding rows encode to finite values
    for ki, t in enumerate(TASKS):
        n, lq = int(batch.task_counts[ki]), int(batch.task_query_lens[ki])
        sub = [arr[k][ki, :n] for k in keys]
        sub[0], sub[1] = sub[0][:, :lq], sub[1][:, :lq]
        ref, _ = jax.jit(loss)(*sub)
        assert np.isfinite(float(ref)) and float(ref) > 0
        np.testing.assert_allclose(float(stacked[ki]), float(ref), rtol=1e-5, atol=1e-5)
