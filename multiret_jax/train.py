r"""Multi-task dense retriever training (MT-DPR / TACO), gin-configured, data-parallel.

    python -m multiret_jax.train --gin_file=taco_tiny.gin --model_dir=runs/taco_tiny
    python -m multiret_jax.train --gin_file=taco.gin --model_dir=gs://... \
        --gin_param="train.data_dir='/data/kilt'"

One loop: build data (KILT task files -> training examples -> BM25 hard negatives), model
(``build_biencoder``) and optimizer (multitask transform -> clipping -> AdamW with linear
warm-up and decay); restore the latest checkpoint in ``model_dir`` if any; train with the
jitted, donated, sharded step of ``train_step.py``; validate (dense retrieval on the dev
files: page / passage R-precision per task) and checkpoint periodically; after the BM25
warm-up, optional ANCE episodes re-mine the hard negatives with the current model
(``ance.py``); write ``final_params.safetensors`` and ``summary.json``.

Resuming: the checkpoint holds params, optimizer state (with the multitask state, e.g.
TACO's EMA), step, RNG and the skipped-step count; the data order is a pure function of
(seed, step) (``MixingSampler``) and each ANCE episode's negatives are saved, so a killed
run, restarted with the same command, finishes with the same parameters as an
uninterrupted one.

Without ``train.data_dir`` the mini-KILT is generated into ``<model_dir>/minikilt``;
without ``train.tokenizer_dir`` (or a ``tokenizer.json`` / ``vocab.txt`` in the
checkpoint directory) a word-level vocabulary is built from its passages (tiny models).
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Callable, Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from multiret_jax import ance, distributed, multitask, partitioning, tables
from multiret_jax.checkpointing import Checkpointer
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.batching import TaskData, build_step_batch
from multiret_jax.data.bm25 import BM25Retriever
from multiret_jax.data.mixing import MixingSampler
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.provenance import training_examples
from multiret_jax.data.tasks import Task, get_task
from multiret_jax.evaluate import benchmark_tasks
from multiret_jax.gin_utils import define_gin_flags, parse_gin
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.models.tokenization import Tokenization
from multiret_jax.scalars import ScalarLogger, write_summary
from multiret_jax.train_step import (DEFAULT_PER_TASK, batch_shardings, init_train_state,
                                     make_train_step, put_batch, state_shardings, task_shapes_of)
from multiret_jax.validation import ranking_metrics, validate

log = logging.getLogger(__name__)


def load_task_data(data_dir: str, table: PassageTable, tasks: Sequence[Task], bm25: BM25Retriever,
                   num_negatives: int, min_bleu: Optional[float],
                   max_examples: Optional[int] = None, seed: int = 0) -> Dict[str, TaskData]:
    """Training examples per task with their top BM25 hard negatives.

    ``max_examples`` keeps a seeded random subset of that many examples per task
    (few-shot fine-tuning: 128 / 1,024)."""
    out = {}
    for task in tasks:
        path = os.path.join(data_dir, task.filename("train"))
        records = kilt.read_task_file(path)
        if not records:
            raise ValueError(f"{path}: empty task file (no records) for task {task.name!r}")
        examples, stats = training_examples(records, table, min_bleu=min_bleu, name=task.name)
        if not examples:
            raise ValueError(f"{path}: no usable training examples for task {task.name!r} "
                             f"({stats.summary()})")
        if max_examples is not None and len(examples) > max_examples:
            keep = sorted(random.Random(f"{seed}/{task.name}").sample(range(len(examples)),
                                                                       max_examples))
            examples = [examples[i] for i in keep]
        rows, _ = bm25.search([e.query for e in examples], k=100, show_progress=False)
        negs = bm25.hard_negatives(rows, [e.positives for e in examples], num=num_negatives)
        out[task.name] = TaskData(task, examples, negs)
    return out


def _tokenizer(model_dir: str, tokenizer_dir: Optional[str], checkpoint_dir: Optional[str],
               vocab_texts: Callable[[], Sequence[str]], vocab_size: int,
               init_from: Optional[str] = None) -> Tokenization:
    """The given / ``init_from`` run's / checkpoint's vocabulary, else a word-level one built
    from the passages and the formatted training queries (queries word their questions
    differently from the passages; a passage-only vocabulary would map those words to
    [UNK]), kept in model_dir. A run initialised from another run uses that run's own
    vocabulary: its embedding rows belong to those token ids."""
    own = os.path.join(model_dir, "tokenizer")
    init_tok = None
    if init_from:
        init_tok = os.path.join(init_from if os.path.isdir(init_from)
                                else os.path.dirname(init_from), "tokenizer")
    for d in (tokenizer_dir, init_tok, checkpoint_dir):
        if d and any(os.path.exists(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.txt")):
            return Tokenization.from_dir(d)
    if tokenizer_dir:
        raise FileNotFoundError(f"train.tokenizer_dir={tokenizer_dir!r} has no tokenizer.json "
                                "or vocab.txt")
    resuming = os.path.exists(os.path.join(own, "tokenizer.json"))
    distributed.barrier("tokenizer")  # every process has looked before process 0 writes
    if resuming:  # the same vocabulary
        return Tokenization.from_dir(own)
    tok = Tokenization.train_wordlevel(vocab_texts(), vocab_size)
    if jax.process_index() == 0:
        tok.save(own)
    return tok


def flat_params(params) -> Dict[str, np.ndarray]:
    """``{"a/b/c": array}`` (the layout of ``final_params.safetensors``); with several
    processes, every process must call it (parameters sharded across them are gathered)."""
    flat = jax.tree_util.tree_flatten_with_path(distributed.to_numpy(params))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
            for path, v in flat}


def load_params_into(path: str, params):
    """Parameters from a previous run's ``final_params.safetensors`` (file or model_dir),
    checked against ``params``' names and shapes."""
    if os.path.isdir(path):
        path = os.path.join(path, "final_params.safetensors")
    saved, want = load_file(path), flat_params(params)
    for name, arr in want.items():
        if name not in saved or saved[name].shape != arr.shape:
            got = "missing" if name not in saved else f"shape {saved[name].shape}"
            raise ValueError(f"{path}: parameter {name!r} is {got}, model wants {arr.shape} "
                             "(saved from another architecture)")
    leaves = [jnp.asarray(saved[name]) for name in want]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


