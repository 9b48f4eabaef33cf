"""FAISS index trade-offs on retriever embeddings: build time, size, speed, recall vs Flat.

    python benchmarks/faiss_recall.py [--source=minikilt] [--num_passages=100000]
        [--num_queries=1000] [--work_dir=runs/faiss_recall] [--model_dir=RUN]
        [--train_steps=300] [--num_shards=10] [--threads=N] [--skip_ip_to_l2]
    python benchmarks/faiss_recall.py --source=synthetic [--dim=384] [--seed=0]

Two sources of embeddings (``--source``, default ``minikilt``):

``minikilt`` (the default; what the acceptance "100k generated passages" means): a
trained model of this project encodes a generated mini-KILT.

1. Corpus: ``minikilt.generate(<work_dir>/minikilt-s<scale>, scale, seed=0)``, chunked
   into 100-word passages as ``evaluate.py`` / training do
   (``PassageTable.from_pages(kilt.iter_knowledge_source(...))``, the run's
   ``train.chunk_mode``), the first ``--num_passages`` passages kept. The scale is found
   from a scale-1 mini-KILT (1,800 pages, 3,261 passages; everything grows linearly):
   scale = num_passages / passages(scale 1) x 1.02, raised if it falls short (100k
   passages: scale 31.28, 56,303 pages).
2. Model: ``--model_dir`` of a trained run (``config.gin``, ``final_params.safetensors``,
   ``tokenizer/``; loaded with ``run_dir.parse_run_config`` / ``load_run``), else
   ``<work_dir>/taco_tiny`` trained once (reused afterwards) with
   ``python -m multiret_jax.train --gin_file=taco_tiny.gin`` cut to ``--train_steps``
   BM25-negative steps and ``--ance_episodes`` ANCE episodes (defaults 300 and 0: under
   2 minutes on 2 cores; validation at the end only; log
   ``<work_dir>/taco_tiny.train.log``; run from ``work_dir``, not the repository root,
   see ``train_tiny``). It trains on its own scale-1 mini-KILT (as the README's tiny run
   does); the benchmark corpus is the larger generated one (same generator and seed,
   more entities).
3. Passages encoded with ``index.encode.encode_corpus`` (``passage_encoder`` of the run,
   its passage length and tokenizer) into verified shards of
   ``ceil(num_passages / --num_shards)`` rows in ``<work_dir>/emb/<run>-p<N>-s<shards>``:
   a rerun reuses them (only missing or invalid shards are encoded; shards of another
   model / table are replaced). The tiny T5 (64-d, unit-norm embeddings, 64-token
   passages) encodes about 3,000 passages/s on 2 idle cores (100k in about 30 s). A first
   run at the defaults takes under 3 minutes on 2 idle cores (training 80 s, mini-KILT
   15 s, encoding 30 s, indexes 25 s), a rerun under 40 s.
4. Queries: the generated mini-KILT's dev records of every task (the run's
   ``train.val_tasks`` if set), each formatted and encoded exactly as validation does
   (``encoding.encode_queries_of`` with the run's marker / prefix, query length and
   tower), taken round-robin over the tasks from a seeded shuffle of each, at most
   ``--num_queries``.

``synthetic``: seeded clustered embeddings (``--dim``, ``--seed``), no model:

* a spectrum: per-dimension scales decaying as (j + 1) ** -0.5 (anisotropic, like trained
  embeddings whose variance sits in a few directions), plus a shared mean vector (the
  common component real dense-retriever embeddings have);
* ``num_passages // 100`` Gaussian cluster centres (topics) drawn with that spectrum;
  each passage = centre + 0.7 x spectrum-scaled noise, then multiplied by a per-passage
  log-normal norm factor exp(N(0, 0.3^2)), so inner product, cosine and L2 rank differently;
* queries: a random passage's direction + noise (0.6 x its scale), unit-normalised and
  multiplied by their own log-normal factor (query norm does not change a query's
  ranking, passage norm does);
* the corpus is handed to ``build_index`` as ``--num_shards`` in-memory shards.

Indexes, each built with ``faiss_index.build_index`` from the shards (minikilt:
``iter_shards`` of the embedding directory): Flat (exact; the reference), HNSW32 with
FAISS's inner-product metric and with DPR's IP->L2 transform (efSearch sweep), IVF-PQ
("IVF{nlist},PQ{m}", m bytes/vector, nprobe sweep; ``--pq``, default 48 for synthetic
384-d, dim/4 and dim/2 for the model's embeddings, e.g. PQ16 and PQ32 at 64-d) and
IVF-SQ8 (1 byte/dim). nlist = 1024 for 100k passages (about sqrt(P) * 3, rounded to a
power of two). Columns: build time (training + adding), serialised index size, search
time per query (all queries in one batch, FAISS's OpenMP threads, k=10), recall@10 = the
fraction of Flat's top-10 that the index's top-10 contains, and R10@100 = the fraction of
Flat's top-10 within the index's top-100 (what a re-ranking stage over the top-100 could
recover; PQ's quantisation error shows there).

Exactness check (both sources): Flat's top-10 is compared with ``index.mine.exact_search``
(brute-force inner product in NumPy) on the same embeddings: ranks where the rows differ
must be score ties (the two rows' exact inner products within 1e-5 x max(1, |score|);
relative for large scores: synthetic scores reach ~100, where BLAS and FAISS round
differently by ~6e-5), and the scores must agree within the same tolerance. The
generated corpus has exact duplicate embeddings (about 0.7% of 100k passages are in
groups of identical vectors: repeated or identically truncated passages), so a few
queries' top-10 differ by tied duplicates; recall@10 counts such a swap as a miss.
Then a timing breakdown.
"""

