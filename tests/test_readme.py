"""The README's two set-up commands: .ci/run runs the test one verbatim; the main job runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert "multiret_jax." in cmds[0] and "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci


def _run_main(tmp_path, extra=()):
    main = readme_commands()[0].split("&&")[-1].split()
    assert main[:3] == ["python", "-m", "multiret_jax.train"]
    args = [a for a in main[3:] if not a.startswith("--model_dir")]
    args += [f"--model_dir={tmp_path / 'run'}", *extra]
    out = subprocess.run([sys.executable, "-m", "multiret_jax.train", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(l for l in lines if l.strip().startswith("FEV"))
    assert header.split() == ["FEV", "AY2", "T-REx", "zsRE", "NQ", "HoPo", "TQA", "WoW", "Avg"]
    rows = {}
    for l in lines:
        m = re.match(r"^(BM25|trained \(\d+ steps\)) page R-prec\s+(.*)$", l)
        if m:
            rows[m.group(1).split()[0]] = [float(v) for v in m.group(2).split()]
    assert set(rows) == {"BM25", "trained"}
    assert all(len(v) == 9 and all(0 <= x <= 100 for x in v) for v in rows.values())
    return rows


def test_main_job_runs_on_embedded_data(tmp_path):
    """The README's main command, shortened (20 warm-up steps, 5-step ANCE episodes)."""
    _run_main(tmp_path, ["--gin_param=TRAIN_STEPS=20", "--gin_param=ANCE_EPISODE_STEPS=5",
                         "--gin_param=EVAL_EVERY=1000", "--gin_param=train.minikilt_scale=0.5"])
    assert sorted(p.name for p in (tmp_path / "run" / "ance").iterdir()) == [
        "episode_1.npz", "episode_2.npz"]
    assert (tmp_path / "run" / "final_params.safetensors").exists()


@pytest.mark.slow
def test_main_job_verbatim_learns(tmp_path):
    """The README command as written: the tiny random-init TACO model must have learned
    (a random model scores ~0.4 average page R-precision here; see README)."""
    rows = _run_main(tmp_path)
    assert rows["trained"][-1] > 10.0
