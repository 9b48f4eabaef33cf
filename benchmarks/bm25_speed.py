"""BM25 throughput: the project's BM25Retriever vs raw bm25s, and passage chunking speed.

    python benchmarks/bm25_speed.py [--data_dir=../shared/data/realmini] [--repeats=3]

Both sides index the same passages (title + text, same stemmer and stopwords, same k1/b)
and retrieve top-100 for the same queries, query tokenization included. The project's
side also maps passages to de-duplicated page rankings (what KILT page metrics need).
Prints queries/s for each and their ratio (target >= 0.9), then passages/s for chunking.
"""

import argparse
import glob
import os
import sys
import time

import bm25s
import Stemmer

from multiret_jax.data import kilt, minikilt
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.passages import PassageTable, iter_passages


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=os.path.join(here, "..", "..", "shared", "data", "realmini"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=100)
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.data_dir, "knowledge_source.jsonl")):
        args.data_dir = os.path.join("/tmp", "minikilt_bench")
        minikilt.generate(args.data_dir, scale=5.0, seed=0)
    ks_path = os.path.join(args.data_dir, "knowledge_source.jsonl")
    pages = list(kilt.iter_knowledge_source(ks_path))
    table = PassageTable.from_pages(pages, mode="paragraph")
    queries = [r.input for f in sorted(glob.glob(os.path.join(args.data_dir, "*-kilt.jsonl")))
               for r in kilt.iter_records(f, require_input=False) if r.input]
    corpus = table.contents(with_title=True)
    print(f"{len(table)} passages from {ks_path}; {len(queries)} queries; k={args.k}")

    ours = BM25Retriever().index(table, show_progress=False)
    stem = Stemmer.Stemmer("english")
    raw = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    raw.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stem, show_progress=False),
              show_progress=False)

    def run_raw():
        raw.retrieve(bm25s.tokenize(queries, stopwords="en", stemmer=stem, show_progress=False),
                     k=args.k, show_progress=False)

    def run_ours():
        rows, _ = ours.search(queries, k=args.k, show_progress=False)
        ours.page_ranking(rows)

    run_raw(), run_ours()  # warm-up (numba compilation, caches)
    t_raw, t_ours = best_of(run_raw, args.repeats), best_of(run_ours, args.repeats)
    print(f"raw bm25s:        {len(queries) / t_raw:10.1f} queries/s")
    print(f"multiret BM25:    {len(queries) / t_ours:10.1f} queries/s (incl. page ranking)")
    print(f"throughput ratio (ours / raw bm25s): {t_raw / t_ours:.3f}  (target >= 0.9)")

    t = best_of(lambda: sum(1 for _ in iter_passages(pages, mode="page")), args.repeats)
    print(f"chunking {len(pages)} pages of {ks_path}: {len(table) / t:,.0f} passages/s")
    hp = os.path.join(here, "..", "..", "shared", "data", "kilt_dev", "hotpotqa-dev-kilt.jsonl")
    if os.path.exists(hp):
        t = best_of(lambda: sum(1 for _ in kilt.iter_records(hp)), args.repeats)
        print(f"reading+validating HotpotQA dev (5,600 records): {5600 / t:,.0f} records/s")


if __name__ == "__main__":
    sys.exit(main())