import argparse
import itertools
import math
import os
import subprocess
import sys
import time

import faiss
import numpy as np

from multiret_jax.index import faiss_index as fi
from multiret_jax.index.mine import exact_search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIE_TOL = 1e-5


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


class Timer:
    """Named stage durations, in order."""

    def __init__(self):
        self.stages = []

    def stage(self, name, seconds):
        self.stages.append((name, seconds))

    def run(self, name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.stage(name, time.perf_counter() - t)
        return out


# ------------------------------------------------------------------- synthetic source
def synthetic_source(args, timer):
    """(shards callable, all embeddings [P, D], queries [Q, D], description)."""
    x, q = timer.run("generate synthetic embeddings", make_data, args.num_passages,
                     args.num_queries, args.dim, args.seed)
    shards = np.array_split(x, args.num_shards)
    desc = (f"synthetic: {len(x)} passages x {args.dim}, {len(q)} queries, "
            f"{args.num_shards} shards (seed {args.seed})")
    return (lambda: iter(shards)), x, q, desc


# -------------------------------------------------------------------- mini-KILT source
def train_tiny(model_dir, args, timer):
    """``<model_dir>`` trained with taco_tiny.gin, cut short (reused when finished)."""
    from multiret_jax.run_dir import PARAMS_FILE
    if os.path.isfile(os.path.join(model_dir, PARAMS_FILE)):
        print(f"model: reusing {model_dir} (delete it to retrain)", flush=True)
        return
    steps = args.train_steps
    cmd = [sys.executable, "-m", "multiret_jax.train", "--gin_file=taco_tiny.gin",
           f"--model_dir={model_dir}", f"--gin_param=TRAIN_STEPS={steps}",
           f"--gin_param=ANCE_EPISODES={args.ance_episodes}",
           f"--gin_param=EVAL_EVERY={steps}", f"--gin_param=CHECKPOINT_EVERY={max(50, steps // 2)}",
           "--gin_param=train.compare_bm25=False"]
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(os.path.dirname(os.path.abspath(model_dir)),
                            os.path.basename(os.path.normpath(model_dir)) + ".train.log")
    print(f"model: training ({' '.join(cmd[1:])}); log {log_path}", flush=True)
    t = time.perf_counter()
    with open(log_path, "w") as log:
        # Not from the repository root: a ``runs/`` directory there (this script's default
        # work_dir) is importable as a namespace package, and gin then resolves
        # ``include 'runs/train.gin'`` inside it and fails.
        rc = subprocess.call(cmd, cwd=args.work_dir, stdout=log, stderr=subprocess.STDOUT)
    timer.stage(f"train tiny model ({steps} steps, {args.ance_episodes} ANCE episodes)",
                time.perf_counter() - t)
    if rc:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"training failed (exit {rc}); end of {log_path}:\n{tail}")


