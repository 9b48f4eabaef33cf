"""The README's two set-up commands, run as a user runs them.

- ``.ci/run`` holds both commands verbatim (the test command, then the main job twice) and
  checks the main job's table with ``.ci/check_main_job.py``.
- The slow test runs the main command string for string with ``bash -c`` in a fresh copy
  of the repository (relative paths, its own venv), then again (a rerun of the finished
  run), and checks the table and that the rerun kept every result file; then the
  README's "Use a trained retriever elsewhere" examples on that run, string for string.
- The default suite runs a short training with relative paths from another working
  directory (orbax needs absolute paths: they are made absolute at the command line), and
  its rerun.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def load_checker():
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_main_job",
                                                  ROOT / ".ci" / "check_main_job.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_exactly_two_setup_commands_and_ci_runs_both_verbatim():
    cmds = readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    main, tests = cmds
    assert "python -m multiret_jax.train " in main and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    # the test command first, then the main command, then the check; the rerun, checked
    assert ci.index(tests) < ci.index(main)
    runs = [i for i, line in enumerate(ci) if line == main]
    checks = [i for i, line in enumerate(ci) if line.startswith("python3 .ci/check_main_job.py")]
    assert len(runs) == 2 and len(checks) == 2
    assert runs[0] < checks[0] < runs[1] < checks[1]
    assert "--save=" in ci[checks[0]] and "--same_as=" in ci[checks[1]]


def _model_dir_of(command: str) -> str:
    return re.search(r"--model_dir=(\S+)", command).group(1)


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, as a clone has them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        src = ROOT / rel.decode()
        if src.is_file():
            (dest / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel.decode())
    return dest


@pytest.mark.slow
def test_main_command_verbatim_in_a_fresh_copy_and_its_rerun(tmp_path):
    """The README main command, string for string, in a fresh copy; then again."""
    main = readme_commands()[0]
    repo = fresh_copy(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if ".venv" not in p)

    def run():
        out = subprocess.run(["bash", "-c", main], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    first = run()
    model_dir = repo / _model_dir_of(main)
    checker = load_checker()
    record = tmp_path / "record.json"
    assert checker.main([str(model_dir), f"--save={record}"]) == 0
    rows = checker.page_rows(model_dir)
    assert rows["trained"] > rows["BM25"] and rows["trained"] > rows["initial"]
    # the table is the last thing printed, followed by where the files are
    tail = first.rstrip().splitlines()
    assert tail[-1].startswith("The run's files") and str(model_dir) in tail[-1]
    assert any(line.startswith("trained (") for line in tail[-12:])
    second = run()
    assert checker.main([str(model_dir), f"--same_as={record}"]) == 0
    assert "trained (" in second  # the rerun prints the same table
    check_use_elsewhere(repo, env)


def elsewhere_commands():
    """The command lines of the README's "Use a trained retriever elsewhere" examples."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Use a trained retriever elsewhere", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for b in blocks[:2] for line in b.strip().splitlines()]


def _port_taken(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_use_elsewhere(repo: Path, env: dict) -> None:
    """Runs the README's export / retrieve / serve examples string for string in ``repo``
    (after its main job, in its venv) and checks what they give: the index, the export
    loaded by sentence-transformers, and the service's answer against retrieve's run file."""
    import time
    import urllib.request
    retrieve, export, st_check, serve, curl = elsewhere_commands()
    port = int(re.search(r"--port=(\d+)", serve).group(1))
    if _port_taken(port):
        pytest.skip(f"port {port}, which the README's serve command uses, is taken")

    def sh(line: str, **kw):
        return subprocess.run(["bash", "-c", ". .venv/bin/activate && " + line], cwd=repo,
                              env=env, capture_output=True, text=True, **kw)

    for line in (retrieve, export):
        out = sh(line, timeout=1800)
        assert out.returncode == 0, line + "\n" + out.stdout[-2000:] + out.stderr[-3000:]
    out = sh(st_check, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 384)"  # one query, MiniLM's width
    log_path = repo / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(["bash", "-c", ". .venv/bin/activate && " + serve],
                                  cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 900
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "serve did not answer /health in 15 min"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        out = subprocess.run(["bash", "-c", curl], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        hits = json.loads(out.stdout)["results"]
        query = json.loads(re.search(r"-d '(.*)'", curl).group(1))
        assert len(hits) == 1 and len(hits[0]) == query["k"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # bash and the server it started
        server.wait(timeout=60)
    # the same passages, in the same order and with the same scores, as retrieve's run file
    out_dir = repo / re.search(r"--out_dir=(\S+)", retrieve).group(1)
    dev = (repo / "multiret_jax/embedded/realmini" / f"{query['task']}-dev-kilt.jsonl")
    qid = next(r["id"] for r in map(json.loads, dev.read_text().splitlines())
               if r["input"] == query["queries"][0])
    ranked = [line.split() for line in
              (out_dir / "trec" / f"{query['task']}-dev.trec").read_text().splitlines()
              if line.split()[0] == qid][:query["k"]]
    assert [h["passage_id"] for h in hits[0]] == [r[2] for r in ranked]
    assert [h["score"] for h in hits[0]] == pytest.approx([float(r[4]) for r in ranked],
                                                          abs=1e-4)
    assert all(h["text"] and h["title"] for h in hits[0])


def _train(cwd: Path, *args: str):
    return subprocess.run([sys.executable, "-m", "multiret_jax.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_relative_paths_and_rerun_of_a_finished_run(tmp_path):
    """A short TACO run with a relative --model_dir from another working directory
    checkpoints (orbax wants absolute paths) and finishes; its rerun keeps every file."""
    args = ["--gin_file=taco_tiny.gin", "--model_dir=runs/short",
            "--gin_param=TRAIN_STEPS=4", "--gin_param=ANCE_EPISODE_STEPS=2",
            "--gin_param=EVAL_EVERY=3", "--gin_param=CHECKPOINT_EVERY=2",
            "--gin_param=train.minikilt_scale=0.3"]
    out = _train(tmp_path, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "short"
    assert sorted(p.name for p in (run / "ance").iterdir()) == ["episode_1.npz",
                                                              "episode_2.npz"]
    assert (run / "checkpoints").is_dir() and (run / "final_params.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed_steps"] == summary["steps"] == 8
    assert summary["validation"] is not None
    assert list((run / "tb").glob("events.out.tfevents.*"))
    lines = out.stdout.rstrip().splitlines()
    assert lines[-1] == (f"The run's files (checkpoints, final_params.safetensors, "
                         f"summary.json, table.*, config.gin, TensorBoard events in tb/) "
                         f"are in {run}")
    # third-party INFO logs (orbax, absl) are off by default
    assert "orbax" not in out.stderr and "checkpoint_manager" not in out.stderr
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = _train(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert again.stdout.rstrip().splitlines()[-1] == lines[-1]
