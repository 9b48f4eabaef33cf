"""ANCE episodes: the step plan, dense hard-negative mining against a NumPy reference, the
saved negatives, and a trainer run with episodes that resumes exactly inside an episode."""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.data import kilt, minikilt
from multiret_jax.data.batching import TaskData
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import TrainingExample
from multiret_jax.data.tasks import benchmark_tasks, get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_passages_of, encode_texts, jitted_encoders
from multiret_jax.gin_utils import parse_gin
from multiret_jax.index.mine import pair_scores
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.train import train
from multiret_jax.training.inputs import load_task_data
from multiret_jax.training import ance

TASKS = ("trex", "nq", "fever")
PASSAGE_LEN, QUERY_LEN = 64, 32


pytestmark = pytest.mark.usefixtures("clean_gin")


def test_episode_plan():
    plan = ance.EpisodePlan(warmup_steps=4, episodes=2, episode_steps=3)
    assert plan.total_steps == 10
    assert (plan.start(1), plan.start(2)) == (4, 7)
    want = {0: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 2, 9: 2, 10: 2, 100: 2}
    assert {s: plan.episode_at(s) for s in want} == want
    plain = ance.EpisodePlan(5)  # no episodes: BM25 throughout
    assert plain.total_steps == 5
    assert [plain.episode_at(s) for s in (0, 4, 5, 50)] == [0, 0, 0, 0]
    assert ance.EpisodePlan(0, 1, 2).episode_at(0) == 1  # no warm-up: episode 1 at once
    assert ance.EpisodePlan(0, 1, 2).start(1) == 0
    assert ance.EpisodePlan(3, 0, 0).total_steps == 3
    with pytest.raises(ValueError, match="episode_steps > 0"):
        ance.EpisodePlan(4, 2, 0)
    with pytest.raises(ValueError, match="episode_steps > 0"):
        ance.EpisodePlan(4, 2, -1)
    with pytest.raises(ValueError, match="episodes=-1"):
        ance.EpisodePlan(4, -1, 3)


@pytest.fixture(scope="module")
def mined_setup(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("minikilt"))
    minikilt.generate(directory, scale=0.3, seed=0)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(directory, "knowledge_source.jsonl")), mode="page")
    bm25 = BM25Cache(os.path.join(directory, ".bm25_cache"), table, progress=False)
    data, _ = load_task_data(directory, table, benchmark_tasks(directory, "train", TASKS), bm25,
                             1, 0.5)
    tokenizer = Tokenization.train_wordlevel(table.contents(), 1000)
    model, params, _ = build_biencoder("bert", "bert_tiny", shared=False)
    return model, params, tokenizer, table, data


def _reference_negatives(q, p, examples, page_ids, num, depth):
    """Brute force: rank every passage by the dot product, best first (ties: lower row),
    keep the first ``num`` of the top ``depth`` not gold and not on a gold page."""
    # Every pair scored as exact_search defines scores (FAISS's per-pair dot product); the
    # ranking, gold filtering and padding are this reference's own.
    scores = pair_scores(q, p, np.tile(np.arange(len(p)), (len(q), 1)))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    out = np.full((len(examples), num), -1, np.int64)
    allowed_counts = []
    for i, (ex, rows) in enumerate(zip(examples, ranked)):
        gold, pages = set(int(r) for r in ex.positives), set(ex.gold_pages)
        allowed = [int(r) for r in rows if int(r) not in gold and page_ids[r] not in pages]
        allowed_counts.append(len(allowed))
        out[i, :min(num, len(allowed))] = allowed[:num]
    return out, np.asarray(allowed_counts)


def _query_embeddings(model, params, tokenizer, d):
    # The same compiled encoder as mining: the untrained model's scores have near-ties, and
    # another compilation (e.g. the tower as a constant) moves embeddings by ~1e-6.
    tower = jnp.asarray(model.tower_index(d.task), jnp.int32)
    fn = functools.partial(jitted_encoders(model)["query"], params, tower)
    return encode_texts(fn, tokenizer, [d.task.format_query(e.query, "prefix") for e in d.examples],
                        min(d.task.max_query_len, QUERY_LEN), 64, progress=False)


def _check_negatives(negs, d, page_ids, num):
    assert negs.shape == (len(d.examples), num) and negs.dtype == np.int64
    for ex, row in zip(d.examples, negs):
        real = row[row >= 0]
        assert np.all(row[len(real):] == -1)  # -1 only as trailing padding
        assert not set(real.tolist()) & set(int(r) for r in ex.positives)
        assert not {page_ids[r] for r in real} & set(ex.gold_pages)
        assert len(set(real.tolist())) == len(real)


