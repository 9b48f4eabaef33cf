"""Cost of TACO's update vs the naive multitask update, at T5-base scale.

    python benchmarks/multitask_overhead.py [--layers=3] [--tasks=8] [--repeats=2]
        [--sort_layers=1] [--skip_train_step]

1. Update overhead. A params tree shaped like T5-base (shared embedding [32128, 768]; 12
   encoder layers of q/k/v/o [768, 768], wi [768, 3072], wo [3072, 768], 2 layer norms;
   12 decoder layers with self- and cross-attention and 3 layer norms; final norms:
   ~223M parameters), random values, and K stacked task gradients. Times the jitted
   ``update`` (warm-up excluded, ``block_until_ready``, best of ``--repeats``) of
   ``naive`` and ``taco`` with ``median="exact"`` by 15 candidates per round ("exact/15",
   at most 8 reads of the K x N sensitivities, the GPU/TPU default) and by bisection
   ("exact/1", up to 32 reads of one count, the CPU default), ``median="approx"`` (2**18
   sample) and ``median="sort"`` (``jnp.median`` of the concatenation; slow, so timed on
   ``--sort_layers`` layers only). It prints the rounds each exact median took on the
   sensitivities |g_k * theta|, and, as the floor of any TACO update, a bare elementwise
   EMA pass (read g, theta and the EMA, write the EMA: ~3x the naive update's traffic). K x 223M x 4 bytes is
   7.1 GB of gradients plus 7.1 GB of EMA, which with the temporaries does not fit a
   24 GiB host, so the timed tree keeps ``--layers`` of the 12 layers per stack and the
   same fraction of the vocabulary (a uniform fraction of every kind of leaf); the
   printed full-size times extrapolate linearly in the parameter count (all passes are
   O(N); the sort is O(N log N), so its extrapolation is a lower bound). The taco state
   bytes are exact for the full model (``jax.eval_shape`` of ``init``, nothing
   allocated).
2. Train step. The project's tiny BERT bi-encoder (separate towers) with the NCE loss
   (in-batch + 1 hard negative), K tasks x 16 queries per step; the full step (stacked
   per-task grads via vmap, multitask update, AdamW) timed with naive vs taco.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from multiret_jax import multitask
from multiret_jax.multitask.median import select_middle

D, FF, VOCAB, LAYERS = 768, 3072, 32128, 12


def t5_base_shapes(layers=LAYERS, vocab=VOCAB):
    """Leaf shapes of a T5-base-like encoder-decoder with ``layers`` per stack."""
    attn = {n: (D, D) for n in ("q", "k", "v", "o")}
    ffn = {"wi": (D, FF), "wo": (FF, D)}
    enc = {f"layer_{i}": {"attn": dict(attn), "ffn": dict(ffn), "ln_attn": (D,), "ln_ffn": (D,)}
           for i in range(layers)}
    dec = {f"layer_{i}": {"self_attn": dict(attn), "cross_attn": dict(attn), "ffn": dict(ffn),
                          "ln_self": (D,), "ln_cross": (D,), "ln_ffn": (D,)}
           for i in range(layers)}
    return {"shared_embedding": (vocab, D),
            "encoder": dict(enc, final_ln=(D,), rel_bias=(32, 12)),
            "decoder": dict(dec, final_ln=(D,), rel_bias=(32, 12))}


def is_shape(x):
    return isinstance(x, tuple)


def count(shapes):
    return sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(shapes, is_leaf=is_shape))


def random_tree(shapes, key, lead=()):
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_shape)
    keys = jax.random.split(key, len(leaves))
    make = jax.jit(lambda k, s: 0.05 * jax.random.normal(k, s, jnp.float32), static_argnums=1)
    return treedef.unflatten([make(k, lead + s) for k, s in zip(keys, leaves)])


def nbytes(tree):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))


def time_update(tx, grads, params, repeats):
    """Best wall time of the jitted update (state donated, so the EMA updates in place)."""
    state = tx.init(params)
    update = jax.jit(tx.update, donate_argnums=(1,))
    u, state = update(grads, state, params)
    jax.block_until_ready((u, state))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        u, state = update(grads, state, params)
        jax.block_until_ready((u, state))
        best = min(best, time.perf_counter() - t)
    del u, state
    return best


def peak_rss_gb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


class EmaFloor:
    """Only TACO's elementwise EMA of |g * theta| (no median, no softmax): the floor."""

    def init(self, params):
        return jax.tree_util.tree_map(lambda p: jnp.zeros((K_TASKS,) + p.shape, jnp.float32),
                                      params)

    def update(self, grads, ema, params):
        new = jax.tree_util.tree_map(lambda e, g, p: 0.999 * e + 0.001 * jnp.abs(g * p[None]),
                                     ema, grads, params)
        return grads, new


K_TASKS = 8


def make_tx(method, k):
    if method == "naive":
        return multitask.naive()
    if method == "ema floor":
        return EmaFloor()
    median, _, j = method.partition("/")
    return multitask.taco(num_tasks=k, median=median,
                          median_thresholds=int(j) if j else None)


