"""The experiment gin files: layering, parsing, and short real runs of the tiny variants."""

import json
import re
from pathlib import Path

import gin
import numpy as np
import pytest

from multiret_jax.gin_utils import GIN_CONFIG_DIR, parse_gin
from multiret_jax.train import train

CONFIGS = Path(GIN_CONFIG_DIR)
EXPERIMENTS = sorted(p.name for p in CONFIGS.glob("*.gin") if p.name != "bm25.gin")
TINY = [n for n in EXPERIMENTS if n.endswith("_tiny.gin")]
MACRO = re.compile(r"^[A-Z][A-Z0-9_]*\s*=")


pytestmark = pytest.mark.usefixtures("clean_gin")


def q(name):
    return gin.query_parameter(f"{name}/macro.value")


def test_every_base_experiment_has_a_tiny_variant():
    base = [n for n in EXPERIMENTS if not n.endswith("_tiny.gin") and not n.startswith("realmini")]
    assert {"mtdpr.gin", "taco.gin", "task_specific.gin", "leave_one_out.gin",
            "few_shot_128.gin", "few_shot_1024.gin", "taco_pcgrad.gin", "taco_cgd.gin",
            "taco_gradnorm.gin", "taco_no_prefix.gin", "mtdpr_type_markers.gin",
            "mtdpr_query_towers.gin"} <= set(base)
    assert {n[:-4] + "_tiny.gin" for n in base} <= set(TINY)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_only_include_and_set_macros(name):
    for i, line in enumerate((CONFIGS / name).read_text().splitlines(), 1):
        s = line.strip()
        assert (not s or s.startswith("#") or s.startswith("include ") or MACRO.match(s)), \
            f"{name}:{i}: experiment files set macros only (t5x layering): {line!r}"


def test_parses_with_a_runs_directory_in_the_working_directory(tmp_path, monkeypatch):
    """The README's runs write to ./runs/, which Python sees as a namespace package
    "runs"; ``include 'runs/train.gin'`` must still find gin_configs/runs/train.gin."""
    (tmp_path / "runs" / "taco_tiny").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    gin.clear_config()
    parse_gin(["taco_tiny.gin"], [])
    assert q("TRAIN_STEPS") == 300 and gin.query_parameter("build_biencoder.encoder") == "t5"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_parses_with_the_papers_settings(name):
    parse_gin([name], [])
    method, marker = q("MULTITASK_METHOD"), q("MARKER")
    enc = gin.query_parameter("build_biencoder.encoder")
    if name.startswith("taco"):
        assert enc == "t5" and gin.query_parameter("build_biencoder.shared") is True
        assert q("MIXING_C") == 4.0 and q("NUM_NEGATIVES") == 2
        tiny = name.endswith("_tiny.gin")
        assert q("ANCE_EPISODES") == (2 if tiny else 8)
        assert q("MULTITASK_LAST_PHASES") == (2 if tiny else 1)
        assert q("MARKER_FORMAT") == "sentinel" and q("MARKER_IN_QUERY_LEN") is False
        expected = name[len("taco_"):].replace("_tiny", "").replace(".gin", "") or "taco"
        if expected in ("pcgrad", "cgd", "gradnorm", "naive"):
            assert method == expected
        else:
            assert method == "taco" and q("MULTITASK_OPTIONS")["tau"] == 2.0
        assert marker == ("none" if "no_prefix" in name else "prefix")
    elif not name.startswith("realmini"):
        assert enc == "bert" and gin.query_parameter("build_biencoder.shared") is False
        assert q("NUM_NEGATIVES") == 1 and method == "naive" and q("BATCHING") == "union"
        assert marker == ("type" if "type_markers" in name else "none")
    if name.endswith("_tiny.gin"):
        assert gin.query_parameter("build_biencoder.config") in ("bert_tiny", "t5_tiny")
        assert q("TRAIN_STEPS") <= 300 and q("PASSAGE_LEN") <= 128
    elif name in ("mtdpr.gin", "taco.gin"):
        assert q("BATCH_SIZE") in (120, 128)
        assert q("LEARNING_RATE") == (5e-6 if name == "taco.gin" else 2e-5)


