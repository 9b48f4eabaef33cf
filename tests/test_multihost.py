"""Multi-process training: the training CLI as 2 ``jax.distributed`` processes x 2 CPU
devices (coordinator on 127.0.0.1, gloo collectives) trains like the same run as
1 process x 4 devices.

Both runs have the same 4-device ("data") mesh and compile the same SPMD program; they
differ in which process holds which devices and in the all-reduce (gloo across processes
vs XLA's in-process CPU collectives), whose float32 summation order differs. The run
covers BM25 warm-up steps, an ANCE episode (mining on every process), validation,
asynchronous orbax checkpoints written by both processes, and process 0 alone writing the
mini-KILT, vocabulary, negatives, TensorBoard events, ``final_params.safetensors`` and
``summary.json``.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 420  # seconds, for each training process
WARMUP = 4  # BM25 steps, then 1 ANCE episode of 2 steps: validation at steps 4 and 6,
STEPS = WARMUP + 2  # checkpoints at 2, 4 and 6
BINDINGS = [f"TRAIN_STEPS={WARMUP}", "ANCE_EPISODES=1", "ANCE_EPISODE_STEPS=2",
            "EVAL_EVERY=4", "CHECKPOINT_EVERY=2", "BATCH_SIZE=16", "train.minikilt_scale=0.5"]

# Tolerances (float32 summation order, as in test_train_step.py).
# Losses of the BM25 warm-up steps: 1e-5 absolute (measured <= 3.1e-6; steps 0 and 1 are
# equal, the learning rate of step 0 is 0).
LOSS_TOL = 1e-5
# Parameters: the trainer's AdamW moves each parameter by ~lr * g / (|g| + eps), so the
# rounding of near-zero gradients becomes O(lr) differences in a few elements
# (test_train_step.py: "AdamW itself is only compared through its losses"); the ANCE
# episode adds a few differently broken near-ties among the mined negatives. Measured
# after 6 steps: half the elements equal, 99% within 1e-4 of the largest update, the
# largest difference 0.13 of the largest update, the difference's L2 norm 1.8e-3 of the
# update's. A real fault moves most elements by O(lr): with process 1 fed other batches
# than process 0 (measured), the warm-up losses differ by 0.26, the L2 ratio is 0.38 and
# the largest difference 1.7 of the largest update.
PARAM_L2_TOL = 1e-2  # ||multi - single|| / ||single - initial||
PARAM_MAX_TOL = 0.5  # max |multi - single| / max |single - initial|
NEGATIVES_TOL = 0.01  # fraction of mined ANCE negative slots that may differ (measured 3 of 2,674)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model_dir: Path, devices: int, log_path: Path, cache_dir: Path, extra=(),
           extra_env=None):
    cmd = ([sys.executable, "-m", "multiret_jax.train", "--gin_file=taco_tiny.gin",
            f"--model_dir={model_dir}"] + [f"--gin_param={b}" for b in [*BINDINGS, *extra]])
    # A persistent compilation cache shared by the processes of this test (as in
    # test_train_kill.py): only saves compile time.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), **(extra_env or {}))
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name} (last {n} chars) ---\n{text[-n:]}"


def _wait_all(procs, logs) -> None:
    """Waits for every process; on a failure or timeout kills the rest and fails with the
    tail of every log."""
    codes = None
    try:
        codes = [p.wait(timeout=RUN_TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
    if codes is None or any(codes):
        what = f"exit codes {codes}" if codes else f"timeout after {RUN_TIMEOUT} s"
        pytest.fail(f"training failed ({what}):\n" + "\n".join(_tail(p) for p in logs))


def _losses(model_dir: Path) -> dict:
    """``{(step, tag): value}`` of the loss scalars in the run's TensorBoard events."""
    from tensorboardX.proto import event_pb2
    out = {}
    for path in glob.glob(str(model_dir / "tb" / "events.out.tfevents.*")):
        data, pos = Path(path).read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos + 12:pos + 12 + length])  # after length + its crc
            pos += 12 + length + 4
            out.update({(ev.step, v.tag): v.simple_value for v in ev.summary.value
                        if v.tag.startswith("loss")})
    return out


