"""The project's search against raw FAISS on the same index: the wrapper's cost.

    python benchmarks/search_speed.py [--num_passages=100000] [--num_queries=2000]
        [--dim=384] [--k=100] [--repeats=3] [--threads=N]

For each index type (Flat, HNSW32, IVF-PQ, IVF-SQ8) built once with
``faiss_index.build_index`` from seeded clustered embeddings (the ``synthetic`` source of
``benchmarks/faiss_recall.py``), it times, on the same FAISS index object and the same
queries, best of ``--repeats`` rounds (the three take turns in each round):

* raw: ``index.index.search(queries, k)`` (one FAISS call, float32 input);
* project: ``DenseIndex.search(queries, k)``: dtype/shape checks, query batching, the
  HNSW beam guard, global rows, a Flat index's rescoring of its top k + margin pair by
  pair (``mine.pair_scores``), and the sort that orders ties by row;
* project + ids: ``DenseIndex.search_ids``, which also maps rows to passage-id strings.

It prints queries/s of each and the ratio project / raw (target >= 0.9), then, last:

    search_speed: project / raw FAISS, worst index: X.XX (target >= 0.9)

Both searches use the same FAISS thread count (``--threads``, default FAISS's). The
results are checked to be the same rows before anything is timed.
"""

import argparse
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faiss_recall import make_data  # noqa: E402  (faiss_recall.py's synthetic corpus)

from multiret_jax.index.faiss_index import build_index  # noqa: E402


def best_times(fns, repeats):
    """Best wall time of each function over ``repeats`` rounds, the functions taking turns
    within a round (so a slower or faster spell of the machine affects all of them)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_passages", type=int, default=100_000)
    p.add_argument("--num_queries", type=int, default=2000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    passages, queries = make_data(args.num_passages, args.num_queries, args.dim, args.seed)
    nlist = max(16, int(4 * np.sqrt(args.num_passages)))
    specs = ["Flat", "HNSW32", f"IVF{nlist},PQ{args.dim // 8}", f"IVF{nlist},SQ8"]
    print(f"{args.num_passages} passages x {args.dim}, {args.num_queries} queries, k={args.k}, "
          f"FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} thread(s)")
    ratios = {}
    for spec in specs:
        t = time.perf_counter()
        index = build_index(passages, spec, progress=False, seed=args.seed)
        built = time.perf_counter() - t
        if spec.startswith("IVF"):
            index.set_params(nprobe=16)
        if spec.startswith("HNSW"):  # the project raises efSearch to k; FAISS keeps it
            index.set_params(efSearch=max(128, args.k))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        raw_rows = index.index.search(q, args.k)[1]
        rows = index.search(q, args.k)[0]
        same = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(raw_rows, rows)])
        if same < 0.999:
            sys.exit(f"search_speed: {spec}: the project's rows differ from FAISS's "
                     f"(overlap {same:.4f})")
        t_raw, t_proj, t_ids = best_times([lambda: index.index.search(q, args.k),
                                           lambda: index.search(q, args.k),
                                           lambda: index.search_ids(q, args.k)], args.repeats)
        ratios[spec] = t_raw / t_proj
        qps = lambda t: args.num_queries / t
        print(f"{spec:>16} (built in {built:5.1f} s): raw {qps(t_raw):9.0f} q/s, project "
              f"{qps(t_proj):9.0f} q/s ({t_raw / t_proj:.3f} of raw), with ids "
              f"{qps(t_ids):9.0f} q/s ({t_raw / t_ids:.3f})", flush=True)
    worst = min(ratios, key=ratios.get)
    print(f"search_speed: project / raw FAISS, worst index ({worst}): {ratios[worst]:.2f} "
          "(target >= 0.9)")


if __name__ == "__main__":
    main()
