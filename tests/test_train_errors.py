"""Bad inputs to the trainer fail with a clear message; a diverging run skips its
non-finite steps instead of applying them."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import gin
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from multiret_jax.data import minikilt
from multiret_jax.data.tasks import KILT_TASK_NAMES
from multiret_jax.gin_utils import parse_gin
from multiret_jax.train import train
from multiret_jax.training.checkpointing import UnreadableCheckpoint
from multiret_jax.training.run_config import ConfigChangedError

FAST = dict(global_batch=16, passage_len=64, query_len=32, eval_every=1000)
# Input checks come before any step: halt_after=0 keeps a missing check from training.
NO_STEPS = dict(FAST, steps=2, halt_after=0)


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One mini-KILT for the whole module."""
    out = tmp_path_factory.mktemp("minikilt")
    minikilt.generate(str(out), scale=0.5, seed=0)
    return out


# a. unknown gin names -------------------------------------------------------------------

@pytest.mark.parametrize("where", ["binding", "file"])
def test_unknown_gin_parameter_is_named(tmp_path, where):
    line = "train.not_a_param = 3"
    if where == "binding":
        files, bindings, origin = ["models/bert_tiny.gin"], [line], "bindings"
    else:
        path = tmp_path / "bad.gin"
        path.write_text(f'include "models/bert_tiny.gin"\ntrain.steps = 3\n{line}\n')
        files, bindings, origin = [str(path)], [], str(path)
    with pytest.raises(ValueError) as e:
        parse_gin(files, bindings)
    msg = str(e.value)
    assert "not_a_param" in msg
    assert line in msg  # the offending binding
    assert origin in msg  # where it came from
    if where == "file":
        assert "line 3" in msg


def test_unknown_gin_configurable_is_named():
    with pytest.raises(ValueError) as e:
        parse_gin(["models/bert_tiny.gin"], ["trian.steps = 3"])
    assert "trian" in str(e.value)


# b. task names not in the registry --------------------------------------------------------

@pytest.mark.parametrize("arg", ["tasks", "exclude_tasks", "val_tasks"])
def test_unknown_task_name_lists_known_tasks(tmp_path, data_dir, arg):
    parse_gin(["models/bert_tiny.gin"], [])
    with pytest.raises((KeyError, ValueError)) as e:
        train(model_dir=str(tmp_path / "run"), data_dir=str(data_dir), **{arg: ["nope"]},
              **NO_STEPS)
    msg = str(e.value)
    assert "nope" in msg
    assert all(name in msg for name in KILT_TASK_NAMES), msg


# c. an empty task file --------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "\n\n"], ids=["empty", "blank_lines"])
def test_empty_task_file_is_named(tmp_path, data_dir, content):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    empty = data / "nq-train-kilt.jsonl"
    empty.write_text(content)
    parse_gin(["models/bert_tiny.gin"], [])
    with pytest.raises(ValueError) as e:
        train(model_dir=str(tmp_path / "run"), data_dir=str(data), **NO_STEPS)
    msg = str(e.value)
    assert str(empty) in msg
    assert re.search(r"\bempty\b|\bno\b.*\b(examples|records)\b", msg, re.IGNORECASE), msg


# d. a checkpoint from another architecture -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_dir):
    """A model_dir with the checkpoint of 2 steps of tiny BERT (separate towers)."""
    model_dir = tmp_path_factory.mktemp("tiny_run")
    gin.clear_config()
    parse_gin(["models/bert_tiny.gin"], [])
    try:  # stopped after 2 of 4 steps: a checkpoint to resume, no validation spent
        train(model_dir=str(model_dir), data_dir=str(data_dir), steps=4, halt_after=2, **FAST)
    finally:
        gin.clear_config()
    assert (model_dir / "checkpoints" / "2").is_dir()
    return model_dir