@gin.configurable
def train(model_dir: str = gin.REQUIRED, data_dir: Optional[str] = None,
          tasks: Optional[Sequence[str]] = None, exclude_tasks: Sequence[str] = (),
          val_tasks: Optional[Sequence[str]] = None, max_examples: Optional[int] = None,
          steps: int = 200, global_batch: int = 64, mixing_c: float = 4.0,
          learning_rate: float = 5e-5, warmup_fraction: float = 0.1, weight_decay: float = 0.01,
          clip_norm: float = 1.0, num_negatives: int = 1, temperature: float = 1.0,
          passage_len: int = 128, eval_passage_len: Optional[int] = None,
          chunk_mode: str = "page", marker: str = "prefix", min_bleu: Optional[float] = 0.5,
          query_len: Optional[int] = None, tokenizer_dir: Optional[str] = None,
          init_from: Optional[str] = None, ance_episodes: int = 0, ance_episode_steps: int = 0,
          ance_depth: int = 100, ance_sample: bool = True, ance_index_spec: Optional[str] = None,
          reset_multitask_state: bool = False,
          per_task: str = DEFAULT_PER_TASK, grad_cache_chunk: Optional[int] = None,
          model_parallel: int = 1, multihost: bool = False,
          coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, eval_every: int = 100,
          checkpoint_every: Optional[int] = None, keep: int = 2, eval_batch_size: int = 64,
          eval_at_start: bool = False, compare_bm25: bool = False,
          seed: int = 0, minikilt_scale: float = 1.0, halt_after: Optional[int] = None,
          return_state: bool = False):
    """Trains, validates and checkpoints; returns the summary (also ``summary.json``).

    Args (gin ``train.*``):
      model_dir: checkpoints, TensorBoard events, vocabulary, summary, final parameters.
      data_dir: KILT task files + ``knowledge_source.jsonl``; None generates the mini-KILT.
      tasks / exclude_tasks: tasks to train on (default every task with a train file),
        minus ``exclude_tasks`` (leave-one-out).
      val_tasks: tasks validated (default every task with a dev file, held-out ones too).
      max_examples: few-shot: examples kept per task (seeded subset).
      steps: BM25 warm-up steps (all steps without ANCE).
      global_batch, mixing_c: queries per step over all tasks, mixed with temperature c.
      learning_rate, warmup_fraction, weight_decay, clip_norm: AdamW with linear warm-up
        then cosine decay over all steps, global-norm clipping after the multitask update.
      num_negatives: hard negatives per query (1: MT-DPR, 2: TACO).
      temperature: NCE logits divided by it (1: DPR dot product; 0.05 for unit vectors).
      passage_len, query_len, marker, min_bleu: input lengths, query marker, provenance filter.
      eval_passage_len: passage length in validation and ANCE mining (default passage_len).
      chunk_mode: 100-word passages per "page" (DPR) or per "paragraph" (``passages.py``).
      tokenizer_dir: vocabulary directory (default: the checkpoint directory's, else built).
      init_from: a previous ``model_dir`` (or its ``final_params.safetensors``) to start
        from (few-shot fine-tuning of a leave-one-out model).
      ance_episodes, ance_episode_steps, ance_depth, ance_sample: ANCE episodes after the
        warm-up: steps each, ranking depth mined, sample from the top vs take the best.
      ance_index_spec: mine with a FAISS index of this spec ("HNSW32", ...) instead of
        exact search (``ance.mine_episode``).
      reset_multitask_state: re-initialise the multitask state (TACO EMA) at each episode.
      per_task, grad_cache_chunk: see ``train_step.make_train_step``.
      model_parallel: size of the mesh's "model" axis (parameters by the logical rules).
      multihost: one process per host (TPU pods, multi-GPU nodes): ``jax.distributed``
        first; the mesh spans all processes' devices, process 0 alone writes files other
        than checkpoints (``distributed.py``).
      coordinator_address, num_processes, process_id: for ``multihost``: the coordinator's
        ``host:port`` (process 0's), the process count and this process's index; None
        auto-detects them (TPU pods, SLURM, Open MPI / multi-GPU launchers).
      eval_every, checkpoint_every, keep: validation / checkpoint period, checkpoints kept.
      eval_batch_size: encoding batch in validation and mining.
      eval_at_start: also validate the initial model (the zero-shot / pre-fine-tuning row);
        with ``steps=0`` this is an evaluation-only run.
      compare_bm25: at the end, print (and write ``<model_dir>/table.{md,csv,json}``) the
        per-task page / passage R-precision of BM25 and of the trained model.
      seed: data order, dropout, initialisation of random models.
      minikilt_scale: size of the generated mini-KILT.
      halt_after: stop this process after that step (a preemption drill; rerun resumes).
      return_state: also return the final train state.
    """
    if multihost:
        distributed.initialize(coordinator_address, num_processes, process_id)
    main_process = jax.process_index() == 0
    os.makedirs(model_dir, exist_ok=True)
    if main_process:  # the run's full configuration, for the tools that load it later
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())
    if data_dir is None:
        data_dir = os.path.join(model_dir, "minikilt")
        if main_process:
            minikilt.generate(data_dir, scale=minikilt_scale, seed=seed)
        distributed.barrier("minikilt")  # the others read it once it is complete
    excluded = {get_task(n).name for n in exclude_tasks}  # unknown names fail, listing known
    task_list = [t for t in benchmark_tasks(data_dir, "train", tasks) if t.name not in excluded]
    if not task_list:
        raise ValueError(f"no tasks left to train on (tasks={tasks}, exclude_tasks={exclude_tasks})")
    table = PassageTable.from_pages(kilt.iter_knowledge_source(
        os.path.join(data_dir, "knowledge_source.jsonl")), mode=chunk_mode)
    model, params, cfg = build_biencoder()
    if init_from:
        params = load_params_into(init_from, params)
    eval_passage_len = eval_passage_len or passage_len
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None:  # absolute positions cap every length (e.g. tiny BERT: 128)
        passage_len, eval_passage_len = min(passage_len, max_pos), min(eval_passage_len, max_pos)
        query_len = min(query_len or max_pos, max_pos)
    bm25 = BM25Retriever().index(table, show_progress=False)
    data = load_task_data(data_dir, table, task_list, bm25, num_negatives, min_bleu,
                          max_examples, seed)
    vocab_texts = lambda: table.contents() + [d.task.format_query(e.query, marker)
                                              for d in data.values() for e in d.examples]
    tokenizer = _tokenizer(model_dir, tokenizer_dir, model.source_dir, vocab_texts, cfg.vocab_size,
                           init_from)
    plan = ance.EpisodePlan(steps, ance_episodes, ance_episode_steps)
    total = plan.total_steps
    sampler = MixingSampler({t: len(d.examples) for t, d in data.items()}, global_batch,
                            c=mixing_c, seed=seed)
    towers = jnp.asarray([model.tower_index(d.task) for d in data.values()], jnp.int32)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(1, int(warmup_fraction * total)), max(total, 2), 0.0)
    mt = multitask.build_method(num_tasks=len(data), total_steps=total)
    tx = optax.chain(mt, optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, weight_decay=weight_decay))

    mesh = partitioning.make_mesh(model_parallel)
    data_size = mesh.shape["data"]
    row_multiple = math.lcm(data_size, grad_cache_chunk or 1)
    param_sh = (partitioning.logical_shardings(model.logical_specs(), mesh)
                if model_parallel > 1 else None)
    state = init_train_state(params, tx, seed)
    state_sh = state_shardings(state, mesh, param_sh)
    state = jax.device_put(state, state_sh)
    ckpt = Checkpointer(os.path.join(model_dir, "checkpoints"), keep=keep,
                        best_metric="avg_page_rprec")
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(target=state)
        log.info("resumed from step %d of %d", int(state["step"]), total)

    def make_batch(step):
        return build_step_batch(sampler.batch(step), data, tokenizer, table, passage_len,
                                num_negatives, marker, rng=np.random.default_rng([seed, step]),
                                query_len=query_len, row_multiple=row_multiple)

    probe = make_batch(0)
    batch_sh = batch_shardings(probe.arrays(), mesh)
    shapes = task_shapes_of(probe.arrays(), probe.task_query_lens, row_multiple)
    step_fn = make_train_step(model, tx, towers, mesh=mesh, state_sharding=state_sh,
                              batch_sharding=batch_sh, temperature=temperature,
                              per_task=per_task, grad_cache_chunk=grad_cache_chunk,
                              task_shapes=shapes)
    distributed.compile_together(step_fn, state, put_batch(probe.arrays(), batch_sh))
    val_names = val_tasks or [t.name for t in benchmark_tasks(data_dir, "dev", None)]
    dev = {t.name: kilt.read_task_file(os.path.join(data_dir, t.filename("dev")))
           for t in benchmark_tasks(data_dir, "dev", val_names)}
    logger = ScalarLogger(os.path.join(model_dir, "tb")) if main_process else None
    mine_kw = dict(passage_len=eval_passage_len, query_len=query_len, marker=marker,
                   batch_size=eval_batch_size, depth=ance_depth, sample=ance_sample,
                   index_spec=ance_index_spec)

    def validate_now(progress):  # on every process, with a process-local parameter copy
        return validate(model, distributed.host_local(state["params"]), tokenizer, table, dev,
                        eval_passage_len, marker, progress=progress, query_len=query_len,
                        batch_size=eval_batch_size)

    def use_episode(episode, params_now):
        params_now = distributed.host_local(params_now)  # mined on every process alike
        path = ance.negatives_path(model_dir, episode)
        if os.path.exists(path):
            negs = ance.load_negatives(path, data)
        else:
            negs = ance.mine_episode(model, params_now, tokenizer, table, data, num=num_negatives,
                                     seed=seed + episode, **mine_kw)
            if main_process:
                ance.save_negatives(path, negs)
        for name, d in list(data.items()):
            data[name] = TaskData(d.task, d.examples, negs[name])

    start = int(state["step"])
    if plan.episode_at(start) > 0 and start != plan.start(plan.episode_at(start)):
        use_episode(plan.episode_at(start), state["params"])  # resumed inside an episode
    result, initial = None, None
    if eval_at_start and start == 0:
        initial = validate_now(progress=main_process)
        log.info("initial model: val avg page R-prec %.4f", initial["avg_page_rprec"])
    end = total if halt_after is None else min(total, halt_after)
    ckpt_every = checkpoint_every or eval_every
    last_skipped = int(state["skipped"])
    bar = tqdm(range(start, end), desc="train", initial=start, total=total, unit="step",
               disable=not main_process or start >= end)
    for step in bar:
        episode = plan.episode_at(step)
        if episode and step == plan.start(episode):
            log.info("ANCE episode %d of %d at step %d: mining negatives", episode,
                     plan.episodes, step)
            use_episode(episode, state["params"])
            if reset_multitask_state:
                state["opt_state"] = (mt.init(state["params"]),) + tuple(state["opt_state"][1:])
                state = jax.device_put(state, state_sh)
        batch = make_batch(step)
        state, task_losses = step_fn(state, put_batch(batch.arrays(), batch_sh))
        tl = np.asarray(task_losses)
        skipped = int(state["skipped"])
        if skipped > last_skipped:
            log.warning("step %d: non-finite loss or update, step skipped (%d skipped so far)",
                        step, skipped)
            last_skipped = skipped
        rate = bar.format_dict.get("rate") or 0.0
        bar.set_postfix(loss=f"{tl.mean():.3f}", ex_s=f"{rate * batch.task_counts.sum():.1f}",
                        ep=episode, skipped=skipped)
        if logger:
            logger.log(step, {"loss": float(tl.mean()), "lr": float(schedule(step)),
                              "skipped": skipped,
                              **{f"loss/{t}": float(v) for t, v in zip(batch.tasks, tl)}})
        done = step + 1
        metrics = None
        if done % eval_every == 0 or done == total:
            result = validate_now(progress=False)
            metrics = {"avg_page_rprec": result["avg_page_rprec"]}
            bar.write(f"step {done}: val avg page R-prec {result['avg_page_rprec']:.4f} " +
                      " ".join(f"{t}={r['page_rprec']:.3f}" for t, r in result["tasks"].items()))
            if logger:
                logger.log(step, {"val/avg_page_rprec": result["avg_page_rprec"],
                                  **{f"val/{t}": r["page_rprec"] for t, r in result["tasks"].items()}})
        if metrics or done % ckpt_every == 0 or done == end:
            ckpt.save(done, state, {"sampler": {"step": done}, "episode": episode}, metrics=metrics)
    ckpt.wait()
    if logger:
        logger.close()
    finished = int(state["step"]) >= total
    summary = {"steps": total, "completed_steps": int(state["step"]),
               "skipped_steps": int(state["skipped"]), "tasks": list(data),
               "best_step": ckpt.best_step(), "validation": _metrics(result),
               "initial_validation": _metrics(initial)}
    final = flat_params(state["params"]) if finished else None  # on every process: may gather
    if main_process and finished:  # (also an evaluation-only run: steps=0)
        save_file(final, os.path.join(model_dir, "final_params.safetensors"))
        write_summary(os.path.join(model_dir, "summary.json"), summary)
        if compare_bm25 and (result or initial):
            print(comparison_table(model_dir, bm25, table, dev, result, initial, int(state["step"])))
    return (summary, state) if return_state else summary