def test_mine_episode_equals_numpy_reference(mined_setup):
    model, params, tokenizer, table, data = mined_setup
    num, depth = 3, 20
    got = ance.mine_episode(model, params, tokenizer, table, data, num=num, depth=depth,
                            passage_len=PASSAGE_LEN, query_len=QUERY_LEN, sample=False,
                            progress=False)
    assert list(got) == list(TASKS)
    p = encode_passages_of(model, params, tokenizer, table, PASSAGE_LEN, 64, progress=False)
    assert p.shape == (len(table.page_ids), 64)
    for name, d in data.items():
        _check_negatives(got[name], d, table.page_ids, num)
        q = _query_embeddings(model, params, tokenizer, d)
        want, allowed = _reference_negatives(q, p, d.examples, table.page_ids, num, depth)
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        # -1 exactly where the ranking ran out of allowed passages.
        np.testing.assert_array_equal((got[name] >= 0).sum(1), np.minimum(allowed, num))


def test_mine_episode_pads_when_allowed_passages_run_out(mined_setup):
    """Example 0's gold pages moved to the top of its ranking: of the top ``depth`` only one
    passage is allowed, so its row is one negative and -1 padding."""
    model, params, tokenizer, table, data = mined_setup
    name = TASKS[0]
    d = data[name]
    p = encode_passages_of(model, params, tokenizer, table, PASSAGE_LEN, 64, progress=False)
    q = _query_embeddings(model, params, tokenizer, d)
    on_gold = np.flatnonzero(np.isin(np.asarray(table.page_ids), list(d.examples[0].gold_pages)))
    assert on_gold.size >= 1
    boosted = p.copy()
    boosted[on_gold] = q[0] * (100.0 * np.linalg.norm(p, axis=1).max() / np.linalg.norm(q[0]))
    num, depth = 3, on_gold.size + 1
    got = ance.mine_episode(model, params, tokenizer, table, {name: d}, num=num, depth=depth,
                            passage_len=PASSAGE_LEN, query_len=QUERY_LEN, passage_emb=boosted,
                            progress=False)[name]
    _check_negatives(got, d, table.page_ids, num)
    assert got[0, 0] >= 0 and list(got[0, 1:]) == [-1, -1]
    want, allowed = _reference_negatives(q, boosted, d.examples, table.page_ids, num, depth)
    np.testing.assert_array_equal(got, want)
    assert allowed[0] == 1


def test_mine_episode_over_a_faiss_index(mined_setup):
    """``index_spec``: mining searches a FAISS index of the episode's embeddings; a Flat
    index gives the negatives of exact search (ranking near-ties aside), HNSW gold-free
    negatives."""
    model, params, tokenizer, table, data = mined_setup
    p = encode_passages_of(model, params, tokenizer, table, PASSAGE_LEN, 64, progress=False)
    kw = dict(num=3, depth=20, passage_len=PASSAGE_LEN, query_len=QUERY_LEN, passage_emb=p,
              progress=False)
    exact = ance.mine_episode(model, params, tokenizer, table, data, **kw)
    flat = ance.mine_episode(model, params, tokenizer, table, data, index_spec="Flat", **kw)
    hnsw = ance.mine_episode(model, params, tokenizer, table, data, index_spec="HNSW32",
                             index_params={"efSearch": 8}, **kw)
    for name, d in data.items():
        _check_negatives(flat[name], d, table.page_ids, 3)
        _check_negatives(hnsw[name], d, table.page_ids, 3)
        # the same negatives up to the untrained model's score near-ties (FAISS and numpy
        # inner products differ by ~1e-7 relative): equal scores rank by rank
        q = _query_embeddings(model, params, tokenizer, d)
        score = lambda negs: np.take_along_axis(q @ p.T, np.maximum(negs, 0), 1)
        np.testing.assert_array_equal(flat[name] >= 0, exact[name] >= 0)
        np.testing.assert_allclose(score(flat[name]), score(exact[name]), atol=0, rtol=1e-6)
        assert np.mean(flat[name] == exact[name]) > 0.8, name


def _task_data(name, n):
    ex = [TrainingExample(f"{name}{i}", f"query {i}", np.array([i]), (np.array([i]),), (f"p{i}",))
          for i in range(n)]
    return TaskData(get_task(name), ex)


