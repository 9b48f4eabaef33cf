"""Peak memory of BM25 once (``data/bm25_cache.py``) at 100k and 1M passages, and its
extrapolation to KILT's 36M.

    python benchmarks/bm25_memory.py [--sizes=100000,1000000] [--queries=2000]
        [--work_dir=runs/bm25_memory]

For each size, the first N passages of a generated mini-KILT (``faiss_recall.generated_table``,
generated beforehand by a process of its own, 100-word passages) go through two fresh
processes:

1. ``build``: ``BM25Cache(...).retriever`` tokenizes, indexes and saves the index, then
   ``rankings`` searches ``--queries`` queries (the first 12 words of evenly spaced
   passages) to depth 100, streamed in blocks of 8,192 queries. The process's RSS before
   (Python and the passage table, which holds the texts), its peak while indexing, and its
   peak while searching (the peak is reset in between through ``/proc/self/clear_refs``).
2. ``reuse``: what a resumed run or a later run does: a new ``BM25Cache`` loads the saved
   index memory-mapped and searches other queries (the first results are reused: no
   search), peak RSS again.

Then the index's bytes on disk and the 36M extrapolation: the indexing increment and the
disk size grow with the postings, linearly in the passages for the same kind of text, so
36M is read off the line through the two sizes (a fixed part plus bytes per passage);
the disk size is the largest size's bytes per passage x 36M.

Last line:

    bm25_memory: indexing peak increment 1M / 100k passages: X.XX; 36M extrapolated: X GiB
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from index_memory import rss_mib  # noqa: E402

from multiret_jax.training.stage_log import reset_peak_rss  # noqa: E402

MIB = 2 ** 20
KILT_PASSAGES = 36_000_000


def queries_of(table, n, offset):
    step = max(1, len(table) // n)
    return [" ".join(table.texts[i].split()[:12]) for i in range(offset, len(table), step)][:n]


def worker(args):
    from faiss_recall import Timer, generated_table

    from multiret_jax.data.bm25_cache import BM25Cache

    ns = argparse.Namespace(scale=0.0, work_dir=args.work_dir, num_passages=args.size)
    table, _, _ = generated_table(ns, Timer(), "paragraph")
    if args.stage == "prepare":
        return
    cache_dir = os.path.join(args.work_dir, f"bm25-{args.size}")
    if args.stage == "build":
        shutil.rmtree(cache_dir, ignore_errors=True)
    cache = BM25Cache(cache_dir, table, progress=False)  # imports bm25s (and with it JAX)
    out = {"size": len(table), "before": rss_mib("VmRSS")}
    reset_peak_rss()
    t = time.perf_counter()
    cache.retriever  # build + save, or load (mmap)
    out.update(index_s=time.perf_counter() - t, index_peak=rss_mib("VmHWM"),
               after_index=rss_mib("VmRSS"))
    reset_peak_rss()
    t = time.perf_counter()
    cache.rankings("q", queries_of(table, args.queries, 1 if args.stage == "reuse" else 0),
                   k=100)
    out.update(search_s=time.perf_counter() - t, search_peak=rss_mib("VmHWM"))
    index_dir = os.path.join(cache.dir, "index")
    out["disk"] = sum(os.path.getsize(os.path.join(index_dir, f)) for f in os.listdir(index_dir))
    print("BM25_MEMORY_JSON " + json.dumps(out), flush=True)


def run(args, n, stage):
    cmd = [sys.executable, os.path.abspath(__file__), f"--stage={stage}", f"--size={n}",
           f"--work_dir={args.work_dir}", f"--queries={args.queries}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    line = [x for x in res.stdout.splitlines() if x.startswith("BM25_MEMORY_JSON ")]
    if res.returncode or (stage != "prepare" and not line):
        sys.exit(f"bm25_memory: {stage} at {n} passages failed:\n" + res.stderr[-4000:])
    return json.loads(line[0].split(" ", 1)[1]) if line else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--work_dir", default="runs/bm25_memory")
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        return worker(args)
    print("| passages | RSS before | indexing: s, peak +MiB | search: s, peak +MiB | "
          "reuse: load s, peak +MiB | reuse: search s, peak +MiB | index on disk MiB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        run(args, n, "prepare")
        b, r = run(args, n, "build"), run(args, n, "reuse")
        rows.append(b)
        print(f"| {b['size']:,} | {b['before']:.0f} | {b['index_s']:.1f}, "
              f"{b['index_peak'] - b['before']:.0f} | {b['search_s']:.1f}, "
              f"{b['search_peak'] - b['after_index']:.0f} | {r['index_s']:.1f}, "
              f"{r['index_peak'] - r['before']:.0f} | {r['search_s']:.1f}, "
              f"{r['search_peak'] - r['after_index']:.0f} | {b['disk'] / MIB:.0f} |", flush=True)
    small, big = rows[0], rows[-1]
    inc = lambda r: max(r["index_peak"] - r["before"], 1.0)
    # a line through the two sizes: a fixed part plus a part per passage
    slope = (inc(big) - inc(small)) / max(big["size"] - small["size"], 1)
    at_36m = (inc(big) + slope * (KILT_PASSAGES - big["size"])) / 1024
    disk = big["disk"] * KILT_PASSAGES / big["size"] / 2 ** 30
    print(f"\nindexing peak increment: {inc(small):.0f} MiB at {small['size']:,}, "
          f"{inc(big):.0f} MiB at {big['size']:,}: {slope * MIB:.0f} B per passage beyond a "
          f"fixed part; index on disk {big['disk'] / big['size']:.0f} B/passage")
    print(f"36M passages (the line through both sizes): indexing peak +{at_36m:.0f} GiB over "
          f"the passage table, index on disk {disk:.0f} GiB; searching {args.queries:,} "
          f"queries in blocks of 8,192 adds "
          f"{max(big['search_peak'] - big['after_index'], 0):.0f} MiB at {big['size']:,}")
    print(f"bm25_memory: indexing peak increment {big['size']:,} / {small['size']:,} passages: "
          f"{inc(big) / inc(small):.2f}; 36M extrapolated: {at_36m:.0f} GiB")

if __name__ == "__main__":
    main()
