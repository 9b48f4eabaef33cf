"""The zero-/few-shot driver (experiments/zero_few_shot/) end to end on a small generated mini-KILT:
one held-out task, tiny configs cut to a couple of steps, every stage a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multiret_jax.data import minikilt
from multiret_jax.experiments.zero_few_shot.driver import run_zero_few_shot
from multiret_jax.experiments.zero_few_shot.plan import BM25, ZERO_SHOT, Options, PlanError
from multiret_jax.experiments.zero_few_shot.stages import init_check

ROOT = Path(__file__).resolve().parents[1]
TASK = "nq"  # 135 train records at scale 0.3: enough for 128, too few for 1,024
SHORT = ["TRAIN_STEPS=2", "BATCH_SIZE=16", "train.compare_bm25=False"]
FEW = ["few_shot_128_tiny.gin", "few_shot_1024_tiny.gin"]
KEEP = {TASK, "fever"}  # task files kept: every stage trains on one task (one compilation)


def _opts(root, **kw):
    base = dict(out_dir=str(root / "out"), data_dir=str(root / "data"), held_out=[TASK],
                base_gin="leave_one_out_tiny.gin", few_shot_gins=FEW, gin_params=SHORT,
                quiet=True, jax_cache_dir=str(root / "jax_cache"))
    return Options(**{**base, **kw})


@pytest.fixture(scope="module")
def zfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zfs")
    bench = minikilt.generate(str(root / "data"), scale=0.3, seed=0)
    for task, files in bench.task_files.items():  # leave-one-out = fever alone
        if task not in KEEP:
            for path in files.values():
                os.remove(path)
    lines = []
    result = run_zero_few_shot(_opts(root), say=lines.append)
    out = root / "out"
    return {"root": root, "out": out, "result": result, "lines": lines,
            "loo": out / TASK / "leave_one_out",
            "few": {128: out / TASK / "few_shot_128_tiny", 1024: out / TASK / "few_shot_1024_tiny"}}


def _summary(d):
    return json.loads((d / "summary.json").read_text())


@pytest.mark.slow  # the module's zfs fixture: a leave-one-out and two few-shot runs, ~3 min
def test_table_has_the_rows_and_the_held_out_column(zfs):
    table = json.loads((zfs["out"] / "table.json").read_text())
    assert table["tasks"] == [TASK] and table["held_out"] == [TASK]
    rows = table["metrics"]["page_rprec"]["values"]
    assert list(rows) == [BM25, ZERO_SHOT, "few-shot 128", "few-shot 1024"]
    assert all(set(v) == {TASK, "Avg"} and v[TASK] is not None for v in rows.values())
    assert "passage_rprec" in table["metrics"]
    md = (zfs["out"] / "table.md").read_text()
    assert "| NQ | Avg |" in md and "few-shot 1024" in md
    assert (zfs["out"] / "table.csv").read_text().startswith("metric,table,run,NQ,Avg")
    # 1,024 > 135 records: capped, and said so (128 is not); the default is to cap.
    notes = table["notes"]
    assert len(notes) == 1 and "few-shot 1024" in notes[0] and "135" in notes[0]
    assert "capped" in md
    assert [s["status"] for s in table["stages"]] == ["ran"] * 4


@pytest.mark.slow
def test_values_come_from_the_runs(zfs):
    rows = json.loads((zfs["out"] / "table.json").read_text())["metrics"]
    loo = _summary(zfs["loo"])["validation"]["tasks"][TASK]
    # Zero-shot = the leave-one-out run's own validation on the held-out dev set.
    assert rows["page_rprec"]["values"][ZERO_SHOT][TASK] == pytest.approx(100 * loo["page_rprec"])
    assert rows["passage_rprec"]["values"][ZERO_SHOT][TASK] == pytest.approx(
        100 * loo["passage_rprec"])
    assert loo["num_queries"] == 21  # nq's whole dev file at scale 0.3
    for n, d in zfs["few"].items():
        v = _summary(d)["validation"]["tasks"][TASK]["page_rprec"]
        assert rows["page_rprec"]["values"][f"few-shot {n}"][TASK] == pytest.approx(100 * v)
    bm25 = json.loads((zfs["out"] / "bm25" / "results.json").read_text())["tasks"][TASK]
    assert rows["page_rprec"]["values"][BM25][TASK] == pytest.approx(100 * bm25["page"]["Rprec"])
    assert bm25["num_queries"] == 21


@pytest.mark.slow
def test_leave_one_out_never_trained_on_the_held_out_task(zfs):
    s = _summary(zfs["loo"])
    assert TASK not in s["tasks"] and set(s["tasks"]) == KEEP - {TASK}
    assert TASK in s["validation"]["tasks"]  # but was validated on it (zero-shot)
    for d in zfs["few"].values():
        assert _summary(d)["tasks"] == [TASK]


@pytest.mark.slow
def test_few_shot_runs_start_from_the_leave_one_out_model(zfs):
    loo = _summary(zfs["loo"])["validation"]
    for d in zfs["few"].values():
        # Same parameters and vocabulary: the step-0 validation is the loo's final one,
        # on every task and metric (a vocabulary rebuilt from nq's queries would not be).
        assert _summary(d)["initial_validation"] == loo
        cfg = " ".join((d / "config.gin").read_text().replace("\\\n", " ").split())
        assert f"train.init_from = '{zfs['loo']}'" in cfg  # (gin wraps a long path's line)
        assert "train.tokenizer_dir =" in cfg and str(zfs["loo"] / "tokenizer") in cfg
    assert all(v is None for v in zfs["result"]["init_checks"].values())
    assert len(zfs["result"]["init_checks"]) == 2


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_refuses_changed_ones(zfs):
    mtimes = {d: os.path.getmtime(d / "summary.json") for d in [zfs["loo"], *zfs["few"].values()]}
    cmd = [sys.executable, "-m", "multiret_jax.experiments.zero_few_shot",
           f"--out_dir={zfs['out']}",
           f"--data_dir={zfs['root'] / 'data'}", f"--held_out={TASK}",
           "--base_gin=leave_one_out_tiny.gin", f"--few_shot_gin={','.join(FEW)}",
           *[f"--gin_param={p}" for p in SHORT], "--quiet",
           f"--multitask_dir={zfs['loo']}", "--reference=BM25"]  # (any train run: a row)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("finished already") == 4 and "running" not in out.stdout
    assert "few-shot 1024" in out.stdout and "NQ" in out.stdout  # the table again
    table = json.loads((zfs["out"] / "table.json").read_text())["metrics"]["page_rprec"]
    assert list(table["values"])[-1] == "multi-task" and "multi-task" in table["differences"]
    assert "minus BM25" in out.stdout
    assert mtimes == {d: os.path.getmtime(d / "summary.json") for d in mtimes}
    # Another command for the same directories stops before running anything.
    with pytest.raises(PlanError, match="different command"):
        run_zero_few_shot(_opts(zfs["root"], gin_params=SHORT[1:] + ["TRAIN_STEPS=3"]),
                          say=lambda s: None)
    assert mtimes == {d: os.path.getmtime(d / "summary.json") for d in mtimes}


@pytest.mark.slow
def test_plan_errors_before_training(zfs, tmp_path):
    with pytest.raises(PlanError, match="fewer than 1024"):  # --too_few=fail
        run_zero_few_shot(_opts(zfs["root"], out_dir=str(tmp_path / "a"), too_few="fail"),
                          say=lambda s: None)
    with pytest.raises(PlanError, match="does not exclude"):  # not a leave-one-out config
        run_zero_few_shot(_opts(zfs["root"], out_dir=str(tmp_path / "b"),
                                base_gin="mtdpr_tiny.gin"), say=lambda s: None)
    assert not list(tmp_path.glob("*/nq/*/summary.json"))


def test_init_check_names_a_few_shot_run_that_did_not_start_from_the_loo_model(tmp_path):
    val = lambda p: {"avg_page_rprec": p, "tasks": {TASK: {"page_rprec": p, "passage_rprec": p,
                                                           "recall@5": p}}}
    runs = {"loo": {"validation": val(0.25)},
            "same": {"initial_validation": val(0.25), "validation": val(0.5)},
            "other": {"initial_validation": val(0.0), "validation": val(0.5)}}
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert init_check(str(tmp_path / "loo"), str(tmp_path / "same"), TASK) is None
    problem = init_check(str(tmp_path / "loo"), str(tmp_path / "other"), TASK)
    assert "page_rprec=0.0" in problem and "did not start" in problem