def test_leave_one_out_and_few_shot_macros_compose():
    parse_gin(["few_shot_128.gin"], ["HELD_OUT = 'fever'", "INIT_FROM = '/runs/loo'"])
    assert q("HELD_OUT") == "fever" and q("INIT_FROM") == "/runs/loo"
    assert q("MAX_EXAMPLES") == 128 and q("EXCLUDE_TASKS") == [] and len(q("TASKS")) == 1


def _run(tmp_path, name, steps, extra=()):
    parse_gin([name], [f"TRAIN_STEPS = {steps}", f"EVAL_EVERY = {steps}",
                       "train.minikilt_scale = 0.5", *extra])
    return train(model_dir=str(tmp_path / name[:-4]))


def _tiny_learns(tmp_path, name, steps, floor, extra=()):
    summary = _run(tmp_path, name, steps, extra)
    val = summary["validation"]
    assert summary["skipped_steps"] == 0
    assert val["avg_page_rprec"] > floor, (name, val["avg_page_rprec"])
    table = json.loads((tmp_path / name[:-4] / "table.json").read_text())
    assert table  # the BM25 comparison was written
    return summary


@pytest.mark.slow  # ~2.5 min; by default test_ance.py mines episodes and test_plan.py plans them
def test_taco_tiny_runs_ance_and_learns(tmp_path):
    summary = _tiny_learns(tmp_path, "taco_tiny.gin", 60, 0.04, ["ANCE_EPISODE_STEPS = 10"])
    eps = sorted(p.name for p in (tmp_path / "taco_tiny" / "ance").glob("episode_*.npz"))
    assert eps == ["episode_1.npz", "episode_2.npz"]
    assert summary["completed_steps"] == 60 + 2 * 10
    # the plan: naive warm-up, TACO from episode 1 with its burn-in counted from there
    plan = json.loads((tmp_path / "taco_tiny" / "plan.json").read_text())
    assert [(p["name"], p["start"], p["steps"], p["multitask"]) for p in plan["phases"]] == [
        ("warm-up", 0, 60, "naive"), ("ance 1", 60, 10, "taco"), ("ance 2", 70, 10, "taco")]
    assert plan["multitask"]["from_step"] == 60 and plan["burn_in_steps"] == 2
    # TACO's state starts at episode 1 and runs on across the episodes (its public code
    # re-creates it each one): 20 updates after 80 steps
    from multiret_jax.experiments.plots import load_taco_state
    state, step = load_taco_state(str(tmp_path / "taco_tiny"))
    assert step == 80 and int(state.step) == 20 and int(state.skipped) == 0


@pytest.mark.slow  # 80 s; tests/test_zero_few_shot.py runs the same two stages by default
def test_leave_one_out_then_few_shot_tiny(tmp_path):
    loo = _run(tmp_path, "leave_one_out_tiny.gin", 20, ["HELD_OUT = 'fever'"])
    assert "fever" not in loo["tasks"] and "fever" in loo["validation"]["tasks"]
    gin.clear_config()
    few = _run(tmp_path, "few_shot_128_tiny.gin", 10,
               ["HELD_OUT = 'fever'", f"INIT_FROM = '{tmp_path / 'leave_one_out_tiny'}'"])
    assert few["tasks"] == ["fever"]
    from safetensors.numpy import load_file
    a = load_file(str(tmp_path / "leave_one_out_tiny" / "final_params.safetensors"))
    b = load_file(str(tmp_path / "few_shot_128_tiny" / "final_params.safetensors"))
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    # the fine-tuned run keeps the leave-one-out run's token ids (its embedding rows)
    # (a vocabulary of its own would have been built and saved in its model_dir)
    assert (tmp_path / "leave_one_out_tiny" / "tokenizer" / "tokenizer.json").exists()
    assert not (tmp_path / "few_shot_128_tiny" / "tokenizer").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TINY if not n.startswith("few_shot")])
def test_every_tiny_variant_trains(tmp_path, name):
    summary = _run(tmp_path, name, 10, ["ANCE_EPISODE_STEPS = 5"])
    assert summary["completed_steps"] >= 10 and summary["skipped_steps"] == 0