def generated_table(args, timer, chunk_mode):
    """The first ``num_passages`` passages of a mini-KILT scaled to hold them, and its dir."""
    from multiret_jax.data import kilt, minikilt
    from multiret_jax.data.passages import PassageTable, iter_passages

    def first_passages(directory, n):
        pages = kilt.iter_knowledge_source(os.path.join(directory, minikilt.KNOWLEDGE_SOURCE))
        passages = iter_passages(pages, mode=chunk_mode)
        return PassageTable.from_passages(itertools.islice(passages, n))

    t = time.perf_counter()
    scale, probe = args.scale, ""
    if not scale:
        probe_dir = os.path.join(args.work_dir, "minikilt-s1")
        minikilt.generate(probe_dir, scale=1.0, seed=0)
        per_scale = len(first_passages(probe_dir, None))
        probe = f"scale-1 probe: {per_scale} passages; "
        scale = math.ceil(args.num_passages / per_scale * 1.02 * 100) / 100
    for _ in range(4):
        data_dir = os.path.join(args.work_dir, f"minikilt-s{scale:g}")
        bench = minikilt.generate(data_dir, scale=scale, seed=0)
        table = first_passages(data_dir, args.num_passages)
        if len(table) >= args.num_passages or args.scale:
            break
        print(f"mini-KILT scale {scale:g}: {len(table)} passages < {args.num_passages}; "
              "trying a larger scale", flush=True)
        scale = math.ceil(scale * args.num_passages / len(table) * 1.02 * 100) / 100
    timer.stage(f"generate + chunk mini-KILT ({probe}scale {scale:g}: {bench.counts['pages']} "
                f"pages, first {len(table)} 100-word passages, {chunk_mode} mode)",
                time.perf_counter() - t)
    if len(table) < args.num_passages:
        print(f"note: scale {scale:g} gives {len(table)} passages (< {args.num_passages})")
    return table, data_dir, scale


def dev_queries(run, data_dir, num_queries, seed, batch_size, timer):
    """Encoded dev queries of the generated tasks (round-robin over tasks), [Q, D]."""
    from multiret_jax.data import kilt
    from multiret_jax.data.tasks import benchmark_tasks
    from multiret_jax.encoding import encode_queries_of
    from multiret_jax.run_dir import train_setting
    tasks = benchmark_tasks(data_dir, "dev", train_setting("val_tasks") or None)
    rng = np.random.default_rng(seed)
    texts = {}
    for task in tasks:
        recs = [r.input for r in kilt.read_task_file(os.path.join(data_dir, task.filename("dev")))
                if r.input]
        texts[task.name] = [recs[i] for i in rng.permutation(len(recs))]
    picked = {t.name: 0 for t in tasks}
    n, depth = 0, max(len(v) for v in texts.values())
    for i in range(depth):
        for t in tasks:
            if n < num_queries and i < len(texts[t.name]):
                picked[t.name] += 1
                n += 1
    t0 = time.perf_counter()
    q = np.concatenate([
        encode_queries_of(run.model, run.params, run.tokenizer, t, texts[t.name][:picked[t.name]],
                          run.marker, run.query_len, batch_size, progress=False)
        for t in tasks if picked[t.name]])
    counts = ", ".join(f"{k} {v}" for k, v in picked.items() if v)
    timer.stage(f"encode {len(q)} dev queries (marker {run.marker!r})", time.perf_counter() - t0)
    return q, counts


