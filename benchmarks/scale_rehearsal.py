"""The whole pipeline at 100k and 1M passages: wall time and peak memory per stage, and how
each grows with the corpus (the rehearsal for KILT's 36M).

    python benchmarks/scale_rehearsal.py [--sizes=100000,1000000] [--steps=20]
        [--work_dir=runs/scale_rehearsal] [--index_spec=HNSW32] [--val_pool_size=20000]

For each size N, a mini-KILT scaled to about N 100-word passages (the generator's
``--scale``; 1,800 pages per unit of scale) goes through the real commands, each a process
of its own:

1. ``data``: ``python -m multiret_jax.data.minikilt --scale=S``;
2. ``train``: ``python -m multiret_jax.train --gin_file=taco_tiny.gin`` (a tiny T5) on it:
   the passages chunked into the memory-mapped store, BM25 negatives (``BM25Cache``),
   the validation pool, ``--steps`` steps on BM25 negatives, one ANCE episode of
   ``--steps`` steps mined over a FAISS ``--index_spec`` index of the whole corpus,
   validation on the candidate pool;
3. ``retrieve``: ``python -m multiret_jax.retrieve`` with the trained run: the whole
   corpus encoded and indexed (``--index_spec``), every dev query of two tasks searched
   and scored.

The queries are held fixed across sizes (``train.max_examples`` training examples and
``train.val_max_queries`` dev queries per task, two tasks), so what grows is the corpus.
The trainer's stages come from its log (``training/stage_log.py``: seconds and the
stage's own peak RSS); each command's total is its wall time and its peak RSS
(``ru_maxrss`` of the finished process). Then per stage the ratio of the largest size to
the smallest and the growth exponent ``log(ratio) / log(N_big / N_small)`` (1: linear in
the corpus, 0: flat).

Last line:

    scale_rehearsal: 1,000,000 / 100,000 passages: wall x R (exponent E), peak RSS x M
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("nq", "fever")
STAGE = re.compile(r"(?:INFO|I) [\w.]+: (?P<what>.+): done in (?P<s>[0-9.]+) s"
                   r"(?: \(peak RSS (?P<gib>[0-9.]+) GiB\))?")


def run(cmd, log_path, env):
    """Runs ``cmd`` with its output in ``log_path``; (seconds, peak RSS GiB of the child)."""
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        with open(log_path, errors="replace") as f:
            tail = f.read()[-4000:]
        sys.exit(f"scale_rehearsal: {' '.join(cmd[:3])} failed (log {log_path}):\n{tail}")
    return seconds, usage.ru_maxrss / 2 ** 20  # KiB -> GiB


def passages_per_scale(work_dir, env):
    """Passages of the scale-1 mini-KILT (page chunking), counted once."""
    probe = os.path.join(work_dir, "probe")
    subprocess.run([sys.executable, "-m", "multiret_jax.data.minikilt", f"--out_dir={probe}",
                    "--scale=1"], cwd=ROOT, env=env, check=True, capture_output=True)
    from multiret_jax.data import kilt
    from multiret_jax.data.passages import iter_passages
    return sum(1 for _ in iter_passages(kilt.iter_knowledge_source(
        os.path.join(probe, "knowledge_source.jsonl"))))


def rehearse(args, n, per_scale, env):
    scale = round(n / per_scale, 2)
    base = os.path.join(os.path.abspath(args.work_dir), f"n{n}")
    data_dir, run_dir = os.path.join(base, "minikilt"), os.path.join(base, "run")
    os.makedirs(base, exist_ok=True)
    stages = {}
    stages["data"] = run([sys.executable, "-m", "multiret_jax.data.minikilt",
                          f"--out_dir={data_dir}", f"--scale={scale}"],
                         os.path.join(base, "data.log"), env)
    binds = [f"DATA_DIR='{data_dir}'", f"TRAIN_STEPS={args.steps}", "ANCE_EPISODES=1",
             f"ANCE_EPISODE_STEPS={args.steps}", f"EVAL_EVERY={args.steps}",
             "MULTITASK_LAST_PHASES=1", f"train.tasks={list(TASKS)}",
             f"train.val_tasks={list(TASKS)}", f"train.max_examples={args.max_examples}",
             f"train.val_max_queries={args.val_queries}",
             f"train.val_pool_size={args.val_pool_size}",
             f"train.ance_index_spec='{args.index_spec}'", "train.compare_bm25=False"]
    train_log = os.path.join(base, "train.log")
    stages["train (total)"] = run(
        [sys.executable, "-m", "multiret_jax.train", "--gin_file=taco_tiny.gin",
         f"--model_dir={run_dir}"] + [f"--gin_param={b}" for b in binds], train_log, env)
    with open(train_log, errors="replace") as f:
        text = f.read()
    for m in STAGE.finditer(text):  # (the parenthesis names the size: the same stage)
        name = re.sub(r" \(.*\)$", "", m["what"])
        stages[f"  train: {name}"] = (float(m["s"]), float(m["gib"] or "nan"))
    # each stage resets the process's peak (its own peak), so the command's peak is the
    # largest of its stages' and of what the kernel reports at its end
    sec, gib = stages["train (total)"]
    stages["train (total)"] = (sec, max([gib] + [g for k, (_, g) in stages.items()
                                                 if k.startswith("  train:")]))
    found = re.search(r"(\d+) passages from", text)
    stages["retrieve"] = run(
        [sys.executable, "-m", "multiret_jax.retrieve", f"--model_dir={run_dir}",
         f"--out_dir={os.path.join(base, 'retrieval')}", f"--index_spec={args.index_spec}",
         f"--tasks={','.join(TASKS)}", "--split=dev", "--overwrite"],
        os.path.join(base, "retrieve.log"), env)
    return {"target": n, "passages": int(found[1]) if found else n, "scale": scale,
            "stages": stages}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--work_dir", default="runs/scale_rehearsal")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max_examples", type=int, default=2000)
    p.add_argument("--val_queries", type=int, default=200)
    p.add_argument("--val_pool_size", type=int, default=20_000)
    p.add_argument("--index_spec", default="HNSW32")
    args = p.parse_args()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               MULTIRET_JAX_CACHE=os.path.join(os.path.abspath(args.work_dir), "cache"))
    per_scale = passages_per_scale(args.work_dir, env)
    print(f"mini-KILT: {per_scale:,} passages per unit of scale", flush=True)
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        r = rehearse(args, n, per_scale, env)
        results.append(r)
        print(f"\n{r['passages']:,} passages (scale {r['scale']:g}):", flush=True)
        for name, (sec, gib) in r["stages"].items():
            print(f"  {name:<58} {sec:>9.1f} s  {gib:>6.2f} GiB", flush=True)
    with open(os.path.join(args.work_dir, "scale_rehearsal.json"), "w") as f:
        json.dump(results, f, indent=1)
    small, big = results[0], results[-1]
    growth = big["passages"] / small["passages"]
    print(f"\n| stage | {small['passages']:,}: s | GiB | {big['passages']:,}: s | GiB | "
          "time x | exponent | memory x |")
    print("|---|---|---|---|---|---|---|---|")
    for name in big["stages"]:
        if name not in small["stages"]:
            continue
        (s0, m0), (s1, m1) = small["stages"][name], big["stages"][name]
        ratio = s1 / max(s0, 1e-9)
        print(f"| {name.strip()} | {s0:.1f} | {m0:.2f} | {s1:.1f} | {m1:.2f} | {ratio:.2f} | "
              f"{math.log(ratio) / math.log(growth):.2f} | {m1 / m0:.2f} |")
    wall = lambda r: sum(v[0] for k, v in r["stages"].items() if not k.startswith(" "))
    peak = lambda r: max(v[1] for k, v in r["stages"].items() if not k.startswith(" "))
    ratio = wall(big) / wall(small)
    print(f"scale_rehearsal: {big['passages']:,} / {small['passages']:,} passages: wall "
          f"x{ratio:.2f} (exponent {math.log(ratio) / math.log(growth):.2f}), peak RSS "
          f"x{peak(big) / peak(small):.2f}")


if __name__ == "__main__":
    main()
