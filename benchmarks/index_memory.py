"""Peak memory of corpus encoding at 100k vs 1M passages, and index sizes per type.

    python benchmarks/index_memory.py [--sizes=100000,1000000] [--work_dir=runs/index_memory]
        [--passage_len=64] [--shard_size=10000]

1. Encoding. For each size, the first N passages of a generated mini-KILT
   (``faiss_recall.generated_table``: scaled to hold them, 100-word passages) are written
   as a memory-mapped passage store (``data/passage_store.py``, what the trainer and the
   CLIs read) by a process of its own. A fresh process opens the store, builds the tiny
   T5 (ST5-EncDec, random weights, 64-d) and a word-level tokenizer, and runs
   ``index.encode.encode_corpus`` into verified shards of ``--shard_size`` rows.
   It reports the process's peak RSS (``VmHWM``), its RSS before encoding (Python, JAX,
   the model, the mapped table) and the encoding's own increment (peak - before).
   Encoding streams (one shard of texts and tokens, one batch on the device, one shard of
   embeddings at a time) and the table is read from the map, so the peak should not grow
   with N. Target: peak RSS ratio 1M / 100k <= 1.1.
2. Index sizes. From the largest size's shards, ``faiss_index.build_index`` builds Flat,
   HNSW32, IVF-PQ (d/8 bytes per vector) and IVF-SQ8, saves each, and prints its bytes on
   disk (``index.faiss`` + ``ids.npy``) and per vector.

Last line:

    index_memory: peak RSS 100000 / 10000 passages: X.XX (target <= 1.1)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MIB = 2 ** 20


def rss_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args):
    from faiss_recall import Timer, generated_table

    from multiret_jax.data.passage_store import open_store, write_store
    from multiret_jax.data.tokenization import Tokenization
    from multiret_jax.index.encode import encode_corpus, params_fingerprint, passage_encoder
    from multiret_jax.models.encoders import build_biencoder

    store = os.path.join(args.work_dir, f"store-{args.size}")
    if args.prepare:
        if not os.path.isdir(store):
            ns = argparse.Namespace(scale=0.0, work_dir=args.work_dir, num_passages=args.size)
            table, _, _ = generated_table(ns, Timer(), "paragraph")
            write_store((table[i] for i in range(len(table))), store)
        return
    table = open_store(store)
    model, params, _ = build_biencoder("t5", "t5_tiny", pooling="encdec", shared=True)
    tokenizer = Tokenization.train_wordlevel(
        [f"{t} {x}" for t, x in zip(table.titles[:2000], table.texts[:2000])], 1000)
    out_dir = os.path.join(args.work_dir, f"emb-{args.size}")
    shutil.rmtree(out_dir, ignore_errors=True)  # encode every shard (no resume)
    shutil.rmtree(out_dir + "-index", ignore_errors=True)
    before = rss_mib("VmRSS")
    t = time.perf_counter()
    encode_corpus(passage_encoder(model, params), tokenizer, table, out_dir,
                  fingerprint=params_fingerprint(params), shard_size=args.shard_size,
                  passage_len=args.passage_len, overwrite=True, progress=False)
    seconds = time.perf_counter() - t
    print("INDEX_MEMORY_JSON " + json.dumps(
        {"size": len(table), "peak": rss_mib("VmHWM"), "before": before, "seconds": seconds,
         "out_dir": out_dir}), flush=True)


def index_sizes(emb_dir):
    import numpy as np

    from multiret_jax.index.faiss_index import build_index
    from multiret_jax.index.shards import iter_shards

    first = next(iter_shards(emb_dir))
    dim = np.asarray(first[1]).shape[1]
    n = sum(len(e) for _, e in iter_shards(emb_dir))
    nlist = max(16, int(4 * np.sqrt(n)))
    print(f"\nindex sizes for {n} vectors x {dim} (float32 vectors: {n * dim * 4 / MIB:.1f} MiB)")
    print("| index | build s | bytes on disk | bytes/vector |")
    print("|---|---|---|---|")
    for spec in ("Flat", "HNSW32", f"IVF{nlist},PQ{max(1, dim // 8)}", f"IVF{nlist},SQ8"):
        t = time.perf_counter()
        index = build_index(lambda: iter_shards(emb_dir), spec, progress=False)
        built = time.perf_counter() - t
        out = os.path.join(emb_dir + "-index", spec.replace(",", "_"))
        index.save(out)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"| {spec} | {built:.1f} | {size:,} | {size / n:.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--work_dir", default="runs/index_memory")
    p.add_argument("--passage_len", type=int, default=64)
    p.add_argument("--shard_size", type=int, default=10_000)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--size={n}",
               f"--work_dir={args.work_dir}", f"--passage_len={args.passage_len}",
               f"--shard_size={args.shard_size}"]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        # the mini-KILT is generated in a process of its own: its peak is not encoding's
        prep = subprocess.run(cmd + ["--prepare"], capture_output=True, text=True, env=env)
        res = prep if prep.returncode else subprocess.run(cmd, capture_output=True, text=True,
                                                          env=env)
        line = [x for x in res.stdout.splitlines() if x.startswith("INDEX_MEMORY_JSON ")]
        if res.returncode or not line:
            sys.exit(f"index_memory: encoding {n} passages failed:\n" + res.stderr[-4000:])
        r = json.loads(line[0].split(" ", 1)[1])
        rows.append(r)
        print(f"{r['size']:>8} passages: encoded in {r['seconds']:.1f} s; peak RSS "
              f"{r['peak']:.0f} MiB; before encoding {r['before']:.0f} MiB (Python, JAX, model, "
              f"passage table); encoding's own increment {r['peak'] - r['before']:.0f} MiB",
              flush=True)
    small, big = rows[0], rows[-1]
    index_sizes(big["out_dir"])
    inc = lambda r: max(r["peak"] - r["before"], 1.0)
    print(f"\nencoding's own increment {big['size']} / {small['size']}: "
          f"{inc(big) / inc(small):.2f}")
    print(f"index_memory: peak RSS {big['size']:,} / {small['size']:,} passages: "
          f"{big['peak'] / small['peak']:.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
