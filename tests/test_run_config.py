"""training/run_config.py: a run's config.gin compared binding by binding on resume."""

from __future__ import annotations

import pytest

from multiret_jax.training import run_config
from multiret_jax.training.run_config import ConfigChangedError, check_and_save

OLD = """# Macros:
MARKER = 'prefix'
STEPS = 4

# Parameters for train:
train.marker = %MARKER
train.steps = %STEPS
train.halt_after = 2
build_biencoder.checkpoint_dir = @installed_model_dir()
"""


def _started(run):
    (run / "checkpoints" / "2").mkdir(parents=True)


def test_bindings_resolve_macros_and_references():
    b = run_config.bindings(OLD)
    assert b == {"train.marker": "'prefix'", "train.steps": "4", "train.halt_after": "2",
                 "build_biencoder.checkpoint_dir": "@installed_model_dir()"}


def test_same_bindings_written_differently_are_no_change():
    same = OLD.replace("train.marker = %MARKER", "train.marker = 'prefix'")
    assert run_config.differences(OLD, same) == []
    # operational settings may change on resume
    assert run_config.differences(OLD, OLD.replace("halt_after = 2", "halt_after = 3")) == []


def test_changes_are_listed_with_both_values():
    new = OLD.replace("MARKER = 'prefix'", "MARKER = 'none'") + "train.seed = 1\n"
    new = new.replace("build_biencoder.checkpoint_dir = @installed_model_dir()\n", "")
    assert run_config.differences(OLD, new) == [
        "build_biencoder.checkpoint_dir: @installed_model_dir() -> (unset)",
        "train.marker: 'prefix' -> 'none'", "train.seed: (unset) -> 1"]


def test_new_run_writes_the_config(tmp_path):
    run = tmp_path / "run"
    assert check_and_save(str(run), OLD) is None
    assert (run / "config.gin").read_text() == OLD
    assert check_and_save(str(run), OLD) == []  # a rerun: nothing changes


def test_changed_config_of_a_started_run_is_refused_then_kept_beside(tmp_path):
    run = tmp_path / "run"
    check_and_save(str(run), OLD)
    _started(run)
    new = OLD.replace("STEPS = 4", "STEPS = 8")
    with pytest.raises(ConfigChangedError, match=r"train.steps: 4 -> 8.*--allow_config_change"):
        check_and_save(str(run), new)
    assert (run / "config.gin").read_text() == OLD
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.gin"]
    # a check only (other processes, or before data and model load): nothing written
    assert check_and_save(str(run), new, allow_change=True, write=False) == [
        "train.steps: 4 -> 8"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.gin"]
    assert check_and_save(str(run), new, allow_change=True) == ["train.steps: 4 -> 8"]
    assert (run / "config.gin").read_text() == new
    assert (run / "config.1.gin").read_text() == OLD
    newer = new.replace("STEPS = 8", "STEPS = 9")
    check_and_save(str(run), newer, allow_change=True)
    assert (run / "config.2.gin").read_text() == new  # every earlier config kept


def test_config_of_a_run_without_training_state_is_replaced(tmp_path):
    run = tmp_path / "run"
    check_and_save(str(run), OLD)
    new = OLD.replace("STEPS = 4", "STEPS = 8")
    assert check_and_save(str(run), new) == ["train.steps: 4 -> 8"]
    assert (run / "config.gin").read_text() == new
    assert not (run / "config.1.gin").exists()


def test_damaged_saved_config_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.gin").write_text("train.steps = (\n")
    with pytest.raises(ConfigChangedError, match="config.gin: cannot be read as a gin config"):
        check_and_save(str(run), OLD)


def test_a_binding_added_at_its_default_is_no_change(tmp_path):
    """A run saved before a parameter was bound (e.g. train.lr_schedule, added later with
    the old behaviour as its default) resumes; another value is a change."""
    def train(steps=4, lr_schedule="cosine"):  # the configurable's signature
        pass

    defaults = run_config.defaults_of(train)
    assert defaults == {"train.steps": "4", "train.lr_schedule": "'cosine'"}
    run = tmp_path / "run"
    check_and_save(str(run), OLD)
    _started(run)
    assert check_and_save(str(run), OLD + "train.lr_schedule = 'cosine'\n",
                          defaults=defaults) == []
    with pytest.raises(ConfigChangedError, match="train.lr_schedule: 'cosine' -> 'linear'"):
        check_and_save(str(run), OLD + "train.lr_schedule = 'linear'\n", defaults=defaults)
