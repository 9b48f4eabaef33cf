"""Training plans (``train --dry_run``) against the papers' numbers, and checks that a run
does what its plan says: per-phase schedules, the burn-in, the caps."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.gin_utils import parse_gin
from multiret_jax.train import train
from multiret_jax.training import plan as training_plan

pytestmark = pytest.mark.usefixtures("clean_gin")
ROOT = Path(__file__).resolve().parents[1]

# TACO Table 5: training examples after downsampling and per-task batch sizes (of 120),
# query lengths without the prefix; T-REx and zsRE given at KILT's raw train sizes so the
# caps in taco.gin do the downsampling.
TABLE5 = {"nq": (76000, 16, 32), "triviaqa": (53000, 14, 32), "hotpotqa": (69000, 15, 32),
          "wow": (80000, 16, 256), "trex": (95000, 16, 32), "fever": (71000, 15, 64),
          "structured_zeroshot": (100000, 17, 32), "aidayago2": (18000, 11, 128)}
RAW = {**{t: v[0] for t, v in TABLE5.items()}, "trex": 2284168, "structured_zeroshot": 147909}


def _readme_dry_run(tmp_path):
    """The README's dry-run command, string for string, run from an empty directory; its
    printed plan must be the README's excerpt."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if line.startswith("python -m multiret_jax.train --gin_file=taco.gin")
                   and "--dry_run" in line)
    assert f"train.task_sizes={RAW!r}" in command  # the sizes this test checks against
    out = subprocess.run(sys.executable + command[len("python"):], shell=True, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dry run: nothing trained" in out.stdout
    model_dir = tmp_path / "runs" / "taco_plan"
    assert sorted(os.listdir(model_dir)) == ["plan.json"]  # nothing else written
    excerpt = readme[readme.index(command):].split("```")[2].strip().splitlines()
    printed = out.stdout.splitlines()
    assert [line for line in excerpt if line != "..."] == \
        [line for line in printed if line in excerpt], "README's plan excerpt is stale"
    return json.loads((model_dir / "plan.json").read_text()), out.stdout


def test_taco_plan_is_the_papers(tmp_path):
    plan, printed = _readme_dry_run(tmp_path)
    for name, (used, batch, qlen) in TABLE5.items():
        t = plan["tasks"][name]
        assert (t["examples"], t["examples_used"], t["batch_size"], t["query_len"]) == \
            (RAW[name], used, batch, qlen), name
        # the prefix comes on top of Table 5's length ("NQ <extra_id_1>": 2 words here,
        # no T5 tokenizer on disk)
        assert t["marker"].endswith("<extra_id_1>")
        assert t["query_len_with_marker"] == qlen + t["marker_tokens"] > qlen
    assert plan["batching"] == "per_task" and plan["global_batch"] == 120
    assert plan["mixing_c"] == 4.0 and plan["num_negatives"] == 2
    # an epoch: the largest ceil(N_k / B_k): T-REx's 95,000 / 16
    per_epoch = math.ceil(95000 / 16)
    assert plan["steps_per_epoch"] == per_epoch
    phases = plan["phases"]
    assert [p["name"] for p in phases] == ["warm-up"] + [f"ance {e}" for e in range(1, 9)]
    assert phases[0]["epochs"] == 20 and phases[0]["steps"] == 20 * per_epoch
    assert phases[0]["negatives"] == "bm25"
    for p in phases[1:]:
        assert p["epochs"] == 3 and p["steps"] == 3 * per_epoch and p["negatives"] == "ance"
    assert [p["multitask"] for p in phases] == ["naive"] * 8 + ["taco"]
    assert plan["total_steps"] == 44 * per_epoch == phases[-1]["start"] + phases[-1]["steps"]
    lr = plan["lr_schedule"]
    assert lr["name"] == "linear" and lr["peak"] == 5e-6 and lr["end"] == 0.0
    assert lr["per_phase"] and lr["warmup_steps"] == int(0.1 * 20 * per_epoch)
    assert [p["lr_warmup_steps"] for p in phases[1:]] == [int(0.1 * 3 * per_epoch)] * 8
    # TACO only in the last episode, its 10% burn-in inside it
    assert plan["multitask"]["from_step"] == phases[-1]["start"]
    assert plan["burn_in_steps"] == round(0.1 * 3 * per_epoch)
    assert plan["query_format"] == {"marker": "prefix", "marker_format": "sentinel",
                                    "marker_in_query_len": False}
    assert "multitask taco" in printed and "structured_zeroshot" in printed
    # what fits T5-base in 16 GiB per device (benchmarks/memory_plan.py), shown by the plan
    assert plan["grad_cache_chunk"] == 8 and "encoders run 8 rows at a time" in printed


def test_mtdpr_plan_is_union_128(tmp_path):
    parse_gin(["mtdpr.gin"], [f"train.task_sizes = {RAW!r}"])
    plan = train(model_dir=str(tmp_path / "m"), dry_run=True)
    assert plan["batching"] == "union" and plan["global_batch"] == 128
    assert plan["mixing_c"] is None
    used = {t: v["examples_used"] for t, v in plan["tasks"].items()}
    assert used["trex"] == used["structured_zeroshot"] == 100000
    total = sum(used.values())
    assert plan["steps_per_epoch"] == math.ceil(total / 128)
    # each task's expected share of a union batch is its share of the data
    for t, v in plan["tasks"].items():
        assert v["batch_size"] == pytest.approx(128 * used[t] / total, abs=0.01)
    steps = 80 * plan["steps_per_epoch"]  # up to 80 epochs
    assert [(p["name"], p["steps"], p["epochs"], p["multitask"]) for p in plan["phases"]] == \
        [("train", steps, 80, "naive")]
    assert plan["lr_schedule"]["name"] == "linear" and not plan["lr_schedule"]["per_phase"]
    assert plan["lr_schedule"]["warmup_steps"] == int(0.1 * steps)
    assert plan["num_negatives"] == 1


def test_dry_run_counts_the_data_and_trains_nothing(tmp_path):
    """Without task_sizes the plan counts the train files' records (the mini-KILT is
    generated as a run would); no checkpoint, config or tokenizer is written."""
    parse_gin(["mtdpr_tiny.gin"], ["train.minikilt_scale = 0.3"])
    model_dir = tmp_path / "d"
    plan = train(model_dir=str(model_dir), dry_run=True)
    data = model_dir / "minikilt"
    for name, t in plan["tasks"].items():
        with open(data / f"{name}-{'train_id' if name == 'triviaqa' else 'train'}-kilt.jsonl") as f:
            assert t["examples"] == sum(1 for line in f if line.strip())
    assert plan["task_sizes_from"].startswith("records of the train files")
    assert sorted(os.listdir(model_dir)) == ["minikilt", "plan.json"]
    assert plan["total_steps"] == 300 and plan["batching"] == "union"


def test_phase_schedule_restarts_in_each_phase():
    plan = {"lr_schedule": {"name": "linear", "per_phase": True, "peak": 1.0,
                            "warmup_fraction": 0.1, "end": 0.0, "warmup_steps": 10},
            "phases": [{"start": 0, "steps": 100}, {"start": 100, "steps": 30},
                       {"start": 130, "steps": 30}], "total_steps": 160}
    lr = training_plan.phase_schedule(plan)
    for start, steps in ((0, 100), (100, 30), (130, 30)):
        warm = int(0.1 * steps)
        assert float(lr(start)) == 0.0
        assert float(lr(start + warm)) == pytest.approx(1.0)
        # linear decay to 0 at the phase's end
        assert float(lr(start + warm + (steps - warm) // 2)) == pytest.approx(
            1.0 - ((steps - warm) // 2) / (steps - warm), abs=1e-6)
    plan["lr_schedule"]["per_phase"] = False
    one = training_plan.phase_schedule(plan)
    assert float(one(16)) == pytest.approx(1.0)  # one warm-up (10% of 160) and decay
    assert float(one(100)) == pytest.approx(1.0 - (100 - 16) / (160 - 16), abs=1e-6)


def test_burn_in_uses_uniform_weights_for_exactly_the_planned_steps(tmp_path):
    """The trainer's multitask transform built from a plan (TACO from episode 2 of 2, 10%
    burn-in): the mean of the task gradients up to the start of TACO's phase plus the
    planned burn-in, TACO's weighting from the next step on."""
    parse_gin(["taco_tiny.gin"], ["ANCE_EPISODES = 2", "MULTITASK_LAST_PHASES = 1",
                                  "ANCE_EPISODE_STEPS = 30", "TRAIN_STEPS = 40",
                                  "train.task_sizes = {'nq': 50, 'fever': 40, 'trex': 30}"])
    plan = train(model_dir=str(tmp_path / "b"), dry_run=True)
    start, burn = plan["multitask"]["from_step"], plan["burn_in_steps"]
    assert (start, burn) == (70, 3) and plan["total_steps"] == 100
    k = 3
    mt = training_plan.phase_multitask(plan, k)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)}
    state = mt.init(params)
    update = jax.jit(mt.update)
    uniform = []
    for step in range(plan["total_steps"]):
        g = {"w": jnp.asarray(np.random.default_rng(step + 1).normal(size=(k, 6, 4)),
                              jnp.float32)}
        out, state = update(g, state, params, step=jnp.asarray(step))
        uniform.append(bool(np.allclose(out["w"], np.asarray(g["w"]).mean(0), atol=1e-7)))
    assert uniform == [True] * (start + burn) + [False] * (100 - start - burn)
    assert int(state.after.step) == 100 - start  # TACO's updates: its phase only


def test_bad_plans_are_refused(tmp_path):
    sizes = "train.task_sizes = {'nq': 50, 'fever': 40}"
    parse_gin(["mtdpr_tiny.gin"], [sizes, "MULTITASK_METHOD = 'taco'"])
    with pytest.raises(ValueError, match="batching='union'.*multitask.method='taco'"):
        train(model_dir=str(tmp_path / "u"), dry_run=True)
    gin.clear_config()
    parse_gin(["taco_tiny.gin"], [sizes, "MULTITASK_LAST_PHASES = 0"])
    with pytest.raises(ValueError, match="multitask_last_phases must be None or an integer "
                                         ">= 1, got 0"):
        train(model_dir=str(tmp_path / "e"), dry_run=True)
    gin.clear_config()
    parse_gin(["taco_tiny.gin"], [sizes, "TASK_CAPS = {'nq': 0}", "TRAIN_EPOCHS = -1"])
    with pytest.raises(ValueError, match="train.epochs must be None or a finite number > 0"
                                         ".*train.task_caps must be None or a dict"):
        train(model_dir=str(tmp_path / "c"), dry_run=True)
    assert not (tmp_path / "u").exists() and not (tmp_path / "c").exists()


def test_caps_downsample_before_the_bm25_negatives(tmp_path):
    """A capped task keeps a seeded subset (the same on every call) of its examples, and
    only those get BM25 negatives."""
    from multiret_jax.data import kilt, minikilt
    from multiret_jax.data.bm25_cache import BM25Cache
    from multiret_jax.data.passages import PassageTable
    from multiret_jax.data.tasks import benchmark_tasks
    from multiret_jax.training.inputs import load_task_data
    d = str(tmp_path / "mk")
    minikilt.generate(d, scale=0.3, seed=0)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(os.path.join(d, "knowledge_source.jsonl")))
    bm25 = BM25Cache(str(tmp_path / "bm25"), table)
    tasks = benchmark_tasks(d, "train", ["nq", "trex"])
    full, sizes = load_task_data(d, table, tasks, bm25, 1, 0.5)
    capped, sizes2 = load_task_data(d, table, tasks, bm25, 1, 0.5,
                                    caps={"trex": 10})
    again, _ = load_task_data(d, table, tasks, bm25, 1, 0.5, caps={"trex": 10})
    assert sizes == sizes2 and sizes["trex"] > 10
    assert len(capped["trex"].examples) == 10 and capped["trex"].hard_negatives.shape[0] == 10
    assert len(capped["nq"].examples) == len(full["nq"].examples)
    ids = [e.id for e in capped["trex"].examples]
    assert ids == [e.id for e in again["trex"].examples]
    assert set(ids) < {e.id for e in full["trex"].examples} and len(set(ids)) == 10


@pytest.mark.slow  # one tiny trainer run with an episode: ~60 s
def test_adversarial_round_mines_only_nq_and_triviaqa(tmp_path):
    """mtdpr_adversarial: the episode mines negatives for NQ and TriviaQA only; the plan
    says so; the others keep BM25's."""
    parse_gin(["mtdpr_adversarial_tiny.gin"], ["TRAIN_STEPS = 4", "ANCE_EPISODE_STEPS = 2",
                                               "EVAL_EVERY = 100", "train.minikilt_scale = 0.3"])
    summary = train(model_dir=str(tmp_path / "adv"))
    assert summary["completed_steps"] == 6
    plan = json.loads((tmp_path / "adv" / "plan.json").read_text())
    assert plan["ance_tasks"] == ["nq", "triviaqa"] and plan["batching"] == "union"
    assert [p["negatives"] for p in plan["phases"]] == ["bm25", "ance"]
    with np.load(tmp_path / "adv" / "ance" / "episode_1.npz") as z:
        assert sorted(z.files) == ["nq", "triviaqa"]
    gin.clear_config()
    parse_gin(["mtdpr_adversarial_tiny.gin"], ["ANCE_TASKS = ['nq', 'wned']"])
    with pytest.raises(ValueError, match="train.ance_tasks: unknown task 'wned'"):
        train(model_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()  # refused before any file is written


def test_dry_run_keeps_a_started_runs_plan(tmp_path):
    """In the directory of a run that has trained, a dry run writes plan.dry_run.json: the
    run's plan.json (what it trained on, counted after the provenance filter) is kept."""
    run = tmp_path / "started"
    (run / "checkpoints" / "10").mkdir(parents=True)
    (run / "plan.json").write_text("the run's own plan\n")
    parse_gin(["mtdpr_tiny.gin"], ["train.task_sizes = {'nq': 50, 'fever': 40}"])
    plan = train(model_dir=str(run), dry_run=True)
    assert (run / "plan.json").read_text() == "the run's own plan\n"
    assert json.loads((run / "plan.dry_run.json").read_text()) == plan


@pytest.mark.parametrize("episodes, methods", [(0, ["taco"]), (2, ["naive", "naive", "taco"])])
def test_the_method_runs_in_the_last_phases_whatever_the_episode_count(tmp_path, episodes,
                                                                       methods):
    """taco.gin's TACO in the last phase stays in the last phase when a user changes the
    number of episodes (with none, the only phase)."""
    parse_gin(["taco.gin"], [f"train.task_sizes = {RAW!r}", f"ANCE_EPISODES = {episodes}"])
    plan = train(model_dir=str(tmp_path / "p"), dry_run=True)
    assert [p["multitask"] for p in plan["phases"]] == methods
    assert plan["multitask"]["from_step"] == plan["phases"][-1]["start"]
