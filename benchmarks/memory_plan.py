"""Memory plan of TACO's train step at paper scale, from XLA's own buffer assignment.

    python benchmarks/memory_plan.py [--devices=1,8] [--dtypes=bfloat16,float32]
        [--grad_cache_chunk=N] [--model_parallel=1] [--layers=L]

Lowers and compiles the real train step (``training/step.py``'s ``make_train_step``, the
trainer's optimizer chain from the plan: the multitask method of each phase, global-norm
clipping, AdamW) of ``taco.gin``: T5-base as ST5-EncDec (one shared tower), K=8 tasks,
global batch 120 with Table 5's per-task batch sizes and query lengths (the plan of
``train --dry_run`` with KILT's train sizes), 2 hard negatives, passages of 256 tokens.
Nothing is allocated: parameters, state and batch are abstract (``jax.eval_shape``,
``jax.ShapeDtypeStruct`` with their shardings). Each device count runs in its own
process with that many simulated CPU devices (``--xla_force_host_platform_device_count``).

Per device it prints XLA's memory analysis: arguments (the train state and the batch),
outputs, the bytes outputs alias onto donated arguments, temporaries (activations,
gradients, the update's intermediates) and the peak they imply (arguments + outputs -
aliased + temporaries), and the TACO state's share of the arguments. The figures come
from XLA CPU's buffer assignment; a TPU/GPU compile fuses and schedules differently, so
read them as a plan, not a measurement of an accelerator. They are read from XLA's
buffer-assignment dump (``--xla_dump_to``) as soon as it is written, and the compile is
then stopped: XLA CPU's code generation, which comes after buffer assignment and does not
change it, takes hours on 2 cores for T5-base's 12 unrolled layers per stack (its thunk
emission is quadratic in the computations). ``--wait_compile`` lets the compile finish
and checks that ``memory_analysis()`` equals the dump (it does, byte for byte, at
``--layers=1``). ``--layers=L`` compiles T5-base with L of its 12 layers per stack. The last line:

    memory_plan: T5-base TACO, 8 devices, bf16: X.X GiB/device
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

GIB = 2 ** 30
ALLOCATION = re.compile(r"allocation \d+: size (\d+)(.*):$")
# KILT's train sizes for the tasks Table 5 leaves whole, T-REx and zsRE raw (taco.gin caps
# them to Table 5's 95k and 100k): the same sizes tests/test_plan.py checks the plan with.
TASK_SIZES = {"nq": 76000, "triviaqa": 53000, "hotpotqa": 69000, "wow": 80000, "trex": 2284168,
              "fever": 71000, "structured_zeroshot": 147909, "aidayago2": 18000}


def worker(args):
    import gin
    import jax
    import jax.numpy as jnp
    import numpy as np

    from multiret_jax import partitioning
    from multiret_jax.gin_utils import parse_gin
    from multiret_jax.models.biencoder import BiEncoder
    from multiret_jax.models.encoders import get_encoder
    from multiret_jax.train import make_optimizer, train
    from multiret_jax.training.step import (batch_shardings, init_train_state, make_train_step,
                                            state_shardings)

    binds = [f"train.task_sizes = {TASK_SIZES!r}", f"DTYPE = {args.dtype!r}",
             f"train.model_parallel = {args.model_parallel}"]
    if args.grad_cache_chunk:
        binds.append(f"train.grad_cache_chunk = {args.grad_cache_chunk}")
    binds += args.gin_param
    parse_gin(["taco.gin"], binds)
    with tempfile.TemporaryDirectory() as tmp:
        s = train(model_dir=os.path.join(tmp, "run"), return_settings=True)
        plan = train(model_dir=os.path.join(tmp, "run"), dry_run=True)
    tasks = list(plan["tasks"])
    k = len(tasks)
    spec = get_encoder(gin.query_parameter("build_biencoder.encoder"))
    layers = {"num_layers": args.layers} if args.layers else {}
    cfg = spec.presets[gin.query_parameter("build_biencoder.config")](dtype=args.dtype, **layers)
    model = BiEncoder(spec.module(cfg, gin.query_parameter("build_biencoder.pooling")),
                      shared=gin.query_parameter("build_biencoder.shared"))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    _, tx, _ = make_optimizer(s, plan, k)
    state = jax.eval_shape(lambda p: init_train_state(p, tx), params)

    mesh = partitioning.make_mesh(s.model_parallel)
    param_sh = (partitioning.logical_shardings(model.logical_specs(), mesh)
                if s.model_parallel > 1 else None)
    state_sh = state_shardings(state, mesh, param_sh)
    rows = mesh.shape["data"] * (s.grad_cache_chunk or 1) // np.gcd(mesh.shape["data"],
                                                                    s.grad_cache_chunk or 1)
    up = lambda n: -(-n // rows) * rows
    b = up(max(v["batch_size"] for v in plan["tasks"].values()))
    lq = max(v["query_len_with_marker"] for v in plan["tasks"].values())
    lp, h = s.passage_len, s.num_negatives
    shapes = {"query_ids": (k, b, lq), "query_mask_tokens": (k, b, lq), "pos_ids": (k, b, lp),
              "pos_mask": (k, b, lp), "neg_ids": (k, b, h, lp), "neg_mask": (k, b, h, lp),
              "query_mask": (k, b), "negative_mask": (k, b, h), "positive_rows": (k, b),
              "negative_rows": (k, b, h), "task_counts": (k,)}
    batch = {n: jax.ShapeDtypeStruct(sh, jnp.int32) for n, sh in shapes.items()}
    batch_sh = batch_shardings(batch, mesh)
    task_shapes = tuple((up(v["batch_size"]), v["query_len_with_marker"])
                        for v in plan["tasks"].values())
    towers = jnp.zeros((k,), jnp.int32)
    step = make_train_step(model, tx, towers, mesh=mesh, state_sharding=state_sh,
                           batch_sharding=batch_sh, temperature=s.temperature,
                           per_task=s.per_task, grad_cache_chunk=s.grad_cache_chunk,
                           task_shapes=task_shapes, batching=s.batching)
    with_sh = lambda tree, sh: jax.tree_util.tree_map(
        lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=y), tree, sh)
    lowered = step.lower(with_sh(state, state_sh), with_sh(batch, batch_sh))

    def per_device(tree, sh):
        return sum(int(np.prod(y.shard_shape(x.shape))) * int(np.dtype(x.dtype).itemsize)
                   for x, y in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(sh)))

    # the TACO EMA's leaves (any ``.ema`` in the optimizer state), placed as the trainer places them
    paths = jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
    ema = [i for i, (path, _) in enumerate(paths) if "ema" in jax.tree_util.keystr(path)]
    leaves = [x for _, x in paths]
    shardings = jax.tree_util.tree_leaves(state_sh["opt_state"])
    ema_bytes = per_device([leaves[i] for i in ema], [shardings[i] for i in ema])
    out = {"devices": jax.device_count(), "dtype": args.dtype, "layers": cfg.num_layers,
           "params": int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))),
           "batch": {t: v["batch_size"] for t, v in plan["tasks"].items()},
           "query_lens": {t: v["query_len_with_marker"] for t, v in plan["tasks"].items()},
           "passage_len": lp, "negatives": h, "rows_per_task": b,
           "state_bytes": per_device(state, state_sh), "taco_ema_bytes": ema_bytes}
    out = {k: int(v) if isinstance(v, (np.integer, int)) else v for k, v in out.items()}
    print("MEMORY_PLAN_SETUP " + json.dumps(out), flush=True)  # before the long compile
    ma = lowered.compile().memory_analysis()
    sizes = {"argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
             "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}
    print("MEMORY_PLAN_JSON " + json.dumps({k: int(v) for k, v in sizes.items()}), flush=True)


def buffer_assignment_sizes(path: str) -> Dict[str, int]:
    """Per-device bytes of a module from XLA's ``*buffer-assignment.txt`` dump, as
    ``Compiled.memory_analysis()`` sums them: entry parameters (argument), maybe-live-out
    allocations (output), allocations that are both (alias) and the preallocated temporary
    buffer (temp); thread-local and constant allocations are not counted.

    Raises:
      ValueError: naming the file, if it holds no allocations.
    """
    sizes = dict(argument=0, output=0, alias=0, temp=0)
    found = 0
    with open(path) as f:
        for line in f:
            m = ALLOCATION.match(line)
            if not m:
                continue
            found += 1
            size, tags = int(m.group(1)), m.group(2)
            param, live = "parameter" in tags, "maybe-live-out" in tags
            sizes["argument"] += size * param
            sizes["output"] += size * live
            sizes["alias"] += size * (param and live)
            sizes["temp"] += size * ("preallocated-temp" in tags)
    if not found:
        raise ValueError(f"{path}: no 'allocation N: size S, ...' lines (not an XLA "
                         "buffer-assignment dump?)")
    return sizes


def run_worker(cmd, env, wait_compile: bool, poll_s: float = 5.0) -> Dict[str, Any]:
    """Runs one worker; returns its setup figures plus the step's memory sizes.

    The sizes come from XLA's buffer-assignment dump as soon as it is written (the
    compile is then stopped: XLA CPU's code generation after buffer assignment takes
    hours for T5-base's unrolled layers and does not change the plan), or from
    ``memory_analysis()`` when the compile finishes first. ``wait_compile``: let the
    compile finish and check that both agree.
    """
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "dump")
        env = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + f" --xla_dump_to={dump} "
                   "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=^jit_step$")
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        from_dump, seen = None, {}
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                report = glob.glob(os.path.join(dump, "*jit_step*memory-usage-report.txt"))
                size = {p: os.path.getsize(p) for p in report}
                if report and size == seen and from_dump is None:  # written and settled
                    (ba,) = glob.glob(os.path.join(dump, "*jit_step*-buffer-assignment.txt"))
                    from_dump = buffer_assignment_sizes(ba)
                    if not wait_compile:
                        break
                seen = size
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with open(out_path) as f:
            lines = dict(x.split(" ", 1) for x in f.read().splitlines()
                         if x.startswith("MEMORY_PLAN_"))
        if "MEMORY_PLAN_SETUP" not in lines or (from_dump is None and "MEMORY_PLAN_JSON" not in lines):
            with open(err_path) as f:
                raise RuntimeError(f"the worker failed (exit {proc.returncode}):\n"
                                   + f.read()[-4000:])
        r = json.loads(lines["MEMORY_PLAN_SETUP"])
        analysis = json.loads(lines["MEMORY_PLAN_JSON"]) if "MEMORY_PLAN_JSON" in lines else None
        if analysis and from_dump and analysis != from_dump:
            raise RuntimeError(f"the buffer-assignment dump {from_dump} differs from "
                               f"memory_analysis() {analysis}")
        r.update(analysis or from_dump)
        r["source"] = ("buffer-assignment dump" if not analysis else "memory_analysis" if
                       not from_dump else "memory_analysis, equal to the buffer-assignment dump")
        r["peak"] = r["argument"] + r["output"] - r["alias"] + r["temp"]
        return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="1,8")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--grad_cache_chunk", type=int, default=None)
    p.add_argument("--model_parallel", type=int, default=1)
    p.add_argument("--layers", type=int, default=None,
                   help="encoder and decoder layers (default: T5-base's 12); a smaller "
                        "model compiles faster, and its line says so")
    p.add_argument("--gin_param", action="append", default=[],
                   help="an extra binding, e.g. MULTITASK_METHOD='naive' with "
                        "MULTITASK_OPTIONS={} (to see what the TACO update itself adds)")
    p.add_argument("--wait_compile", action="store_true",
                   help="let each compile finish (hours at 12 layers) and check that its "
                        "memory_analysis() equals the buffer-assignment dump")
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for n in [int(x) for x in args.devices.split(",")]:
        for dtype in args.dtypes.split(","):
            # LLVM at -O0: the machine code is never run, and buffer assignment (what is
            # measured) happens on the HLO before it; a T5-base step otherwise takes XLA CPU
            # over 20 minutes to compile.
            env = dict(os.environ, JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={n} "
                                 "--xla_backend_optimization_level=0 "
                                 "--xla_llvm_disable_expensive_passes=true")
            cmd = [sys.executable, __file__, "--worker", f"--dtype={dtype}",
                   f"--model_parallel={args.model_parallel}"]
            if args.layers:
                cmd.append(f"--layers={args.layers}")
            if args.grad_cache_chunk:
                cmd.append(f"--grad_cache_chunk={args.grad_cache_chunk}")
            cmd += [f"--gin_param={b}" for b in args.gin_param]
            print(f"-- compiling the T5-base TACO step: {n} device(s), {dtype} ...", flush=True)
            t0 = time.time()
            try:
                r = run_worker(cmd, env, args.wait_compile)
            except RuntimeError as e:
                sys.exit(f"memory_plan: the {n}-device {dtype} compile: {e}")
            rows.append(r)
            print(f"   sizes from {r['source']} after {time.time() - t0:.0f} s", flush=True)
            print(f"   {r['layers']} layers per stack, {r['params'] / 1e6:.1f}M params; per-task batch {r['batch']} "
                  f"(padded to {r['rows_per_task']} rows); query lengths {r['query_lens']}; "
                  f"{r['negatives']} hard negatives; passages {r['passage_len']} tokens")
            print(f"   per device: arguments {r['argument'] / GIB:.2f} GiB (train state "
                  f"{r['state_bytes'] / GIB:.2f}, of which TACO EMA {r['taco_ema_bytes'] / GIB:.2f}),"
                  f" outputs {r['output'] / GIB:.2f} (aliased {r['alias'] / GIB:.2f}), "
                  f"temporaries {r['temp'] / GIB:.2f}; peak {r['peak'] / GIB:.2f} GiB; TACO "
                  f"EMA share of the peak {r['taco_ema_bytes'] / max(r['peak'], 1):.1%}",
                  flush=True)
    print("\n| devices | dtype | arguments | outputs - aliased | temporaries | peak GiB/device |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['dtype']} | {r['argument'] / GIB:.2f} | "
              f"{(r['output'] - r['alias']) / GIB:.2f} | {r['temp'] / GIB:.2f} | "
              f"{r['peak'] / GIB:.2f} |")
    last = [r for r in rows if r["dtype"] == "bfloat16"] or rows
    r = max(last, key=lambda r: r["devices"])
    short = {"bfloat16": "bf16", "float32": "fp32"}.get(r["dtype"], r["dtype"])
    model = "T5-base" if r["layers"] == 12 else f"T5-base with {r['layers']} of 12 layers"
    print(f"memory_plan: {model} TACO, {r['devices']} devices, {short}: "
          f"{r['peak'] / GIB:.1f} GiB/device")


if __name__ == "__main__":
    main()
