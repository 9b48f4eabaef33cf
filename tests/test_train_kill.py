"""A real preemption: the training CLI is SIGKILLed mid-run, rerun with the same command,
and must end with exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 2
KILL_AT = 4  # kill once a finished checkpoint at this step (or later) exists
STEP_COUNTS = (16, 48)  # a retry with more steps if the first run ended before the kill
RUN_TIMEOUT = 300  # seconds, for each wait on a training process
POLL = 0.05


def _command(model_dir: Path, steps: int):
    bindings = [f"train.steps={steps}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
                "train.global_batch=16", "train.passage_len=64", "train.query_len=32",
                "train.eval_every=1000", "train.minikilt_scale=0.5"]
    return ([sys.executable, "-m", "multiret_jax.train", "--gin_file=models/bert_tiny.gin",
             f"--model_dir={model_dir}"] + [f"--gin_param={b}" for b in bindings])


def _env(cache_dir: Path):
    # A persistent compilation cache shared by the runs of this test: the rerun and the
    # uninterrupted run load the programs the first run compiled instead of compiling them
    # again (the same programs either way; it only saves time). The test's own cache of
    # passages and BM25 results: the first run must compute them, the rerun reuse them.
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                MULTIRET_JAX_CACHE=str(cache_dir.parent / "multiret_cache"))


def _start(model_dir: Path, steps: int, log_path: Path, cache_dir: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(_command(model_dir, steps), cwd=ROOT, env=_env(cache_dir),
                                stdout=log, stderr=subprocess.STDOUT)


def _tail(log_path: Path, n: int = 4000) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    return text[-n:]


def _finished_checkpoints(ckpt_dir: Path):
    """Steps of finished checkpoints: plain integer-named directories (orbax writes into a
    temporary directory and renames it to the step number when the save is complete)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=60)


def _kill_mid_run(proc: subprocess.Popen, ckpt_dir: Path, log_path: Path):
    """Waits for a finished checkpoint at step >= KILL_AT, then SIGKILLs ``proc`` if it is
    still running. Returns (return code, finished checkpoint steps seen before the kill)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    seen = []
    while proc.poll() is None:
        seen = _finished_checkpoints(ckpt_dir)
        if seen and seen[-1] >= KILL_AT:
            os.kill(proc.pid, signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"no checkpoint at step >= {KILL_AT} after {RUN_TIMEOUT} s:\n"
                        + _tail(log_path))
        time.sleep(POLL)
    return proc.wait(timeout=60), seen


def _wait_ok(proc: subprocess.Popen, log_path: Path) -> None:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"training did not finish in {RUN_TIMEOUT} s:\n" + _tail(log_path))
    assert rc == 0, f"training exited with {rc}:\n" + _tail(log_path)


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    cache_dir = tmp_path / "xla_cache"
    for attempt, steps in enumerate(STEP_COUNTS):
        run_dir = tmp_path / f"attempt{attempt}"
        killed_dir, ref_dir = run_dir / "killed", run_dir / "uninterrupted"
        killed_log, ref_log = run_dir / "killed.log", run_dir / "uninterrupted.log"
        run_dir.mkdir()
        victim = _start(killed_dir, steps, killed_log, cache_dir)
        try:
            rc, seen = _kill_mid_run(victim, killed_dir / "checkpoints", killed_log)
        finally:
            _stop(victim)
        if rc == -signal.SIGKILL:
            break
        assert rc == 0, f"training exited with {rc} before the kill:\n" + _tail(killed_log)
    else:
        pytest.fail(f"every run ({STEP_COUNTS} steps) finished before it could be killed")

    # Really killed mid-run: a checkpoint past KILL_AT but short of the end, no final output.
    assert rc == -signal.SIGKILL == -9
    assert KILL_AT <= seen[-1] < steps, seen
    left = _finished_checkpoints(killed_dir / "checkpoints")
    assert left and left[-1] < steps, left
    assert not (killed_dir / "final_params.safetensors").exists()
    assert not (killed_dir / "summary.json").exists()

    # The same command again resumes from the last finished checkpoint and completes; the
    # uninterrupted run goes alongside it (2 processes, 2 cores).
    rerun_log = run_dir / "rerun.log"
    ref = _start(ref_dir, steps, ref_log, cache_dir)
    try:
        _wait_ok(_start(killed_dir, steps, rerun_log, cache_dir), rerun_log)
        _wait_ok(ref, ref_log)
    finally:
        _stop(ref)
    resumed = re.findall(r"resum\w*\D+(\d+)", rerun_log.read_text(errors="replace"),
                         flags=re.IGNORECASE)
    assert resumed, "the rerun did not report resuming:\n" + _tail(rerun_log)
    assert int(resumed[0]) == left[-1], (resumed, left)
    # BM25 once: the rerun reused the killed run's BM25 negatives (no index built again)
    rerun_text = rerun_log.read_text(errors="replace")
    assert re.search(r"BM25 negatives of \w+: reused", rerun_text), _tail(rerun_log)
    assert "BM25: indexing" not in rerun_text

    got = load_file(str(killed_dir / "final_params.safetensors"))
    want = load_file(str(ref_dir / "final_params.safetensors"))
    assert sorted(got) == sorted(want)
    diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64))))
             for k in want}
    worst = max(diffs, key=diffs.get)
    for k in sorted(want):
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(
            got[k], want[k], err_msg=f"{k}: killed+resumed run differs from the uninterrupted "
                                     f"one (max |diff| over all parameters {diffs[worst]:.3g} "
                                     f"at {worst})")

    s_killed = json.loads((killed_dir / "summary.json").read_text())
    s_ref = json.loads((ref_dir / "summary.json").read_text())
    for key in ("steps", "completed_steps", "skipped_steps"):
        assert s_killed[key] == s_ref[key], key
    assert s_killed["completed_steps"] == s_killed["steps"] == steps
    assert s_killed["validation"] == s_ref["validation"]