def _initial_params() -> dict:
    """The trainer's initial parameters (``build_biencoder`` under the same gin config)."""
    import gin

    from multiret_jax.gin_utils import parse_gin
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.train import flat_params

    gin.clear_config()
    try:
        parse_gin(["taco_tiny.gin"], BINDINGS)
        return flat_params(build_biencoder()[1])
    finally:
        gin.clear_config()


@pytest.mark.slow  # ~4 min on 2 cores; by default tests/test_sharded_search.py runs 2
def test_two_processes_train_like_one(tmp_path):  # processes (mining, retrieve) against 1
    cache = tmp_path / "xla_cache"
    mh_dir, ref_dir = tmp_path / "multihost", tmp_path / "single"
    coordinator = f"127.0.0.1:{_free_port()}"
    multihost = ["train.multihost=True", f"train.coordinator_address='{coordinator}'",
                 "train.num_processes=2"]
    local_only = {"JAX_COORDINATOR_BIND_ADDRESS": coordinator}  # jax's default: [::]:port
    logs = [tmp_path / "process0.log", tmp_path / "process1.log", tmp_path / "single.log"]
    procs = []
    try:  # all three at once (mostly single-threaded compiles and host work)
        for i in range(2):
            procs.append(_start(mh_dir, 2, logs[i], cache, [*multihost, f"train.process_id={i}"],
                                local_only))
        procs.append(_start(ref_dir, 4, logs[2], cache))
        _wait_all(procs, logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i in range(2):
        assert f"process {i} of 2: 2 local / 4 global devices" in \
            logs[i].read_text(errors="replace"), _tail(logs[i])

    # Orbax finalises a step once every process has written its part.
    steps = sorted(int(p.name) for p in (mh_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == STEPS, steps

    s_mh = json.loads((mh_dir / "summary.json").read_text())
    s_ref = json.loads((ref_dir / "summary.json").read_text())
    for key in ("steps", "completed_steps", "skipped_steps", "tasks"):
        assert s_mh[key] == s_ref[key], (key, s_mh[key], s_ref[key])
    assert s_mh["completed_steps"] == s_mh["steps"] == STEPS
    assert s_mh["validation"] is not None

    got, want = _losses(mh_dir), _losses(ref_dir)
    assert sorted(got) == sorted(want) and {s for s, _ in got} == set(range(STEPS))
    warm = [k for k in want if k[0] < WARMUP]
    loss_err = max(abs(got[k] - want[k]) for k in warm)
    print(f"warm-up losses: max |diff| {loss_err:.3g}")
    assert loss_err <= LOSS_TOL, {k: (got[k], want[k]) for k in warm}

    neg_mh = np.load(mh_dir / "ance" / "episode_1.npz")
    neg_ref = np.load(ref_dir / "ance" / "episode_1.npz")
    assert sorted(neg_mh.files) == sorted(neg_ref.files)
    differ = sum(int(np.sum(neg_mh[k] != neg_ref[k])) for k in neg_ref.files)
    slots = sum(neg_ref[k].size for k in neg_ref.files)
    print(f"ANCE negatives: {differ} of {slots} slots differ")
    assert differ <= NEGATIVES_TOL * slots

    got, want = (load_file(str(d / "final_params.safetensors")) for d in (mh_dir, ref_dir))
    start = _initial_params()
    assert sorted(got) == sorted(want) == sorted(start)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
    flat = lambda t: np.concatenate([t[k].astype(np.float64).ravel() for k in sorted(want)])
    diff, update = flat(got) - flat(want), flat(want) - flat(start)
    l2 = np.linalg.norm(diff) / np.linalg.norm(update)
    worst = np.max(np.abs(diff)) / np.max(np.abs(update))
    print(f"parameters: max |diff| {np.max(np.abs(diff)):.3g} = {worst:.3g} of the largest "
          f"update {np.max(np.abs(update)):.3g}; L2 ratio {l2:.3g}")
    assert l2 <= PARAM_L2_TOL and worst <= PARAM_MAX_TOL, (l2, worst)
