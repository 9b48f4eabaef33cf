r"""The pure multi-task train step: per-task NCE gradients -> multitask transform -> AdamW.

``make_train_step`` returns ``step(state, batch) -> (state, task_losses)``, jitted with
the train state donated.  The batch is ``StepBatch.arrays()`` (leading task axis ``K``).

Per-task gradients, two paths behind the same interface (``per_task``):

* ``"vmap"``: ``jax.vmap(jax.value_and_grad(task_loss))`` over the K stacked, equally
  padded sub-batches.  One traced loss, one fused program.
* ``"unrolled"`` (default): a Python loop over tasks, each on its own rows ``B_k`` and its own
  query length (the padding the stacked layout needs is sliced away first), so no FLOPs
  go to padding; K copies of the loss in the program (longer compile).  Sizes per task
  are constant across steps (mixing sizes and task query lengths are fixed), so it
  compiles once.  ``benchmarks/train_step.py`` measures both; see ``DEFAULT_PER_TASK``.

Data parallelism (jit + ``Mesh`` + ``NamedSharding``): with a ``mesh``, the rows axis of
every batch array is sharded on ``"data"`` and the train state is placed by
``state_shardings``: parameters replicated by default (or on ``"model"`` by the logical
axis rules), their elementwise optimizer state (Adam's moments, TACO's K x params EMA)
and the stacked task gradients split over all devices, FSDP-style.  The loss is written for the *global* batch: a task's queries are
scored against all of that task's passages on all devices (XLA inserts the all-gather),
so every device's passages are negatives for every query, as in DPR / TACO, and the
gradients equal the single-device ones.

Non-finite steps (NaN / inf loss, gradient or update) keep the previous parameters and optimizer
state and increment ``state["skipped"]``.

With ``grad_cache_chunk`` the per-task loss and gradients are computed with the gradient
cache (``gradcache.cached_value_and_grad``): same values, activation memory of one chunk.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from multiret_jax import partitioning
from multiret_jax.models.biencoder import BiEncoder
from multiret_jax.training import losses
from multiret_jax.training.gradcache import cached_value_and_grad

# Measured on 2 CPU cores with all-MiniLM-L6-v2 (benchmarks/train_step.py,
# benchmarks/per_task_path.py): with equal task shapes (K=4 x B=8, Lq 32, Lp 128) an
# unrolled naive step took 0.79x the vmap step's time (3.15 vs 4.01 s) but compiled in
# 1.6x the time (28 vs 17 s); on TACO's real mix (8 tasks, B_k 3-30, query lengths
# 32-256) the stacked layout pads 7.8x the query token slots and 2x the passage slots, a
# vmap step at global batch 120 asked for a 66 GB buffer and at 40 exceeded 24 GB of host
# memory, while the unrolled step runs. So "unrolled" is the default; "vmap" compiles
# faster and suits compile-bound tiny runs with equal shapes (runs/tiny.gin).
DEFAULT_PER_TASK = "unrolled"
PER_TASK_PATHS = ("vmap", "unrolled")
BATCHING_MODES = ("per_task", "union")

State = Dict[str, Any]


def init_train_state(params: Any, tx: optax.GradientTransformation, seed: int = 0) -> State:
    """The train state: params, optimizer state, step, dropout RNG, skipped-step count."""
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros([], jnp.int32),
            "rng": jax.random.PRNGKey(seed), "skipped": jnp.zeros([], jnp.int32)}


def state_shardings(state: State, mesh: Mesh, param_shardings: Any = None) -> Any:
    """NamedShardings for ``state``.

    Parameters follow ``param_shardings`` (replicated when None). Optimizer leaves shaped
    like a parameter (Adam's moments) or like ``[K, *param]`` (TACO's EMA, any multitask
    method's K x params state) are elementwise, so they are split over every mesh axis the
    parameter's own sharding leaves free, data axis included
    (``partitioning.elementwise_spec``): 1/devices of them per device. Everything else is
    replicated."""
    rep = NamedSharding(mesh, P())
    out = jax.tree_util.tree_map(lambda _: rep, state)
    p_leaves = jax.tree_util.tree_leaves(state["params"])
    p_sh = (jax.tree_util.tree_leaves(param_shardings) if param_shardings is not None
            else [rep] * len(p_leaves))
    by_shape = {}
    for leaf, sh in zip(p_leaves, p_sh):
        by_shape.setdefault(tuple(np.shape(leaf)), sh)
    if param_shardings is not None:
        out["params"] = param_shardings

    def place(x):
        shape = tuple(np.shape(x))
        for lead in (0, 1):
            sh = by_shape.get(shape[lead:])
            if sh is None or (lead and not shape[lead:]):
                continue
            return partitioning.elementwise_sharding(shape, mesh, sh.spec, lead)
        return rep

    out["opt_state"] = jax.tree_util.tree_map(place, state["opt_state"])
    return out


def stacked_grad_shardings(grads: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Elementwise (FSDP-style) shardings for ``[K, *param]`` stacked task gradients: the
    same split as TACO's EMA, so the multitask update runs on each device's slice."""
    return jax.tree_util.tree_map(
        lambda g, sh: partitioning.elementwise_sharding(g.shape, mesh, sh.spec, lead=1),
        grads, param_shardings)


def batch_shardings(batch: Dict[str, Any], mesh: Mesh) -> Dict[str, NamedSharding]:
    """Rows (axis 1 of ``[K, B, ...]``) on "data"; per-task vectors replicated."""
    return {k: NamedSharding(mesh, P(None, "data") if np.ndim(v) >= 2 else P())
            for k, v in batch.items()}


def put_batch(batch: Dict[str, np.ndarray], shardings: Optional[Dict[str, NamedSharding]]):
    """Places a host batch (the same global batch on every process) on the mesh."""
    if shardings is None:
        return batch
    return {k: jax.make_array_from_callback(np.shape(v), shardings[k], lambda i, v=v: v[i])
            for k, v in batch.items()}


def _split(tb: Dict[str, Any], rows: int, qlen: int) -> Dict[str, Any]:
    out = {k: v[:rows] for k, v in tb.items() if k != "task_counts"}
    out["query_ids"] = out["query_ids"][:, :qlen]
    out["query_mask_tokens"] = out["query_mask_tokens"][:, :qlen]
    return out


def make_task_loss(model: BiEncoder, temperature: float = 1.0,
                   grad_cache_chunk: Optional[int] = None) -> Callable:
    """``(params, task_batch, tower, rng) -> (loss, grads)`` for one task's sub-batch."""

    def embedding_loss(tb, q, cands):
        b, h = tb["negative_mask"].shape
        return losses.nce_loss(q, cands[:b], cands[b:].reshape(b, h, -1), tb["query_mask"],
                               tb["negative_mask"], tb["positive_rows"], tb["negative_rows"],
                               temperature=temperature)

    def passage_inputs(tb):
        b, h, lp = tb["neg_ids"].shape
        return (jnp.concatenate([tb["pos_ids"], tb["neg_ids"].reshape(b * h, lp)]),
                jnp.concatenate([tb["pos_mask"], tb["neg_mask"].reshape(b * h, lp)]))

    def loss(params, tb, tower, rng):
        rq, rp = jax.random.split(rng)
        q = model.encode_queries(params, tb["query_ids"], tb["query_mask_tokens"], tower=tower,
                                 deterministic=False, rngs={"dropout": rq})
        cands = model.encode_passages(params, *passage_inputs(tb), deterministic=False,
                                      rngs={"dropout": rp})
        return embedding_loss(tb, q, cands)

    if grad_cache_chunk is None:
        return jax.value_and_grad(loss)

    def cached(params, tb, tower, rng):
        enc_q = lambda p, x, r: model.encode_queries(p, *x, tower=tower, deterministic=False,
                                                     rngs={"dropout": r})
        enc_p = lambda p, x, r: model.encode_passages(p, *x, deterministic=False,
                                                      rngs={"dropout": r})
        return cached_value_and_grad(
            lambda q, c: embedding_loss(tb, q, c), enc_q, enc_p, params,
            (tb["query_ids"], tb["query_mask_tokens"]), passage_inputs(tb), grad_cache_chunk, rng)

    return cached


def make_union_loss(model: BiEncoder, towers: Any, temperature: float = 1.0,
                    grad_cache_chunk: Optional[int] = None) -> Callable:
    """``(params, batch, rng) -> ((loss, task_losses [K]), grads)`` for a union batch
    (``data/union.py``: one group of B rows of mixed tasks, ``row_tasks [B]``): ONE NCE
    over all B queries, each scored against every positive and hard negative of the batch
    (MT-DPR), averaged over the real queries so every example weighs the same;
    ``task_losses`` is each task's mean NLL within that loss (logging only). With several
    query towers each row goes through its task's tower (every distinct tower encodes the
    batch's queries once and each row keeps its own: T times the query-encoder work)."""
    tower_of_task = np.asarray(towers, np.int32)
    distinct = sorted({int(t) for t in tower_of_task})
    k_tasks = len(tower_of_task)

    def encode_q(params, ids, mask, row_tasks, rng):
        rngs = None if rng is None else {"dropout": rng}
        if len(distinct) == 1:
            return model.encode_queries(params, ids, mask, tower=distinct[0],
                                        deterministic=False, rngs=rngs)
        row_tower = jnp.asarray(tower_of_task)[jnp.maximum(row_tasks, 0)]
        out = None
        for t in distinct:
            q = model.encode_queries(params, ids, mask, tower=t, deterministic=False, rngs=rngs)
            out = q if out is None else jnp.where((row_tower == t)[:, None], q, out)
        return out

    def embedding_loss(tb, q, cands):
        b, h = tb["negative_mask"].shape
        nll = losses.nce_nll(q, cands[:b], cands[b:].reshape(b, h, -1), tb["query_mask"],
                             tb["negative_mask"], tb["positive_rows"], tb["negative_rows"],
                             temperature=temperature)
        real = tb["query_mask"].astype(jnp.float32)
        loss = jnp.sum(nll * real) / jnp.maximum(jnp.sum(real), 1.0)
        member = (tb["row_tasks"][:, None] == jnp.arange(k_tasks)[None]) * real[:, None]
        per_task = jnp.sum(nll[:, None] * member, 0) / jnp.maximum(jnp.sum(member, 0), 1.0)
        return loss, per_task

    def passage_inputs(tb):
        b, h, lp = tb["neg_ids"].shape
        return (jnp.concatenate([tb["pos_ids"], tb["neg_ids"].reshape(b * h, lp)]),
                jnp.concatenate([tb["pos_mask"], tb["neg_mask"].reshape(b * h, lp)]))

    def enc_p(params, x, rng):
        return model.encode_passages(params, *x, deterministic=False,
                                     rngs=None if rng is None else {"dropout": rng})

    def value_and_grad(params, batch, rng):
        tb = {k: v[0] for k, v in batch.items() if k != "task_counts"}
        q_inputs = (tb["query_ids"], tb["query_mask_tokens"], tb["row_tasks"])
        if grad_cache_chunk is not None:
            return cached_value_and_grad(
                lambda q, c: embedding_loss(tb, q, c), lambda p, x, r: encode_q(p, *x, r),
                enc_p, params, q_inputs, passage_inputs(tb), grad_cache_chunk, rng,
                has_aux=True)

        def loss(p):
            rq, rp = jax.random.split(rng)
            return embedding_loss(tb, encode_q(p, *q_inputs, rq),
                                  enc_p(p, passage_inputs(tb), rp))
        return jax.value_and_grad(loss, has_aux=True)(params)

    return value_and_grad


def make_train_step(model: BiEncoder, tx: optax.GradientTransformationExtraArgs,
                    towers: jnp.ndarray, *, mesh: Optional[Mesh] = None,
                    state_sharding: Any = None, batch_sharding: Any = None,
                    temperature: float = 1.0, per_task: str = DEFAULT_PER_TASK,
                    grad_cache_chunk: Optional[int] = None,
                    task_shapes: Optional[Any] = None, batching: str = "per_task") -> Callable:
    """The jitted train step.

    Args:
      model: the bi-encoder.
      tx: the optimizer chain; its first element is a multitask transform taking stacked
        per-task gradients (``task_losses`` / ``task_counts`` extra args).
      towers: int32 [K] query-tower index per task (all 0 without task-specific towers).
      mesh: device mesh; with it, ``state_sharding`` / ``batch_sharding`` (from
        ``state_shardings`` / ``batch_shardings``) pin the jit's in/out shardings.
      temperature: NCE logits are divided by it.
      per_task: ``"vmap"`` or ``"unrolled"`` (module doc).
      grad_cache_chunk: rows per gradient-cache chunk (must divide the padded rows of
        every task); None computes the loss in one pass.
      task_shapes: for ``"unrolled"``, per task ``(rows, query_len)`` to slice to; None
        keeps every task at the batch's stacked (padded) shape.
      batching: ``"per_task"`` (one loss and one gradient per task, stacked for the
        multitask transform) or ``"union"`` (MT-DPR: one loss over a union batch,
        ``make_union_loss``; the transform gets a task axis of 1, so it must be
        ``naive``, and ``task_losses`` are the per-task means within that loss).
    Returns:
      ``step(state, batch) -> (new_state, task_losses [K])`` with the state donated.
    """
    if per_task not in PER_TASK_PATHS:
        raise ValueError(f"unknown per_task path {per_task!r}; known: {PER_TASK_PATHS}")
    if batching not in BATCHING_MODES:
        raise ValueError(f"unknown batching {batching!r}; known: {BATCHING_MODES}")
    task_loss = make_task_loss(model, temperature, grad_cache_chunk)
    union_value_and_grad = make_union_loss(model, towers, temperature, grad_cache_chunk)

    def value_and_grad(params, tb, tower, rng):
        # each task's gradient split FSDP-style as soon as it exists: the data-parallel sum
        # becomes a reduce-scatter, and no device ever holds a whole task's gradient (let
        # alone all K of them) before the stacked constraint below
        out, grads = task_loss(params, tb, tower, rng)
        if mesh is not None and state_sharding is not None:
            grads = jax.lax.with_sharding_constraint(grads, jax.tree_util.tree_map(
                lambda g, sh: partitioning.elementwise_sharding(g.shape, mesh, sh.spec),
                grads, state_sharding["params"]))
        return out, grads

    def per_task_grads(params, batch, rng):
        if batching == "union":
            (_, task_losses), grads = union_value_and_grad(params, batch, rng)
            return task_losses, jax.tree_util.tree_map(lambda g: g[None], grads)
        if per_task == "vmap":
            return jax.vmap(value_and_grad, in_axes=(None, 0, 0, None))(params, batch, towers, rng)
        outs = []
        k_tasks, b, lq = batch["query_ids"].shape
        for k, (rows, qlen) in enumerate(task_shapes or [(b, lq)] * k_tasks):
            tb = _split(jax.tree_util.tree_map(lambda x: x[k], batch), rows, qlen)
            outs.append(value_and_grad(params, tb, towers[k], rng))
        return (jnp.stack([o[0] for o in outs]),
                jax.tree_util.tree_map(lambda *g: jnp.stack(g), *[o[1] for o in outs]))

    def step(state, batch):
        rng, sub = jax.random.split(state["rng"])
        task_losses, grads = per_task_grads(state["params"], batch, sub)
        if mesh is not None and state_sharding is not None:  # split like the K x params state
            grads = jax.lax.with_sharding_constraint(
                grads, stacked_grad_shardings(grads, state_sharding["params"], mesh))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"],
                                       task_losses=task_losses, task_counts=batch["task_counts"],
                                       step=state["step"])
        finite = jnp.all(jnp.isfinite(task_losses))
        # the gradients too: a multitask transform returns a zero update for a non-finite
        # one (its own guard), which AdamW would still apply (momentum, weight decay)
        for leaf in jax.tree_util.tree_leaves(grads) + jax.tree_util.tree_leaves(updates):
            finite &= jnp.all(jnp.isfinite(leaf))
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b),
                                                       new, old)
        new = {"params": keep(optax.apply_updates(state["params"], updates), state["params"]),
               "opt_state": keep(opt_state, state["opt_state"]), "step": state["step"] + 1,
               "rng": rng, "skipped": state["skipped"] + (~finite).astype(jnp.int32)}
        return new, task_losses

    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    rep = NamedSharding(mesh, P())
    return jax.jit(step, donate_argnums=(0,), in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, rep))


def task_shapes_of(batch: Dict[str, np.ndarray], task_query_lens: np.ndarray,
                   row_multiple: int = 1) -> tuple:
    """Per task ``(rows, query_len)`` for the unrolled path: its real rows rounded up to
    ``row_multiple`` (the data-parallel size) and its own query length."""
    counts = np.asarray(batch["task_counts"])
    return tuple((int(-(-max(int(c), 1) // row_multiple) * row_multiple), int(q))
                 for c, q in zip(counts, task_query_lens))