def median_rounds(grads, params):
    """Rounds of the exact median on the sensitivities, per candidate count."""
    sens = jax.jit(lambda g, p: jax.tree_util.tree_map(lambda a, b: jnp.abs(a * b[None]), g, p))(
        grads, params)
    leaves = jax.tree_util.tree_leaves(sens)
    out = {j: int(jax.jit(select_middle, static_argnums=(1, 2))(leaves, False, j).rounds)
           for j in (1, 15)}
    del sens, leaves
    return out


def bench_update(args):
    k = args.tasks
    full = t5_base_shapes()
    n_full = count(full)
    print(f"== update overhead: K={k}, T5-base-shaped params: {n_full / 1e6:.1f}M "
          f"(stacked grads {k * n_full * 4 / 2**30:.2f} GiB fp32)")
    sds = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), full,
                                 is_leaf=is_shape)
    for median in ("exact", "approx"):
        st = jax.eval_shape(multitask.taco(num_tasks=k, median=median).init, sds)
        print(f"taco state, full model, median={median}: {nbytes(st) / 2**30:.3f} GiB "
              f"({nbytes(st)} bytes; EMA = K x params x 4 B)")

    results = {}
    global K_TASKS
    K_TASKS = k
    for layers, methods in ((args.layers, ("naive", "ema floor", "exact/1", "exact/15",
                                           "approx")),
                            (args.sort_layers, ("naive", "sort", "exact/1"))):
        if layers <= 0:
            continue
        shapes = t5_base_shapes(layers, round(VOCAB * layers / LAYERS))
        n = count(shapes)
        frac = n / n_full
        params = random_tree(shapes, jax.random.PRNGKey(0))
        grads = random_tree(shapes, jax.random.PRNGKey(1), lead=(k,))
        print(f"-- timed tree: {layers}/{LAYERS} layers per stack, vocab "
              f"{round(VOCAB * layers / LAYERS)}: {n / 1e6:.1f}M params "
              f"({frac:.3f} of T5-base)")
        if "exact/15" in methods:
            rounds = median_rounds(grads, params)
            print("exact median rounds (reads of the K x N sensitivities): "
                  + ", ".join(f"{j} candidate(s) per round: {r}" for j, r in rounds.items()))
        base = None
        for m in methods:
            t = time_update(make_tx(m, k), grads, params, args.repeats)
            base = t if m == "naive" else base
            results[(layers, m)] = t
            print(f"{m:>14}: {t:8.3f} s  ({t / base:6.2f}x naive)  extrapolated to T5-base: {t / frac:8.2f} s  "
                  f" peak RSS so far {peak_rss_gb():.1f} GiB")
        del params, grads
    return results


def bench_train_step(args):
    from multiret_jax.models.encoders import build_biencoder
    from multiret_jax.training import losses

    k, b, lq, lp = args.tasks, 16, 32, 128
    model, params, cfg = build_biencoder("bert", "bert_tiny")
    rng = np.random.default_rng(0)

    def toks(shape):
        return jnp.asarray(rng.integers(5, cfg.vocab_size, shape).astype(np.int32))

    # K tasks x (b queries, b positives, b hard negatives), all real tokens.
    batch = {"q": toks((k, b, lq)), "p": toks((k, b, lp)), "n": toks((k, b, lp))}

    def loss_fn(prm, tb):
        q = model.encode_queries(prm, tb["q"], jnp.ones_like(tb["q"]))
        p = model.encode_passages(prm, tb["p"], jnp.ones_like(tb["p"]))
        n = model.encode_passages(prm, tb["n"], jnp.ones_like(tb["n"]))
        return losses.nce_loss(q, p, n[:, None])

    n = count(jax.tree_util.tree_map(lambda x: x.shape, params))
    print(f"== train step (project bi-encoder: BERT tiny, separate towers, {n / 1e6:.2f}M "
          f"params; K={k} tasks x {b} queries, 1 hard negative, lengths {lq}/{lp})")
    base = None
    for name, mt in (("naive", multitask.naive()),
                     ("taco exact", multitask.taco(num_tasks=k)),
                     ("taco approx", multitask.taco(num_tasks=k, median="approx"))):
        tx = optax.chain(mt, optax.adamw(1e-3))

        @jax.jit
        def step(p, s):
            _, grads = multitask.stacked_task_grads(loss_fn, p, batch)
            u, s = tx.update(grads, s, p)
            return optax.apply_updates(p, u), s

        p, s = step(params, tx.init(params))
        jax.block_until_ready(p)
        t = time.perf_counter()
        for _ in range(args.steps):
            p, s = step(p, s)
        jax.block_until_ready(p)
        dt = (time.perf_counter() - t) / args.steps
        base = dt if base is None else base
        print(f"{name:>12}: {dt * 1e3:8.2f} ms/step ({dt / base:5.2f}x naive; target <= 1.15x)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=3, help="layers per stack timed (of 12)")
    p.add_argument("--sort_layers", type=int, default=1, help="layers for the sort median; 0 skips")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed train steps")
    p.add_argument("--skip_train_step", action="store_true")
    p.add_argument("--skip_update", action="store_true", help="only the train-step part")
    args = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
    if not args.skip_update:
        bench_update(args)
    if not args.skip_train_step:
        bench_train_step(args)


if __name__ == "__main__":
    main()
