"""FAISS index trade-offs on synthetic retriever-like embeddings: build time, size, speed, recall.

    python benchmarks/faiss_recall.py [--num_passages=100000] [--num_queries=1000] [--dim=384]
        [--train_size=50000] [--num_shards=10] [--threads=N] [--skip_ip_to_l2]

Data (seeded, ``--seed``; encoding a generated mini-KILT with a model at 100k passages is
too slow on a few CPU cores, so the embeddings are synthetic):

* a spectrum: per-dimension scales decaying as (j + 1) ** -0.5 (anisotropic, like trained
  embeddings whose variance sits in a few directions), plus a shared mean vector (the
  common component real dense-retriever embeddings have);
* ``num_passages // 100`` Gaussian cluster centres (topics) drawn with that spectrum;
  each passage = centre + 0.7 x spectrum-scaled noise, then multiplied by a per-passage
  log-normal norm factor exp(N(0, 0.3^2)), so inner product, cosine and L2 rank differently;
* queries: a random passage's direction + noise (0.6 x its scale), unit-normalised and
  multiplied by their own log-normal factor (query norm does not change a query's
  ranking, passage norm does).

The corpus is handed to ``build_index`` as ``--num_shards`` shards (as encode.py writes
them). Indexes: Flat (exact; the reference), HNSW32 with FAISS's inner-product metric and
with DPR's IP->L2 transform (efSearch sweep), IVF-PQ ("IVF{nlist},PQ48", 48 bytes/vector,
nprobe sweep) and IVF-SQ8 (1 byte/dim). nlist = 1024 for 100k passages (about
sqrt(P) * 3, rounded to a power of two). Columns: build time (training + adding),
serialised index size, search time per query (all queries in one batch, FAISS's OpenMP
threads, k=10), recall@10 = the fraction of Flat's top-10 that the index's top-10
contains, and R10@100 = the fraction of Flat's top-10 within the index's top-100 (what a
re-ranking stage over the top-100 could recover; PQ's quantisation error shows there).
"""

import argparse
import time

import faiss
import numpy as np

from multiret_jax.index import faiss_index as fi


def make_data(num_passages, num_queries, dim, seed):
    """Synthetic clustered embeddings (see module docstring): (passages, queries) float32."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(dim) + 1.0) ** -0.5
    scale /= np.sqrt(np.mean(scale ** 2))
    mean = 0.5 * rng.normal(size=dim) * scale
    centres = rng.normal(size=(max(1, num_passages // 100), dim)) * scale
    x = np.empty((num_passages, dim), np.float32)
    for s in range(0, num_passages, 20000):
        n = min(20000, num_passages - s)
        c = centres[rng.integers(0, len(centres), n)]
        v = mean + c + 0.7 * rng.normal(size=(n, dim)) * scale
        x[s:s + n] = v * np.exp(0.3 * rng.normal(size=(n, 1)))
    src = x[rng.choice(num_passages, num_queries, replace=False)]
    src = src / np.linalg.norm(src, axis=1, keepdims=True)
    q = src + 0.6 * rng.normal(size=src.shape) * scale / np.sqrt(dim)
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * np.exp(0.3 * rng.normal(size=(num_queries, 1)))
    return x, q.astype(np.float32)


def recall_at(rows, ref, k=10, depth=10):
    """Mean fraction of ``ref``'s top-k found in ``rows``' top-``depth``."""
    return float(np.mean([len(set(a[:depth]) & set(b[:k])) / k for a, b in zip(rows, ref)]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num_passages", type=int, default=100_000)
    p.add_argument("--num_queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--train_size", type=int, default=50_000)
    p.add_argument("--num_shards", type=int, default=10)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about 3 sqrt(P))")
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: default)")
    p.add_argument("--skip_ip_to_l2", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    nlist = args.nlist or int(2 ** round(np.log2(3 * np.sqrt(args.num_passages))))
    t = time.perf_counter()
    x, q = make_data(args.num_passages, args.num_queries, args.dim, args.seed)
    norms = np.linalg.norm(x, axis=1)
    print(f"{len(x)} passages x {args.dim}, {len(q)} queries, {args.num_shards} shards, "
          f"generated in {time.perf_counter() - t:.1f}s; passage norms min/median/max "
          f"{norms.min():.2f}/{np.median(norms):.2f}/{norms.max():.2f}; "
          f"FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    shards = np.array_split(x, args.num_shards)
    pq = 48 if args.dim % 48 == 0 else 16
    configs = [  # (label, spec, build kwargs, [search params ...])
        ("Flat", "Flat", {}, [{}]),
        ("HNSW32 (IP)", "HNSW32", {}, [{"efSearch": e} for e in (16, 64, 256)]),
        ("HNSW32 (IP->L2)", "HNSW32", {"ip_to_l2": True}, [{"efSearch": e} for e in (16, 64, 256)]),
        (f"IVF{nlist},PQ{pq}", f"IVF{nlist},PQ{pq}", {}, [{"nprobe": n} for n in (1, 8, 32, 128)]),
        (f"IVF{nlist},SQ8", f"IVF{nlist},SQ8", {}, [{"nprobe": n} for n in (8, 32, 128)]),
    ]
    if args.skip_ip_to_l2:
        configs = [c for c in configs if not c[2].get("ip_to_l2")]
    header = (f"{'index':<22}{'params':<14}{'build s':>9}{'size MB':>10}{'ms/query':>10}"
              f"{'recall@10':>11}{'R10@100':>9}")
    lines, ref = [header, "-" * len(header)], None
    for label, spec, kw, sweep in configs:
        t = time.perf_counter()
        idx = fi.build_index(lambda: iter(shards), spec, train_size=args.train_size,
                             seed=args.seed, progress=False, **kw)
        build = time.perf_counter() - t
        size = faiss.serialize_index(idx.index).nbytes
        for params in sweep:
            idx.set_params(**params)
            idx.search(q[:50], 10)  # warm-up
            t = time.perf_counter()
            rows, _ = idx.search(q, 10, batch_size=len(q))
            per_q = (time.perf_counter() - t) / len(q)
            if ref is None:
                ref = rows
            rows100, _ = idx.search(q, 100, batch_size=len(q))
            ptxt = ",".join(f"{k}={v}" for k, v in params.items()) or "-"
            lines.append(f"{label:<22}{ptxt:<14}{build:>9.1f}{size / 2**20:>10.1f}"
                         f"{per_q * 1e3:>10.3f}{recall_at(rows, ref):>11.3f}"
                         f"{recall_at(rows100, ref, 10, 100):>9.3f}")
            print(lines[-1], flush=True)
        del idx
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
