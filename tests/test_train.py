"""Early trainer: runs on the generated mini-KILT and resumes exactly from a checkpoint."""

import jax
import numpy as np
import pytest

from multiret_jax.gin_utils import parse_gin
from multiret_jax.train import train


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.mark.slow  # ~110 s; the default suite's test_train_kill checks resume byte for byte
def test_resume_continues_the_same_run(tmp_path):
    parse_gin(["models/bert_tiny.gin"], [])
    kw = dict(data_dir=None, global_batch=16, eval_every=4, passage_len=64, query_len=32,
              minikilt_scale=0.5, return_state=True)
    full, state_full = train(model_dir=str(tmp_path / "a"), steps=8, **kw)
    train(model_dir=str(tmp_path / "b"), steps=8, halt_after=4, **kw)  # "killed" after 4
    resumed, state_b = train(model_dir=str(tmp_path / "b"), steps=8, **kw)
    assert int(state_b["step"]) == int(state_full["step"]) == 8
    assert full["skipped_steps"] == 0
    for a, b in zip(jax.tree_util.tree_leaves(state_full["params"]),
                    jax.tree_util.tree_leaves(state_b["params"])):
        np.testing.assert_array_equal(a, b)
    assert set(full["validation"]["tasks"]) == {"fever", "aidayago2", "trex",
                                                "structured_zeroshot", "nq", "hotpotqa",
                                                "triviaqa", "wow"}
    assert (tmp_path / "a" / "summary.json").exists()
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))