def test_save_and_load_negatives(tmp_path):
    negs = {"nq": np.array([[3, -1], [5, 7], [1, 2]]), "fever": np.array([[9, 8]], np.int32)}
    path = ance.negatives_path(str(tmp_path), 2)
    assert path == os.path.join(str(tmp_path), "ance", "episode_2.npz")
    ance.save_negatives(path, negs)
    assert os.listdir(os.path.dirname(path)) == ["episode_2.npz"]  # no temporary file left
    data = {"nq": _task_data("nq", 3), "fever": _task_data("fever", 1)}
    got = ance.load_negatives(path, data)
    assert set(got) == {"nq", "fever"}
    for name in negs:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], negs[name])
    # Errors name the file: a task without negatives, and another number of examples.
    with pytest.raises(ValueError, match=re.escape(path) + ".*'trex'"):
        ance.load_negatives(path, {**data, "trex": _task_data("trex", 2)})
    with pytest.raises(ValueError, match=re.escape(path) + ".*'nq' has 3 rows.*4 training"):
        ance.load_negatives(path, {"nq": _task_data("nq", 4)})


TACO = ["multitask.method = 'taco'", "multitask.options = {'burn_in_steps': 0}"]


def _taco_state(state):
    found = [s for s in state["opt_state"] if type(s).__name__ == "TacoState"]
    assert len(found) == 1, [type(s).__name__ for s in state["opt_state"]]
    return found[0]


@pytest.mark.slow  # three trainer runs, each compiling its step: 78-112 s on 2 busy cores
def test_trainer_ance_episodes_resume_exactly(tmp_path):
    """A TACO run with two ANCE episodes, killed inside the second, resumes to the same
    parameters; its TACO state (EMA and step count) runs on across the episodes (TACO's
    public code re-creates it every episode; ``reset_multitask_state`` does that here)."""
    parse_gin(["models/bert_tiny.gin"], TACO)
    kw = dict(data_dir=None, steps=4, ance_episodes=2, ance_episode_steps=2, global_batch=16,
              passage_len=64, query_len=32, eval_every=1000, minikilt_scale=0.3, val_tasks=["nq"],
              return_state=True)
    full, state_full = train(model_dir=str(tmp_path / "a"), **kw)
    assert int(state_full["step"]) == full["steps"] == 8 and full["skipped_steps"] == 0
    assert int(_taco_state(state_full).step) == 8  # not reset at the episode starts
    for episode in (1, 2):
        assert (tmp_path / "a" / "ance" / f"episode_{episode}.npz").exists()
    train(model_dir=str(tmp_path / "b"), halt_after=7, **kw)  # "killed" inside episode 2
    assert (tmp_path / "b" / "ance" / "episode_2.npz").exists()
    resumed, state_b = train(model_dir=str(tmp_path / "b"), **kw)
    assert int(state_b["step"]) == 8 and resumed["completed_steps"] == 8
    for a, b in zip(jax.tree_util.tree_leaves(state_full["params"]),
                    jax.tree_util.tree_leaves(state_b["params"])):
        np.testing.assert_array_equal(a, b)
    # Both runs mined the same negatives (same parameters at the episode starts).
    for episode in (1, 2):
        with np.load(tmp_path / "a" / "ance" / f"episode_{episode}.npz") as za, \
                np.load(tmp_path / "b" / "ance" / f"episode_{episode}.npz") as zb:
            assert sorted(za.files) == sorted(zb.files) == sorted(full["tasks"])
            for name in za.files:
                np.testing.assert_array_equal(za[name], zb[name])
                assert za[name].shape[1] == 1 and (za[name] >= 0).any()



@pytest.mark.slow  # 60 s: one more tiny TACO run with two ANCE episodes
def test_reset_multitask_state_restarts_the_taco_state_each_episode(tmp_path):
    parse_gin(["models/bert_tiny.gin"], TACO)
    _, state = train(model_dir=str(tmp_path / "r"), data_dir=None, steps=4, ance_episodes=2,
                     ance_episode_steps=2, global_batch=16, passage_len=64, query_len=32,
                     eval_every=1000, minikilt_scale=0.3, val_tasks=["nq"],
                     reset_multitask_state=True, return_state=True)
    assert int(state["step"]) == 8
    assert int(_taco_state(state).step) == 2  # re-initialised at the start of episode 2