@pytest.mark.parametrize("binding", [
    'build_biencoder.config_overrides = {"hidden_size": 32, "intermediate_size": 64}',
    'build_biencoder.config_overrides = {"num_layers": 3}',
    "build_biencoder.shared = True",
], ids=["hidden_size", "num_layers", "shared_tower"])
def test_checkpoint_of_another_architecture(tmp_path, data_dir, tiny_checkpoint, binding):
    """The changed configuration is refused first (every file kept); with
    allow_config_change the checkpoint's shapes are compared and the mismatch named."""
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, model_dir)
    before = tree_digest(model_dir)
    parse_gin(["models/bert_tiny.gin"], [binding])
    with pytest.raises(ConfigChangedError, match="build_biencoder"):
        train(model_dir=str(model_dir), data_dir=str(data_dir), steps=4, halt_after=2, **FAST)
    assert tree_digest(model_dir) == before
    with pytest.raises(ValueError) as e:
        train(model_dir=str(model_dir), data_dir=str(data_dir), steps=4, halt_after=2,
              allow_config_change=True, **FAST)
    msg = str(e.value)
    assert str(model_dir / "checkpoints") in msg, msg
    assert "architecture" in msg, msg


def tree_digest(root) -> dict:
    """{relative path: sha256} of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_changed_config_on_resume_is_refused(tmp_path, data_dir, tiny_checkpoint):
    """A non-shape change (the query marker) used to resume silently and rewrite config.gin
    with a marker the model never trained with: now it fails naming the binding and both
    values, touching nothing (``allow_config_change``: tests/test_run_config.py)."""
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, model_dir)
    before = tree_digest(model_dir)
    parse_gin(["models/bert_tiny.gin"], ['train.marker = "none"'])
    with pytest.raises(ConfigChangedError) as e:
        train(model_dir=str(model_dir), data_dir=str(data_dir), steps=4, halt_after=2, **FAST)
    msg = str(e.value)
    # the marker was unbound before: train()'s default stands for it
    assert "train.marker: 'prefix' -> 'none'" in msg and "--allow_config_change" in msg, msg
    assert str(model_dir / "config.gin") in msg
    assert tree_digest(model_dir) == before


def test_unreadable_checkpoint_names_step_and_directory(tmp_path, data_dir, tiny_checkpoint):
    """The only checkpoint damaged: a clear error naming the step and its directory (no
    intact step to fall back to), instead of an opaque TensorStore error."""
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, model_dir)
    for path in (model_dir / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"damaged")
    parse_gin(["models/bert_tiny.gin"], [])
    with pytest.raises(UnreadableCheckpoint) as e:
        train(model_dir=str(model_dir), data_dir=str(data_dir), steps=4, halt_after=2, **FAST)
    msg = str(e.value)
    assert "no intact checkpoint" in msg and "step 2" in msg, msg
    assert str(model_dir / "checkpoints" / "2") in msg, msg


# e. non-finite losses ----------------------------------------------------------------------

@pytest.mark.slow  # 57 s; test_train_step.py::test_non_finite_step_is_skipped_and_counted
# checks the skip and its count in the step, in the default suite
def test_non_finite_steps_are_skipped_and_counted(tmp_path, data_dir):
    """A learning rate of 1e30 makes the parameters explode after the first applied update,
    so the following losses are NaN: those steps must be skipped (counted, not applied)."""
    parse_gin(["models/bert_tiny.gin"], [])
    model_dir = tmp_path / "run"
    steps = 6
    summary, state = train(model_dir=str(model_dir), data_dir=str(data_dir), steps=steps,
                           learning_rate=1e30, return_state=True, **FAST)
    assert 0 < summary["skipped_steps"] <= steps
    assert summary["completed_steps"] == steps and int(state["step"]) == steps
    assert int(state["skipped"]) == summary["skipped_steps"]
    on_disk = json.loads((model_dir / "summary.json").read_text())
    assert on_disk["skipped_steps"] == summary["skipped_steps"]
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        assert np.all(np.isfinite(np.asarray(leaf)))
    final = load_file(str(model_dir / "final_params.safetensors"))
    assert final
    for name, value in final.items():
        assert np.all(np.isfinite(value)), name
