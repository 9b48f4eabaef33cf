r"""Multi-task dense retriever training (MT-DPR / TACO), gin-configured.

    python -m multiret_jax.train --gin_file=models/bert_tiny.gin --model_dir=runs/tiny \
        --gin_param="train.steps=200"

EARLY VERSION (issue 5 in progress): one process, one device, BM25 hard negatives, per-task
gradients via ``jax.vmap`` into the multitask transform chosen in gin (``multitask.method``),
AdamW with linear warm-up and decay, gradient clipping, orbax checkpoints with resume
from the latest one, periodic dense validation (page/passage R-precision per task), NaN
steps skipped and counted, TensorBoard scalars and a JSON summary. Not yet: data-parallel
sharding of the step, ANCE episodes, experiment gin files, the kill/resume test.

Without ``--data_dir`` the mini-KILT is generated into ``<model_dir>/minikilt``; without
``train.tokenizer_dir`` a word-level vocabulary is built from its passages (tiny models).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from tqdm import tqdm

from multiret_jax import losses, multitask
from multiret_jax.checkpointing import Checkpointer
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.batching import TaskData, build_step_batch
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.mixing import MixingSampler
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import training_examples
from multiret_jax.data.tasks import Task
from multiret_jax.evaluate import benchmark_tasks
from multiret_jax.gin_utils import define_gin_flags, parse_gin
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.models.tokenization import Tokenization
from multiret_jax.scalars import ScalarLogger, write_summary
from multiret_jax.validation import validate

log = logging.getLogger(__name__)


def load_task_data(data_dir: str, table: PassageTable, tasks: Sequence[Task], bm25: BM25Retriever,
                   num_negatives: int, min_bleu: Optional[float]) -> Dict[str, TaskData]:
    """Training examples per task with their top BM25 hard negatives."""
    out = {}
    for task in tasks:
        records = kilt.read_task_file(os.path.join(data_dir, task.filename("train")))
        examples, stats = training_examples(records, table, min_bleu=min_bleu, name=task.name)
        if not examples:
            raise ValueError(f"task {task.name!r}: no usable training examples ({stats.summary()})")
        rows, _ = bm25.search([e.query for e in examples], k=100, show_progress=False)
        negs = bm25.hard_negatives(rows, [e.positives for e in examples], num=num_negatives)
        out[task.name] = TaskData(task, examples, negs)
    return out


def make_train_step(model, tx, towers: jnp.ndarray):
    """The pure train step: per-task losses/gradients by vmap, multitask update, NaN skip."""

    def task_loss(params, tb, tower, rng):
        b, h, lp = tb["neg_ids"].shape
        rq, rp = jax.random.split(rng)
        q = model.encode_queries(params, tb["query_ids"], tb["query_mask_tokens"], tower=tower,
                                 deterministic=False, rngs={"dropout": rq})
        cands = model.encode_passages(
            params, jnp.concatenate([tb["pos_ids"], tb["neg_ids"].reshape(b * h, lp)]),
            jnp.concatenate([tb["pos_mask"], tb["neg_mask"].reshape(b * h, lp)]),
            deterministic=False, rngs={"dropout": rp})
        return losses.nce_loss(q, cands[:b], cands[b:].reshape(b, h, -1), tb["query_mask"],
                               tb["negative_mask"], tb["positive_rows"], tb["negative_rows"])

    def step(state, batch):
        rng, sub = jax.random.split(state["rng"])
        per_task = jax.vmap(jax.value_and_grad(task_loss), in_axes=(None, 0, 0, None))
        task_losses, grads = per_task(state["params"], batch, towers, sub)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"],
                                       task_losses=task_losses, task_counts=batch["task_counts"])
        finite = jnp.all(jnp.isfinite(task_losses)) & jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(u)) for u in jax.tree_util.tree_leaves(updates)]))
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
        new = {"params": keep(optax.apply_updates(state["params"], updates), state["params"]),
               "opt_state": keep(opt_state, state["opt_state"]), "step": state["step"] + 1,
               "rng": rng, "skipped": state["skipped"] + (~finite).astype(jnp.int32)}
        return new, task_losses

    return jax.jit(step, donate_argnums=(0,))


@gin.configurable
def train(model_dir: str = gin.REQUIRED, data_dir: Optional[str] = None,
          tasks: Optional[Sequence[str]] = None, steps: int = 200, global_batch: int = 64,
          mixing_c: float = 4.0, learning_rate: float = 5e-5, warmup_fraction: float = 0.1,
          weight_decay: float = 0.01, clip_norm: float = 1.0, num_negatives: int = 1,
          passage_len: int = 128, marker: str = "prefix", min_bleu: Optional[float] = 0.5,
          query_len: Optional[int] = None, tokenizer_dir: Optional[str] = None,
          eval_every: int = 100, keep: int = 2,
          seed: int = 0, minikilt_scale: float = 1.0, halt_after: Optional[int] = None,
          return_state: bool = False):
    """Trains and validates; returns the final summary (also written to model_dir), and
    the final train state when ``return_state``. ``halt_after`` stops this process after
    that many steps of the run (a preemption drill: rerunning resumes the same run)."""
    os.makedirs(model_dir, exist_ok=True)
    if data_dir is None:
        data_dir = os.path.join(model_dir, "minikilt")
        minikilt.generate(data_dir, scale=minikilt_scale, seed=seed)
    task_list = benchmark_tasks(data_dir, "train", tasks)
    table = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(data_dir, "knowledge_source.jsonl")))
    model, params, cfg = build_biencoder()
    own_vocab = os.path.join(model_dir, "tokenizer")
    if tokenizer_dir:
        tokenizer = Tokenization.from_dir(tokenizer_dir)
    elif os.path.exists(os.path.join(own_vocab, "tokenizer.json")):  # resuming: same vocabulary
        tokenizer = Tokenization.from_dir(own_vocab)
    else:
        tokenizer = Tokenization.train_wordlevel(table.contents(), cfg.vocab_size)
        tokenizer.save(own_vocab)
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None:  # absolute positions cap every length (e.g. tiny BERT: 128)
        passage_len = min(passage_len, max_pos)
        query_len = min(query_len or max_pos, max_pos)
    bm25 = BM25Retriever().index(table, show_progress=False)
    data = load_task_data(data_dir, table, task_list, bm25, num_negatives, min_bleu)
    sampler = MixingSampler({t: len(d.examples) for t, d in data.items()}, global_batch,
                            c=mixing_c, seed=seed)
    towers = jnp.asarray([model.tower_index(d.task) for d in data.values()], jnp.int32)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, int(warmup_fraction * steps)),
                                                  max(steps, 2), 0.0)
    tx = optax.chain(multitask.build_method(num_tasks=len(data)), optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, weight_decay=weight_decay))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros([], jnp.int32),
             "rng": jax.random.PRNGKey(seed), "skipped": jnp.zeros([], jnp.int32)}
    ckpt = Checkpointer(os.path.join(model_dir, "checkpoints"), keep=keep,
                        best_metric="avg_page_rprec")
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(target=state)
        log.info("resumed from step %d", int(state["step"]))
    step_fn = make_train_step(model, tx, towers)
    dev = {d.task: kilt.read_task_file(os.path.join(data_dir, d.task.filename("dev")))
           for d in data.values() if os.path.exists(os.path.join(data_dir, d.task.filename("dev")))}
    logger = ScalarLogger(os.path.join(model_dir, "tb"))
    result = None
    end = steps if halt_after is None else min(steps, halt_after)
    bar = tqdm(range(int(state["step"]), end), desc="train", initial=int(state["step"]), total=steps)
    for step in bar:
        batch = build_step_batch(sampler.batch(step), data, tokenizer, table, passage_len,
                                 num_negatives, marker, rng=np.random.default_rng([seed, step]),
                                 query_len=query_len)
        state, task_losses = step_fn(state, batch.arrays())
        tl = np.asarray(task_losses)
        bar.set_postfix(loss=f"{tl.mean():.3f}")
        logger.log(step, {"loss": float(tl.mean()), **{f"loss/{t}": float(v) for t, v in zip(batch.tasks, tl)}})
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            result = validate(model, state["params"], tokenizer, table, dev, passage_len, marker,
                              progress=False, query_len=query_len)
            logger.log(step, {"val/avg_page_rprec": result["avg_page_rprec"],
                              **{f"val/{t}": r["page_rprec"] for t, r in result["tasks"].items()}})
            ckpt.save(step + 1, state, {"sampler": {"step": step + 1}},
                      metrics={"avg_page_rprec": result["avg_page_rprec"]})
    ckpt.wait()
    logger.close()
    summary = {"steps": steps, "skipped_steps": int(state["skipped"]),
               "validation": None if result is None else {
                   "avg_page_rprec": result["avg_page_rprec"], "tasks": result["tasks"]}}
    write_summary(os.path.join(model_dir, "summary.json"), summary)
    return (summary, state) if return_state else summary


FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    summary = train(model_dir=FLAGS.model_dir)
    print(summary)


if __name__ == "__main__":
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Output directory (checkpoints, logs, summary).")
    app.run(main)
