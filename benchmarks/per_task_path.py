"""vmap vs unrolled per-task gradients on a real mixed multi-task batch.

    python benchmarks/per_task_path.py [--minilm_dir=...] [--global_batch=120] [--c=4]
        [--negatives=2] [--passage_len=128] [--method=taco] [--repeats=3] [--cores=N]

The step batch is what the trainer feeds ``make_train_step``: the 8 KILT tasks of the
generated mini-KILT, queries formatted with dataset prefixes (TACO), each task's own
maximum query length (FEVER 64, AIDA 128, WoW 256, the others 32), BM25 hard negatives,
per-task batch sizes from temperature mixing (c=4) over the KILT train-set sizes (the
paper's mixture; the examples themselves are drawn from mini-KILT).  Stacking the tasks for
``jax.vmap`` pads every task to the largest B_k and every query to the longest task
length; the unrolled path slices each task back to its own rows and length.

Prints the padding waste (``data.batching.padding_waste``), the compile time and the
median step time of each path with the real all-MiniLM-L6-v2 weights (shared tower, mean
pooling, the multitask method given), interleaved repeats, and the unrolled/vmap
step-time ratio measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import DEFAULT_MODEL, minilm_dir  # noqa: E402  (sibling benchmark)

# KILT train-set sizes (Petroni et al. 2021, Table 1): the mixture the papers train on.
KILT_TRAIN_SIZES = {"fever": 104966, "aidayago2": 18395, "trex": 2284168,
                    "structured_zeroshot": 147909, "nq": 87372, "hotpotqa": 88869,
                    "triviaqa": 61844, "wow": 63734}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minilm_dir", default=DEFAULT_MODEL)
    p.add_argument("--global_batch", type=int, default=120)
    p.add_argument("--c", type=float, default=4.0, help="mixing temperature")
    p.add_argument("--negatives", type=int, default=2)
    p.add_argument("--passage_len", type=int, default=128)
    p.add_argument("--method", default="taco", help="multitask method (registry name)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cores", type=int, default=None, help="pin the process to N cores")
    args = p.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    directory = minilm_dir(args.minilm_dir)

    import jax
    import jax.numpy as jnp
    import optax

    from multiret_jax import multitask
    from multiret_jax.data import kilt, minikilt
    from multiret_jax.data.batching import build_step_batch, padding_waste
    from multiret_jax.data.mixing import task_batch_sizes
    from multiret_jax.data.passages import PassageTable
    from multiret_jax.data.tasks import get_task
    from multiret_jax.data.tokenization import Tokenization
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.data.bm25_cache import BM25Cache
    from multiret_jax.training.inputs import load_task_data
    from multiret_jax.training.step import init_train_state, make_train_step, task_shapes_of

    data_dir = os.path.join(tempfile.mkdtemp(prefix="per_task_path_"), "minikilt")
    minikilt.generate(data_dir, seed=0)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(data_dir, "knowledge_source.jsonl")))
    tasks = [get_task(n) for n in KILT_TRAIN_SIZES]
    bm25 = BM25Cache(os.path.join(data_dir, ".bm25_cache"), table, progress=False)
    data, _ = load_task_data(data_dir, table, tasks, bm25, args.negatives, None)
    sizes = task_batch_sizes(KILT_TRAIN_SIZES, args.global_batch, c=args.c)
    rng = np.random.default_rng(0)
    indices = {t: rng.integers(0, len(data[t].examples), sizes[t]) for t in KILT_TRAIN_SIZES}
    tok = Tokenization.from_dir(directory)
    batch = build_step_batch(indices, data, tok, table, args.passage_len, args.negatives,
                             "prefix", rng=np.random.default_rng(1))
    arrays = batch.arrays()
    shapes = task_shapes_of(arrays, batch.task_query_lens)
    k, b, lq = batch.query_ids.shape
    print(f"jax {jax.__version__}, {len(os.sched_getaffinity(0))} usable cores")
    print(f"K={k} tasks, B_k = {dict(sizes)} (sum {sum(sizes.values())}), stacked B={b}, "
          f"Lq={lq}, per-task Lq={list(map(int, batch.task_query_lens))}, H={args.negatives}, "
          f"Lp={args.passage_len}")
    waste = padding_waste(batch)
    print("padding waste of the stacked batch: " + ", ".join(f"{n} {v:.3f}"
                                                              for n, v in waste.items()))

    model, params, _ = build_biencoder(encoder="bert", checkpoint_dir=directory, pooling="mean",
                                       shared=True)
    towers = jnp.zeros((k,), jnp.int32)
    jbatch = jax.device_put(arrays)
    runs = {}
    for path in ("vmap", "unrolled"):
        tx = optax.chain(multitask.get_method(args.method, num_tasks=k),
                         optax.clip_by_global_norm(1.0), optax.adamw(2e-5, weight_decay=0.01))
        fn = make_train_step(model, tx, towers, per_task=path, task_shapes=shapes,
                             temperature=0.05)
        state = {"s": init_train_state(jax.tree_util.tree_map(jnp.array, params), tx, 0)}

        def run(fn=fn, state=state):
            state["s"], losses = fn(state["s"], jbatch)
            jax.block_until_ready(state["s"])
            return np.asarray(losses)

        t = time.perf_counter()
        try:
            losses = run()
        except jax.errors.JaxRuntimeError as e:  # e.g. the padded vmap batch does not fit
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            print(f"{path}: out of memory: {str(e).splitlines()[0]}", flush=True)
            continue
        print(f"{path}: compile + first step {time.perf_counter() - t:.1f} s, first-step task "
              f"losses {np.round(losses, 4).tolist()}", flush=True)
        runs[path] = run
    times = {path: [] for path in runs}
    for _ in range(args.repeats):
        for path, run in runs.items():
            t = time.perf_counter()
            run()
            times[path].append(time.perf_counter() - t)
    med = {path: statistics.median(ts) for path, ts in times.items()}
    print(f"\n{'path':>9} {'median s/step':>13} {'min':>7} {'max':>7} {'queries/s':>9}")
    for path, ts in times.items():
        print(f"{path:>9} {med[path]:>13.3f} {min(ts):>7.3f} {max(ts):>7.3f} "
              f"{sum(sizes.values()) / med[path]:>9.2f}")
    if len(med) == 2:
        print(f"unrolled/vmap step-time ratio: {med['unrolled'] / med['vmap']:.3f} "
              "(< 1: unrolled faster)")


if __name__ == "__main__":
    main()
