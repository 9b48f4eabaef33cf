"""Running the zero-/few-shot driver's stages, each a subprocess in its own run directory.

    check_records(stages, reuse_changed=False)  # before anything runs
    for st in stages:
        run_stage(st, head, held_out)  # skips a finished stage, reruns an unfinished one
    init_check(loo_dir, few_dir, task)  # None: the few-shot run started from the loo model

A run directory tells its stage's state (``stage_state``): finished (a ``summary.json``
with all its steps; BM25: a ``results.json`` with every held-out task: skipped), started
(rerun with the same command; ``train`` resumes from its latest checkpoint) or new. Before a
stage runs, its command goes to ``<run_dir>/zero_few_shot.json`` (``RECORD``); a directory
made by another command stops the driver (``check_records``) unless ``reuse_changed``. The
stage's output goes to ``<run_dir>/zero_few_shot.log`` and, unless quiet, to the terminal.
"""

from __future__ import annotations

import codecs
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from multiret_jax.experiments.zero_few_shot.plan import PlanError, Stage

RECORD = "zero_few_shot.json"  # per run dir: the command that made it
LOG = "zero_few_shot.log"  # per run dir: the stage's output


def stage_state(st: Stage, tasks: Sequence[str]) -> str:
    """"done", "partial" (started, not finished) or "new".

    Args:
      st: the stage.
      tasks: the held-out tasks (a BM25 stage is done when its results have all of them).
    """
    if st.kind == "bm25":
        path = os.path.join(st.run_dir, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                if set(tasks) <= set(json.load(f).get("tasks", {})):
                    return "done"
    else:
        path = os.path.join(st.run_dir, "summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                s = json.load(f)
            if s.get("completed_steps", -1) >= s.get("steps", float("inf")):
                return "done"
    return "partial" if os.path.isdir(st.run_dir) and os.listdir(st.run_dir) else "new"


def check_records(stages: Sequence[Stage], reuse_changed: bool,
                  say: Callable[[str], None] = print) -> None:
    """Refuses run dirs made by another command (before anything runs).

    Raises:
      PlanError: some stage's ``RECORD`` differs from its command, and not ``reuse_changed``
        (then each is a warning to ``say``).
    """
    changed = []
    for st in stages:
        path = os.path.join(st.run_dir, RECORD)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            old = json.load(f)
        new = st.record()
        if {k: old.get(k) for k in new} != new:
            changed.append(f"{st.run_dir}: made with {old.get('gin_file')} "
                           f"{old.get('gin_params')}, now {new['gin_file']} {new['gin_params']}")
    if changed and not reuse_changed:
        raise PlanError("run directories made by a different command (delete them to rerun, "
                        "or --reuse_changed to keep them):\n  " + "\n  ".join(changed))
    for c in changed:
        say(f"WARNING (--reuse_changed): {c}")


def shell_line(cmd: Sequence[str]) -> str:
    """The command as one would type it (``"--gin_param=HELD_OUT='nq'"``)."""
    def q(arg):
        if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
            return shlex.quote(arg)
        return f'"{arg}"'
    return " ".join(q(a) for a in cmd)


def run_logged(cmd: Sequence[str], log_path: str, quiet: bool,
                env: Optional[Dict[str, str]] = None) -> int:
    """Runs ``cmd``, its stdout+stderr to ``log_path`` (appended) and, unless quiet, to ours.
    Returns its exit status."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_path, "ab") as log:
        log.write(("$ " + shell_line(cmd) + "\n").encode())
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stdout.write(decoder.decode(chunk))
                    sys.stdout.flush()
        finally:
            rc = proc.wait()
    return rc


def _tail(path: str, n: int = 25) -> str:
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
    return "\n".join(lines[-n:])


def run_stage(st: Stage, head: str, tasks: Sequence[str], quiet: bool = False,
              env: Optional[Dict[str, str]] = None,
              say: Callable[[str], None] = print) -> None:
    """Skips ``st`` when finished, else (re)runs its command; sets ``st.status`` ("done":
    found finished, "ran") and ``st.seconds``.

    Args:
      st: the stage.
      head: its progress label (``[i/n] task: label``).
      tasks: the held-out tasks (``stage_state``).
      quiet: the stage's output to its log only.
      env: the subprocess's environment (None: ours).
      say: progress lines.
    Raises:
      RuntimeError: the stage failed (non-zero exit or not finished); the message ends with
        the last lines of its log.
    """
    state = stage_state(st, tasks)
    if state == "done":
        st.status = "done"
        say(f"{head}: finished already in {st.run_dir}, skipping")
        return
    log_path = os.path.join(st.run_dir, LOG)
    os.makedirs(st.run_dir, exist_ok=True)
    with open(os.path.join(st.run_dir, RECORD), "w") as f:
        json.dump({**st.record(), "command": st.command()}, f, indent=1)
    say(f"{head}: {'resuming' if state == 'partial' else 'running'} "
        f"(log {log_path})\n  $ {shell_line(st.command())}")
    t0 = time.time()
    rc = run_logged(st.command(), log_path, quiet, env)
    st.seconds = time.time() - t0
    if rc != 0 or stage_state(st, tasks) != "done":
        raise RuntimeError(f"{head} failed (exit status {rc}); rerun the same command "
                           f"to resume. Last lines of {log_path}:\n{_tail(log_path)}")
    st.status = "ran"
    say(f"{head}: done in {st.seconds:.0f}s")


def validation_on(run_dir: str, task: str, which: str = "validation") -> Optional[dict]:
    """A training run's metrics on ``task`` (its ``summary.json``'s ``which``: "validation"
    or "initial_validation"); None when it has none."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        validation = json.load(f).get(which)
    return None if validation is None else validation["tasks"].get(task)


def init_check(loo_dir: str, few_dir: str, task: str, tol: float = 1e-6) -> Optional[str]:
    """None when the few-shot run's initial validation on ``task`` equals the leave-one-out
    run's final one (it started from those parameters and vocabulary), else the mismatch."""
    a = validation_on(loo_dir, task)
    b = validation_on(few_dir, task, "initial_validation")
    if a is None or b is None:
        return f"{few_dir}: no initial_validation / leave-one-out validation for {task!r}"
    bad = [k for k in ("page_rprec", "passage_rprec", "recall@5")
           if (a.get(k) is None) != (b.get(k) is None)
           or (a.get(k) is not None and abs(a[k] - b[k]) > tol)]
    return (None if not bad else f"{few_dir}: initial {', '.join(f'{k}={b.get(k)}' for k in bad)}"
            f" != leave-one-out {', '.join(f'{k}={a.get(k)}' for k in bad)}: it did not start "
            "from the leave-one-out model")