def minikilt_source(args, timer):
    """(shards callable, all embeddings [P, D], queries [Q, D], description)."""
    from multiret_jax.index.encode import encode_corpus, passage_encoder
    from multiret_jax.index.shards import iter_shards, load_embeddings
    from multiret_jax.run_dir import load_run, parse_run_config, train_setting

    os.makedirs(args.work_dir, exist_ok=True)
    model_dir = args.model_dir or os.path.join(args.work_dir, "taco_tiny")
    if not args.model_dir:
        train_tiny(model_dir, args, timer)
    t = time.perf_counter()
    parse_run_config(model_dir)
    run = load_run(model_dir)
    chunk_mode = train_setting("chunk_mode")
    timer.stage("load run", time.perf_counter() - t)

    table, data_dir, scale = generated_table(args, timer, chunk_mode)
    shard_size = -(-len(table) // args.num_shards)
    emb_dir = os.path.join(args.work_dir, "emb", f"{os.path.basename(os.path.normpath(model_dir))}"
                           f"-p{len(table)}-s{args.num_shards}")
    batch = args.encode_batch or run.batch_size
    t = time.perf_counter()
    res = encode_corpus(passage_encoder(run.model, run.params), run.tokenizer, table, emb_dir,
                        fingerprint=run.fingerprint, passage_len=run.passage_len,
                        shard_size=shard_size, batch_size=batch, overwrite=True,
                        progress=args.progress)
    enc_s = time.perf_counter() - t
    rows = sum(min(shard_size, len(table) - k * shard_size) for k in res["encoded"])
    rate = f", {rows / enc_s:.0f} passages/s incl. compile" if rows else ""
    timer.stage(f"encode passages ({len(res['encoded'])} shards / {rows} passages encoded, "
                f"{len(res['reused'])} reused; batch {batch}, {run.passage_len} tokens{rate})",
                enc_s)
    q, counts = dev_queries(run, data_dir, args.num_queries, args.seed, batch, timer)
    x = timer.run("load embeddings", load_embeddings, emb_dir, table, verify=False)
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1)
    desc = (f"mini-KILT: {len(table)} passages (scale {scale:g}, {data_dir}) x {x.shape[1]} "
            f"encoded by {model_dir} (passage_len {run.passage_len}) in {args.num_shards} "
            f"shards at {emb_dir};\n  {len(q)} dev queries ({counts})")
    if norms.std() < 1e-3:
        desc += f"; passage norms all {norms.mean():.3f} (build_biencoder.normalize)"
    return (lambda: iter_shards(emb_dir, table, verify=False)), x, q, desc