def comparison_table(model_dir: str, bm25: BM25Retriever, table: PassageTable, dev, result,
                     initial, step: int) -> str:
    """Per-task R-precision x100 of BM25 next to the model (and its initial state)."""
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    bm = {}
    for name, records in dev.items():
        records = [r for r in records if r.input is not None]
        ranked, _ = bm25.search([r.input for r in records], k=100, show_progress=False)
        bm[name] = ranking_metrics(records, ranked, table)
    runs = [("BM25", bm)]
    if initial is not None:
        runs.append(("initial", initial["tasks"]))
    if result is not None:
        runs.append((f"trained ({step} steps)", result["tasks"]))
    for label, per_task in runs:
        rows[f"{label} page R-prec"] = {t: 100 * r["page_rprec"] for t, r in per_task.items()}
    for label, per_task in runs:
        rows[f"{label} passage R-prec"] = {
            t: None if r["passage_rprec"] is None else 100 * r["passage_rprec"]
            for t, r in per_task.items()}
    names = list(dev)
    tables.write_tables(os.path.join(model_dir, "table"), rows, names)
    return ("\nDev-set KILT R-precision x100 (page level is the main metric):\n\n" +
            tables.format_table(rows, names))


def _metrics(result):
    return None if result is None else {"avg_page_rprec": result["avg_page_rprec"],
                                        "tasks": result["tasks"]}


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
