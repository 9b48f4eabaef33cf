"""``python -m multiret_jax.reproduce``: every row's configuration parses, the table's mean
and standard deviation over seeds (numpy as the reference), finished runs are skipped, bad
flags fail in one line; the end-to-end command on tiny runs (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest

from multiret_jax import reproduce
from multiret_jax.gin_utils import parse_gin
from multiret_jax.train import train  # noqa: F401  (registers the gin configurables)

pytestmark = pytest.mark.usefixtures("clean_gin")
ROOT = Path(__file__).resolve().parents[1]
TASKS = ["nq", "fever", "trex"]


@pytest.mark.parametrize("table", sorted(reproduce.TABLES))
@pytest.mark.parametrize("setting", sorted(reproduce.SETTINGS))
def test_every_row_parses_with_what_it_claims(table, setting, tmp_path):
    data = [f"DATA_DIR='{tmp_path}'"]
    runs = reproduce.plan_runs(table, reproduce.SETTINGS[setting], 2, str(tmp_path), TASKS,
                               data)
    per_row = {r.row.label for r in runs}
    assert per_row == {r.label for r in reproduce.TABLES[table]}
    assert len({r.run_dir for r in runs}) == len(runs)  # no two runs share a directory
    for run in runs:
        gin.clear_config()
        parse_gin(run.files, run.bindings)
        q = lambda name: gin.get_bindings(name.split(".")[0])[name.split(".")[1]]
        assert q("train.seed") == run.seed and q("build_biencoder.seed") == run.seed
        assert q("train.data_dir") == str(tmp_path)
        assert q("train.marker") == run.row.marker
        method = q("multitask.method")
        if run.row.kind == "taco":
            assert method == ("taco" if run.row.method == "naive" else run.row.method)
            if run.row.method == "naive":  # TACO's update with uniform weights throughout
                assert q("multitask.options")["burn_in_fraction"] == 1.0
            if setting != "realmini":
                assert q("train.marker_format") == "sentinel"
        else:
            assert method == "naive" and q("train.batching") == "union"
            if run.row.kind == "task_specific":
                assert q("train.tasks") == [run.task]


def _fake_run(run, scores, seconds):
    """A finished run directory with these dev page R-precisions (fractions)."""
    os.makedirs(run.run_dir, exist_ok=True)
    summary = {"steps": 10, "completed_steps": 10,
               "validation": {"tasks": {t: {"page_rprec": v} for t, v in scores.items()}}}
    Path(run.run_dir, "summary.json").write_text(json.dumps(summary))
    Path(run.run_dir, "final_params.safetensors").write_bytes(b"")
    Path(run.run_dir, "reproduce.json").write_text(json.dumps({"seconds": seconds}))


def test_table_is_mean_and_std_over_seeds_and_reruns_skip_finished_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    data = tmp_path / "mk"
    from multiret_jax.data import minikilt
    minikilt.generate(str(data), scale=0.3, seed=0)
    tasks = sorted(p.name.split("-")[0] for p in data.glob("*-train*-kilt.jsonl"))
    runs = reproduce.plan_runs("mtdpr", reproduce.SETTINGS["tiny"], 3, str(out), tasks,
                               [f"DATA_DIR='{data}'"])
    values = {}
    for r in runs:
        own = [r.task] if r.task else tasks
        scores = {t: float(rng.uniform(0.1, 0.9)) for t in own}
        scores.setdefault("fever", 0.5)  # a task-specific run validates other tasks too
        values[(r.row.label, r.task, r.seed)] = scores
        _fake_run(r, scores, 60.0)
    monkeypatch.setattr(reproduce, "run_logged", lambda *a, **k: pytest.fail("ran a run"))
    got = reproduce.reproduce("mtdpr", "tiny", 3, str(out), data_dir=str(data))
    multi = got["rows"]["multi-task"]
    for t in tasks:
        seeds = [100 * values[("multi-task", None, s)][t] for s in range(3)]
        assert multi["mean"][t] == pytest.approx(np.mean(seeds))
        assert multi["std"][t] == pytest.approx(np.std(seeds, ddof=1))
    avg = [np.mean([100 * values[("multi-task", None, s)][t] for t in tasks]) for s in range(3)]
    assert multi["mean"]["Avg"] == pytest.approx(np.mean(avg))
    assert multi["std"]["Avg"] == pytest.approx(np.std(avg, ddof=1))
    # task-specific: each task's number comes from its own run only
    ts = got["rows"]["task-specific"]
    for t in tasks:
        own = [100 * values[("task-specific", t, s)][t] for s in range(3)]
        assert ts["mean"][t] == pytest.approx(np.mean(own))
    assert got["wall_seconds"]["task-specific"] == pytest.approx(60.0 * 3 * len(tasks))
    md = (out / "table.md").read_text()
    assert "multi-task + type markers" in md and " ± " in md and "3.0 min" in md
    csv_rows = (out / "table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("row,statistic,") and len(csv_rows) == 1 + 2 * 3


def test_bad_flags_fail_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "multiret_jax.reproduce",
                          "--table=taco_ablation", "--setting=kilt", f"--out_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "reproduce: error: --setting=kilt needs --data_dir")
    out = subprocess.run([sys.executable, "-m", "multiret_jax.reproduce", "--table=bogus",
                          f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "reproduce: error:" in out.stderr


@pytest.mark.slow  # four short tiny TACO runs: ~4 min on 2 cores
def test_the_command_trains_the_ablation_on_tiny_runs(tmp_path):
    cmd = [sys.executable, "-m", "multiret_jax.reproduce", "--table=taco_ablation",
           "--setting=tiny", "--seeds=1", "--out_dir=out", "--gin_param=TRAIN_STEPS=6",
           "--gin_param=ANCE_EPISODE_STEPS=3", "--minikilt_scale=0.3"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert list(table["rows"]) == ["TACO", "w/o prefix", "w/o adaptive learning", "w/o both"]
    for label, st in table["rows"].items():
        assert 0 <= st["mean"]["Avg"] <= 100 and st["std"]["Avg"] is None  # one seed
        assert set(table["specialisation_percent"][label]["mean"]) >= {"task_specific",
                                                                       "not_activated"}
    # a rerun trains nothing and writes the same table
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("finished already") == 4
    assert json.loads((tmp_path / "out" / "table.json").read_text())["rows"] == table["rows"]