# ------------------------------------------------------------------------------- main
def exact_check(x, q, rows, scores):
    """A line comparing Flat's (rows, scores) [Q, 10] with ``exact_search``."""
    er, es = exact_search(q, x, rows.shape[1])
    flat_exact = np.einsum("qd,qkd->qk", q.astype(np.float64), x[rows].astype(np.float64))
    tol = TIE_TOL * np.maximum(1.0, np.abs(es))
    differ = rows != er
    ties = np.abs(flat_exact - es) <= tol
    score_ok = np.abs(scores - es) <= tol
    ok = bool(np.all(ties[differ]) and np.all(score_ok))
    return (f"Flat vs exact_search (NumPy brute-force inner product), top-{rows.shape[1]} of "
            f"{len(q)} queries: {'EQUAL' if ok else 'DIFFERENT'} - rows identical in "
            f"{int(np.sum(~differ.any(1)))}/{len(q)} queries; {int(differ.sum())} differing "
            f"positions, {int(np.sum(ties[differ]))} of them score ties within "
            f"{TIE_TOL:g} x max(1, |s|); max |score diff| {np.max(np.abs(scores - es)):.2e}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", choices=("minikilt", "synthetic"), default="minikilt")
    p.add_argument("--num_passages", type=int, default=100_000)
    p.add_argument("--num_queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384, help="synthetic only")
    p.add_argument("--train_size", type=int, default=50_000)
    p.add_argument("--num_shards", type=int, default=10)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: about 3 sqrt(P))")
    p.add_argument("--pq", type=str, default="",
                   help="comma-separated PQ sub-quantiser counts (default: synthetic 48, "
                   "minikilt dim/4,dim/2)")
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: default)")
    p.add_argument("--skip_ip_to_l2", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="synthetic data / query sample / IVF")
    p.add_argument("--work_dir", default=os.path.join(REPO, "runs", "faiss_recall"),
                   help="minikilt: generated data, tiny model, embedding shards (reused)")
    p.add_argument("--model_dir", default=None, help="minikilt: a trained run (default: "
                   "<work_dir>/taco_tiny, trained if missing)")
    p.add_argument("--train_steps", type=int, default=300, help="minikilt: tiny model steps")
    p.add_argument("--ance_episodes", type=int, default=0, help="minikilt: tiny model ANCE")
    p.add_argument("--scale", type=float, default=0.0,
                   help="minikilt: generator scale (0: found from --num_passages)")
    p.add_argument("--encode_batch", type=int, default=256,
                   help="minikilt: passages / queries per encoder call (0: the run's)")
    p.add_argument("--progress", action="store_true", help="minikilt: tqdm encoding bar")
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    t_all = time.perf_counter()
    timer = Timer()
    source = minikilt_source if args.source == "minikilt" else synthetic_source
    shards, x, q, desc = source(args, timer)
    dim, n = x.shape[1], len(x)
    nlist = args.nlist or int(2 ** round(np.log2(3 * np.sqrt(n))))
    norms = np.linalg.norm(x, axis=1)
    print(f"{desc}\npassage norms min/median/max {norms.min():.2f}/{np.median(norms):.2f}/"
          f"{norms.max():.2f}; FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads",
          flush=True)
    if args.pq:
        pqs = [int(m) for m in args.pq.split(",")]
    elif args.source == "synthetic":
        pqs = [48 if dim % 48 == 0 else 16]
    else:
        pqs = [m for m in (dim // 4, dim // 2) if m > 0 and dim % m == 0]
    configs = [  # (label, spec, build kwargs, [search params ...])
        ("Flat", "Flat", {}, [{}]),
        ("HNSW32 (IP)", "HNSW32", {}, [{"efSearch": e} for e in (16, 64, 256)]),
        ("HNSW32 (IP->L2)", "HNSW32", {"ip_to_l2": True}, [{"efSearch": e} for e in (16, 64, 256)]),
        *[(f"IVF{nlist},PQ{m}", f"IVF{nlist},PQ{m}", {}, [{"nprobe": v} for v in (1, 8, 32, 128)])
          for m in pqs],
        (f"IVF{nlist},SQ8", f"IVF{nlist},SQ8", {}, [{"nprobe": v} for v in (8, 32, 128)]),
    ]
    if args.skip_ip_to_l2:
        configs = [c for c in configs if not c[2].get("ip_to_l2")]
    header = (f"{'index':<22}{'params':<14}{'build s':>9}{'size MB':>10}{'ms/query':>10}"
              f"{'recall@10':>11}{'R10@100':>9}")
    lines, ref, ref_scores = [header, "-" * len(header)], None, None
    t_idx = time.perf_counter()
    for label, spec, kw, sweep in configs:
        t = time.perf_counter()
        idx = fi.build_index(shards, spec, train_size=args.train_size, seed=args.seed,
                             progress=False, **kw)
        build = time.perf_counter() - t
        size = faiss.serialize_index(idx.index).nbytes
        for params in sweep:
            idx.set_params(**params)
            idx.search(q[:50], 10)  # warm-up
            t = time.perf_counter()
            rows, scores = idx.search(q, 10, batch_size=len(q))
            per_q = (time.perf_counter() - t) / len(q)
            if ref is None:
                ref, ref_scores = rows, scores
            rows100, _ = idx.search(q, 100, batch_size=len(q))
            ptxt = ",".join(f"{k}={v}" for k, v in params.items()) or "-"
            lines.append(f"{label:<22}{ptxt:<14}{build:>9.1f}{size / 2**20:>10.1f}"
                         f"{per_q * 1e3:>10.3f}{recall_at(rows, ref):>11.3f}"
                         f"{recall_at(rows100, ref, 10, 100):>9.3f}")
            print(lines[-1], flush=True)
        del idx
    timer.stage("build + search all indexes", time.perf_counter() - t_idx)
    check = timer.run("exact_search check", exact_check, x, q, ref, ref_scores)
    print("\n" + "\n".join(lines) + "\n\n" + check)
    timer.stage("total", time.perf_counter() - t_all)
    print("\ntiming:")
    for name, s in timer.stages:
        print(f"  {s:8.1f}s  {name}")


if __name__ == "__main__":
    main()
