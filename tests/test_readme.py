"""The README's two set-up commands: .ci/run runs the test one verbatim; the main job runs."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_main_job_runs_on_embedded_data(tmp_path):
    main = readme_commands()[0].split("&&")[-1].split()
    assert main[:3] == ["python", "-m", "multiret_jax.evaluate"]
    args = [a for a in main[3:] if not a.startswith("--out_dir")] + [f"--out_dir={tmp_path}"]
    out = subprocess.run([sys.executable, "-m", "multiret_jax.evaluate", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(l for l in out.stdout.splitlines() if l.strip().startswith("FEV"))
    assert header.split() == ["FEV", "AY2", "T-REx", "zsRE", "NQ", "HoPo", "TQA", "WoW", "Avg"]
    row = next(l for l in out.stdout.splitlines() if l.startswith("BM25 page R-prec"))
    values = [float(v) for v in row.split()[3:]]
    assert len(values) == 9 and all(0 <= v <= 100 for v in values)
    assert len(list((tmp_path / "guesses").glob("*-dev-guess.jsonl"))) == 8
