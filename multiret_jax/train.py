r"""Multi-task dense retriever training (MT-DPR / TACO), gin-configured, data-parallel.

    python -m multiret_jax.train --gin_file=realmini_demo.gin --model_dir=runs/realmini_demo
    python -m multiret_jax.train --gin_file=taco.gin --model_dir=gs://... \
        --gin_param="train.data_dir='/data/kilt'"

One file, read top to bottom; ``train()`` calls one stage per section:

1. the run directory: an already finished run is kept as it is (a rerun is a no-op);
2. data: KILT task files (or the generated mini-KILT) -> passages -> training examples
   -> BM25 hard negatives;
3. model: ``build_biencoder`` (gin), optional ``init_from``, vocabulary, input lengths;
4. optimizer: multitask transform -> clipping -> AdamW with linear warm-up then decay;
5. state: sharded over the ("data", "model") mesh, restored from the latest checkpoint;
6. the jitted, donated, sharded step of ``training/step.py``, compiled once;
7. the loop: ANCE episodes re-mine the negatives with the current model (``training/ance.py``),
   periodic validation (page / passage R-precision per task on the dev files) and
   checkpoints;
8. the end: ``final_params.safetensors``, ``summary.json`` and the table of BM25, the
   untrained and the trained model (``table.{txt,md,csv,json}``).

Resuming: the checkpoint holds params, optimizer state (with the multitask state, e.g.
TACO's EMA), step, RNG and the skipped-step count; the data order is a pure function of
(seed, step) (``MixingSampler``) and each ANCE episode's negatives are saved, so a killed
run, restarted with the same command, finishes with the same parameters as an
uninterrupted one. Rerunning a finished run changes nothing and prints its table again.

Without ``train.data_dir`` the mini-KILT is generated into ``<model_dir>/minikilt``;
without ``train.tokenizer_dir`` (or a ``tokenizer.json`` / ``vocab.txt`` in the
checkpoint directory) a word-level vocabulary is built from its passages (tiny models).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
from typing import Any, Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from safetensors.numpy import save_file
from tqdm import tqdm

from multiret_jax import cli, partitioning
from multiret_jax.data import kilt, minikilt
from multiret_jax.data.batching import TaskData, build_step_batch
from multiret_jax.data.bm25_cache import BM25Cache
from multiret_jax.data.candidate_pool import CandidatePool, candidate_pool
from multiret_jax.data.passage_store import default_cache_dir, knowledge_source_table
from multiret_jax.data.mixing import MixingSampler
from multiret_jax.data.union import UnionSampler, union_batch
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import benchmark_tasks, get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.gin_utils import define_gin_flags, parse_gin
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.outputs import read_json
from multiret_jax.models.params_io import PARAMS_FILE, flat_numpy, load_params_into
from multiret_jax.training import ance, distributed, run_config
from multiret_jax.training import plan as training_plan
from multiret_jax.training.settings import check_settings
from multiret_jax.training.stage_log import timed
from multiret_jax.training.checkpointing import Checkpointer
from multiret_jax.training.inputs import load_task_data, training_tokenizer
from multiret_jax.training.scalars import ScalarLogger, write_summary
from multiret_jax.training.step import (DEFAULT_PER_TASK, batch_shardings, init_train_state,
                                        make_train_step, put_batch, state_shardings,
                                        task_shapes_of)
from multiret_jax.training.report import comparison_table, final_report
from multiret_jax.training.validation import dev_subset, validate

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------------------------- settings
@gin.configurable
def train(model_dir: str = gin.REQUIRED, data_dir: Optional[str] = None,
          tasks: Optional[Sequence[str]] = None, exclude_tasks: Sequence[str] = (),
          val_tasks: Optional[Sequence[str]] = None, max_examples: Optional[int] = None,
          steps: int = 200, global_batch: int = 64, mixing_c: float = 4.0,
          learning_rate: float = 5e-5, warmup_fraction: float = 0.1, weight_decay: float = 0.01,
          lr_schedule: str = "cosine", lr_per_phase: bool = False,
          clip_norm: float = 1.0, num_negatives: int = 1, temperature: float = 1.0,
          passage_len: int = 128, eval_passage_len: Optional[int] = None,
          chunk_mode: str = "page", marker: str = "prefix", marker_format: str = "sep",
          marker_in_query_len: bool = True, min_bleu: Optional[float] = 0.5,
          query_len: Optional[int] = None, tokenizer_dir: Optional[str] = None,
          init_from: Optional[str] = None, batching: str = "per_task",
          task_caps: Optional[Dict[str, int]] = None,
          task_sizes: Optional[Dict[str, int]] = None, epochs: Optional[float] = None,
          ance_episodes: int = 0, ance_episode_steps: int = 0,
          ance_episode_epochs: Optional[float] = None,
          multitask_last_phases: Optional[int] = None,
          cache_dir: Optional[str] = None, val_pool_size: Optional[int] = 100_000,
          val_pool_bm25_depth: int = 10, val_max_queries: Optional[int] = None,
          ance_depth: int = 100, ance_sample: bool = True, ance_index_spec: Optional[str] = None,
          ance_tasks: Optional[Sequence[str]] = None,
          reset_multitask_state: bool = False,
          per_task: str = DEFAULT_PER_TASK, grad_cache_chunk: Optional[int] = None,
          model_parallel: int = 1, multihost: bool = False,
          coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, eval_every: int = 100,
          checkpoint_every: Optional[int] = None, keep: int = 2, eval_batch_size: int = 64,
          eval_at_start: bool = False, compare_bm25: bool = False,
          seed: int = 0, minikilt_scale: float = 1.0, halt_after: Optional[int] = None,
          return_state: bool = False, allow_config_change: bool = False,
          dry_run: bool = False, return_settings: bool = False):
    """Trains, validates and checkpoints; returns the summary (also ``summary.json``).

    Args (gin ``train.*``):
      model_dir: checkpoints, TensorBoard events, vocabulary, summary, final parameters.
      data_dir: KILT task files + ``knowledge_source.jsonl``; None generates the mini-KILT.
      tasks / exclude_tasks: tasks to train on (default every task with a train file),
        minus ``exclude_tasks`` (leave-one-out).
      val_tasks: tasks validated (default every task with a dev file, held-out ones too).
      val_pool_size, val_pool_bm25_depth: periodic validation ranks a fixed, seeded pool of
        this many passages (the dev queries' gold pages, their BM25 top
        ``val_pool_bm25_depth``, random passages; ``data/candidate_pool.py``), so its cost
        does not grow with the corpus; None, or a corpus no larger: the whole corpus. The
        figures are labelled with what they ranked; full-corpus figures come from
        ``python -m multiret_jax.retrieve``.
      val_max_queries: validate at most this many dev queries per task (a seeded subset,
        the same at every validation); None: all.
      max_examples: few-shot: examples kept per task (seeded subset).
      cache_dir: what is computed once per data set and reused by resumes and later runs:
        the chunked passages (``data/passage_store.py``, memory-mapped) and BM25's index,
        hard negatives and dev rankings (``data/bm25_cache.py``); default
        ``$MULTIRET_JAX_CACHE``, else ``~/.cache/multiret_jax``.
      steps: BM25 warm-up steps (all steps without ANCE); ``epochs`` instead gives
        the warm-up in epochs (``training/plan.py``: an epoch is the largest
        ``ceil(N_k / B_k)`` over tasks, or ``ceil(N / B)`` for union batches).
      global_batch, mixing_c: queries per step over all tasks, mixed with temperature c.
      batching: "per_task" (a sub-batch and a loss per task, combined by the multitask
        method: TACO) or "union" (MT-DPR: batches drawn from the union of the tasks'
        examples, one NCE over the whole batch; ``data/union.py``; method naive).
      task_caps: ``{task: cap}``: a seeded random subset of at most that many training
        examples (TACO's downsampling of T-REx and zsRE), drawn before the BM25 negatives.
      task_sizes: ``{task: examples}`` for ``dry_run`` without data at hand (before the
        caps); a real run counts its data.
      learning_rate, warmup_fraction, weight_decay, clip_norm: AdamW with a linear warm-up
        over ``warmup_fraction`` of the steps, global-norm clipping after the multitask
        update.
      lr_schedule: the decay after the warm-up, "linear" (both papers) or "cosine"
        (``training/schedules.py``).
      lr_per_phase: each phase (the warm-up, each ANCE episode) has its own warm-up and
        decay (TACO's public code runs each episode as a new run) instead of one over the
        run.
      num_negatives: hard negatives per query (1: MT-DPR, 2: TACO).
      temperature: NCE logits divided by it (1: DPR dot product; 0.05 for unit vectors).
      passage_len, query_len, marker, min_bleu: input lengths, query marker, provenance filter.
      marker_format, marker_in_query_len: the separator after the marker and whether a
        task's query length counts the marker (``data.tasks.QueryFormat``).
      eval_passage_len: passage length in validation and ANCE mining (default passage_len).
      chunk_mode: 100-word passages per "page" (DPR) or per "paragraph" (``passages.py``).
      tokenizer_dir: vocabulary directory (default: the checkpoint directory's, else built).
      init_from: a previous ``model_dir`` (or its ``final_params.safetensors``) to start
        from (few-shot fine-tuning of a leave-one-out model).
      ance_episodes, ance_episode_steps, ance_depth, ance_sample: ANCE episodes after the
        warm-up: steps each (or ``ance_episode_epochs``), ranking depth mined, sample from
        the top vs take the best.
      multitask_last_phases: the multitask method (gin ``multitask.method``) applies in
        the last N phases (TACO: 1, the last ANCE episode; its variant: 4), naive before;
        its burn-in counts from its first step. None (or N at least the number of phases):
        in every phase.
      ance_index_spec: mine with a FAISS index of this spec ("HNSW32", ...) instead of
        exact search (``ance.mine_episode``).
      ance_tasks: the tasks whose negatives each episode mines (MT-DPR's adversarial round:
        NQ and TriviaQA); the others keep their BM25 negatives. None: every trained task.
      reset_multitask_state: re-initialise the multitask state (TACO EMA) at each episode.
      per_task, grad_cache_chunk: see ``training.step.make_train_step``.
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
      allow_config_change: resume a run whose ``config.gin`` differs from this
        configuration (``training/run_config.py``; the old file is kept as
        ``config.<n>.gin``); without it a changed configuration fails before any file
        is touched.
      dry_run: train nothing: print the plan and write ``<model_dir>/plan.json``
        (``training/plan.py``); returns the plan.
      return_settings: do nothing but return the checked ``Settings`` (for tools that
        plan a run, e.g. ``benchmarks/memory_plan.py``).
    """
    s = Settings(**locals())
    check_settings(s)  # before any file is touched
    if return_settings:
        return s
    if multihost:
        distributed.initialize(coordinator_address, num_processes, process_id)
    main_process = jax.process_index() == 0
    # The run's full configuration, for the tools that load it later: compared with the
    # saved one first (a changed one fails here, before any file is touched), written once
    # the data and the model are known to load.
    config = gin.config_str()
    defaults = run_config.defaults_of(train)  # a binding added later at its default: no change
    changes = run_config.check_and_save(model_dir, config, allow_config_change, write=False,
                                        defaults=defaults)
    if dry_run:
        return training_plan.dry_run(s, main_process)
    finished = None if changes else finished_run(model_dir, static_total_steps(s))
    if finished is not None and not return_state:
        return finished
    os.makedirs(model_dir, exist_ok=True)
    table, data, bm25, dev, sizes, pool = prepare_data(s)
    model, params, cfg, tokenizer, lens = prepare_model(s, table, data)
    run_config.check_and_save(model_dir, config, allow_config_change, write=main_process,
                              defaults=defaults)
    the_plan = training_plan.run_plan(s, sizes, data, tokenizer, main_process)
    plan = ance.EpisodePlan(the_plan["phases"][0]["steps"], ance_episodes,
                            the_plan["phases"][-1]["steps"] if ance_episodes else 0)
    mt, tx, schedule = make_optimizer(s, the_plan, len(data))
    run = Run(s, plan, data, table, model, tokenizer, lens, main_process, pool)
    state, state_sh, ckpt, mesh, row_multiple = init_or_restore(s, params, tx, model, plan)
    step_fn, make_batch, batch_sh = compile_step(run, model, tx, state, state_sh, mesh,
                                                 row_multiple, data)
    state, result, initial = train_loop(run, state, state_sh, step_fn, make_batch, batch_sh,
                                        ckpt, mt, schedule, dev)
    summary = finish(run, state, ckpt, bm25, dev, result, initial)
    return (summary, state) if return_state else summary


class Settings(types.SimpleNamespace):
    """``train()``'s arguments (``s.steps``, ``s.marker``, ...), as one value the stages
    share."""


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Token lengths after the model's position limit: training passages, validation /
    mining passages, and the cap on every task's query length."""
    passage: int
    eval_passage: int
    query: Optional[int]


@dataclasses.dataclass
class Run:
    """What the loop's stages share (``data`` changes when an ANCE episode re-mines)."""
    s: Settings
    plan: ance.EpisodePlan
    data: Dict[str, TaskData]
    table: PassageTable
    model: Any
    tokenizer: Tokenization
    lens: Lengths
    main_process: bool
    pool: CandidatePool  # what validation ranks


# ------------------------------------------------------------------------ 1. run directory
def static_total_steps(s: Settings) -> Optional[int]:
    """The run's length when the settings give it in steps; None when a phase is given in
    epochs (known once the data is counted, ``training/plan.py``)."""
    if s.epochs is not None or (s.ance_episodes and s.ance_episode_epochs is not None):
        return None
    return s.steps + s.ance_episodes * s.ance_episode_steps


def finished_run(model_dir: str, total_steps: Optional[int]) -> Optional[dict]:
    """The saved summary when ``model_dir`` holds a run that finished all its steps
    (``total_steps`` when known; its final parameters written), else None: rerunning a
    finished command keeps every file as it is."""
    path = os.path.join(model_dir, SUMMARY_FILE)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(model_dir, PARAMS_FILE))):
        return None
    summary = read_json(path)  # a damaged one is named (file, line)
    if not isinstance(summary, dict):
        return None
    done = summary.get("completed_steps")
    if done != summary.get("steps") or (total_steps is not None and done != total_steps):
        return None
    log.info("%s already finished all %d steps: nothing to train, every file is kept (use a "
             "new --model_dir to train again)", model_dir, done)
    return summary


# ----------------------------------------------------------------------------------- 2. data
def prepare_data(s: Settings):
    """The benchmark's passage table, the training tasks' examples with BM25 hard
    negatives, BM25 (``BM25Cache``), the dev records validated, each task's example count
    before the caps and the validation candidate pool."""
    data_dir = s.data_dir
    if data_dir is None:
        data_dir = os.path.join(s.model_dir, "minikilt")
        if jax.process_index() == 0:
            log.info("generating the mini-KILT (scale %g) into %s", s.minikilt_scale, data_dir)
            minikilt.generate(data_dir, scale=s.minikilt_scale, seed=s.seed)
        distributed.barrier("minikilt")  # the others read it once it is complete
    excluded = {get_task(n).name for n in s.exclude_tasks}  # unknown names fail, listing known
    task_list = [t for t in benchmark_tasks(data_dir, "train", s.tasks) if t.name not in excluded]
    if not task_list:
        raise ValueError(f"no tasks left to train on (tasks={s.tasks}, "
                         f"exclude_tasks={s.exclude_tasks})")
    unknown = sorted({get_task(n).name for n in s.ance_tasks or ()} -
                     {t.name for t in task_list})
    if unknown:
        raise ValueError(f"train.ance_tasks names {unknown}, which this run does not train "
                         f"(it trains {[t.name for t in task_list]})")
    source = os.path.join(data_dir, "knowledge_source.jsonl")
    cache, main = s.cache_dir or default_cache_dir(), jax.process_index() == 0
    with timed("passages"):
        table = distributed.main_first("passages", lambda: knowledge_source_table(
            source, s.chunk_mode, cache_dir=cache, progress=main))
    log.info("%d passages from %s (%s chunks)", len(table), source, s.chunk_mode)
    bm25 = BM25Cache(os.path.join(cache, "bm25"), table, progress=main)
    with timed("training examples and BM25 negatives"):
        data, sizes = load_task_data(data_dir, table, task_list, bm25, s.num_negatives,
                                     s.min_bleu, s.max_examples, s.seed, caps=s.task_caps)
    val_names = s.val_tasks or [t.name for t in benchmark_tasks(data_dir, "dev", None)]
    dev = {t.name: dev_subset(kilt.read_task_file(os.path.join(data_dir, t.filename("dev"))),
                              s.val_max_queries, s.seed, t.name)
           for t in benchmark_tasks(data_dir, "dev", val_names)}
    with timed("validation pool"):
        pool = distributed.main_first("validation_pool", lambda: candidate_pool(
            table, dev, bm25, s.val_pool_size, s.val_pool_bm25_depth, s.seed))
    bm25.release()  # saved: the end-of-run table reloads it (memory-mapped) if it needs it
    return table, data, bm25, dev, sizes, pool


# ---------------------------------------------------------------------------------- 3. model
def prepare_model(s: Settings, table: PassageTable, data: Dict[str, TaskData]):
    """``build_biencoder()`` (gin), the ``init_from`` parameters, the vocabulary and the
    input lengths capped by the model's position limit."""
    model, params, cfg = build_biencoder()
    if s.init_from:
        params = load_params_into(s.init_from, params)
    passage_len, eval_len = s.passage_len, s.eval_passage_len or s.passage_len
    query_len = s.query_len
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None:  # absolute positions cap every length (e.g. tiny BERT: 128)
        passage_len, eval_len = min(passage_len, max_pos), min(eval_len, max_pos)
        query_len = min(query_len or max_pos, max_pos)
    fmt = training_plan.query_format_of(s)
    vocab_texts = lambda: table.contents() + [fmt.text(d.task, e.query)
                                              for d in data.values() for e in d.examples]
    tokenizer = training_tokenizer(s.model_dir, s.tokenizer_dir, model.source_dir, vocab_texts,
                           cfg.vocab_size, s.init_from)
    return model, params, cfg, tokenizer, Lengths(passage_len, eval_len, query_len)


# ------------------------------------------------------------------------------ 4. optimizer
def make_optimizer(s: Settings, plan: dict, num_tasks: int):
    """(multitask transform, the full chain, the learning-rate schedule): the plan's
    multitask update over the stacked per-task gradients (one group for union batches),
    global-norm clipping, AdamW with the plan's schedule (``lr_schedule``: linear warm-up,
    then linear or cosine decay, over the run or each phase)."""
    schedule = training_plan.phase_schedule(plan)
    mt = training_plan.phase_multitask(plan, 1 if s.batching == "union" else num_tasks)
    tx = optax.chain(mt, optax.clip_by_global_norm(s.clip_norm),
                     optax.adamw(schedule, weight_decay=s.weight_decay))
    return mt, tx, schedule


# ---------------------------------------------------------------------------------- 5. state
def init_or_restore(s: Settings, params, tx, model, plan: ance.EpisodePlan):
    """The train state placed on the mesh (parameters sharded by the model's logical axes
    when ``model_parallel > 1``), restored from ``<model_dir>/checkpoints`` if any."""
    mesh = partitioning.make_mesh(s.model_parallel)
    row_multiple = math.lcm(mesh.shape["data"], s.grad_cache_chunk or 1)
    param_sh = (partitioning.logical_shardings(model.logical_specs(), mesh)
                if s.model_parallel > 1 else None)
    state = init_train_state(params, tx, s.seed)
    state_sh = state_shardings(state, mesh, param_sh)
    state = jax.device_put(state, state_sh)
    ckpt = Checkpointer(os.path.join(s.model_dir, "checkpoints"), keep=s.keep,
                        best_metric="avg_page_rprec")
    if ckpt.latest_step() is not None:  # an unreadable latest step falls back (warned)
        state, _, _ = ckpt.restore_intact(target=state)
        log.info("resumed from step %d of %d", int(state["step"]), plan.total_steps)
    return state, state_sh, ckpt, mesh, row_multiple


# ------------------------------------------------------------------------------- 6. the step
def compile_step(run: Run, model, tx, state, state_sh, mesh, row_multiple: int, data):
    """The jitted train step for this run's batch shapes, compiled now (with a message and
    its time: a big model takes minutes), and the batch builder."""
    s = run.s
    towers = jnp.asarray([model.tower_index(d.task) for d in data.values()], jnp.int32)
    sizes = {t: len(d.examples) for t, d in data.items()}
    union = s.batching == "union"
    sampler = (UnionSampler(sizes, s.global_batch, seed=s.seed) if union else
               MixingSampler(sizes, s.global_batch, c=s.mixing_c, seed=s.seed))
    union_rows = -(-s.global_batch // row_multiple) * row_multiple
    fmt = training_plan.query_format_of(s)

    def make_batch(step):  # reads run.data: an ANCE episode swaps the negatives in
        batch = build_step_batch(sampler.batch(step), run.data, run.tokenizer, run.table,
                                 run.lens.passage, s.num_negatives, fmt,
                                 rng=np.random.default_rng([s.seed, step]),
                                 query_len=run.lens.query,
                                 row_multiple=1 if union else row_multiple)
        return union_batch(batch, union_rows, run.tokenizer.pad_id) if union else batch

    probe = make_batch(0)
    batch_sh = batch_shardings(probe.arrays(), mesh)
    shapes = task_shapes_of(probe.arrays(), probe.task_query_lens, row_multiple)
    step_fn = make_train_step(model, tx, towers, mesh=mesh, state_sharding=state_sh,
                              batch_sharding=batch_sh, temperature=s.temperature,
                              per_task=s.per_task, grad_cache_chunk=s.grad_cache_chunk,
                              task_shapes=shapes, batching=s.batching)
    with timed(f"compiling the train step ({len(data)} tasks, batch {s.global_batch})"):
        distributed.compile_together(step_fn, state, put_batch(probe.arrays(), batch_sh))
    return step_fn, make_batch, batch_sh


# ------------------------------------------------------------------------------- 7. the loop
def train_loop(run: Run, state, state_sh, step_fn, make_batch, batch_sh, ckpt, mt, schedule,
               dev):
    """Steps from the restored one to the end (or ``halt_after``): ANCE episodes at their
    first step, validation every ``eval_every`` steps and at the end, checkpoints.
    Returns (state, the last validation, the initial model's validation)."""
    s, plan, total = run.s, run.plan, run.plan.total_steps
    logger = ScalarLogger(os.path.join(s.model_dir, "tb")) if run.main_process else None
    start = int(state["step"])
    if plan.episode_at(start) > 0 and start != plan.start(plan.episode_at(start)):
        use_episode(run, plan.episode_at(start), state["params"])  # resumed inside an episode
    result, initial = None, None
    if s.eval_at_start and start == 0:
        log.info("validating the initial (untrained) model")
        initial = validate_now(run, state, dev)
        log.info("initial model: val avg page R-prec %.4f", initial["avg_page_rprec"])
    end = total if s.halt_after is None else min(total, s.halt_after)
    ckpt_every = s.checkpoint_every or s.eval_every
    last_skipped = int(state["skipped"])
    bar = tqdm(range(start, end), desc="train", initial=start, total=total, unit="step",
               disable=not run.main_process or start >= end)
    for step in bar:
        episode = plan.episode_at(step)
        if episode and step == plan.start(episode):
            bar.write(f"ANCE episode {episode} of {plan.episodes} at step {step}: "
                      "mining negatives with the current model")
            with timed(f"ANCE episode {episode}: negatives"):
                use_episode(run, episode, state["params"])
            if s.reset_multitask_state:
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
        done, metrics = step + 1, None
        if done % s.eval_every == 0 or done == total:
            result = validate_now(run, state, dev)
            metrics = {"avg_page_rprec": result["avg_page_rprec"]}
            bar.write(f"step {done}: val avg page R-prec {result['avg_page_rprec']:.4f} " +
                      " ".join(f"{t}={r['page_rprec']:.3f}" for t, r in result["tasks"].items())
                      + ("" if run.pool.info["kind"] == "full" else f" ({run.pool.label()})"))
            if logger:
                logger.log(step, {"val/avg_page_rprec": result["avg_page_rprec"],
                                  **{f"val/{t}": r["page_rprec"] for t, r in result["tasks"].items()}})
        if metrics or done % ckpt_every == 0 or done == end:
            ckpt.save(done, state, {"sampler": {"step": done}, "episode": episode}, metrics=metrics)
    bar.close()
    ckpt.wait()
    if logger:
        logger.close()
    return state, result, initial


def validate_now(run: Run, state, dev):
    """Dense validation of the candidate pool on every process, with a process-local
    parameter copy; the result's ``corpus`` says what was ranked."""
    with timed(f"validation ({run.pool.label()})"):
        result = validate(run.model, distributed.host_local(state["params"]), run.tokenizer,
                          run.pool.table, dev, run.lens.eval_passage,
                          training_plan.query_format_of(run.s), progress=run.main_process,
                          query_len=run.lens.query, batch_size=run.s.eval_batch_size)
    return {**result, "corpus": {**run.pool.info, "label": run.pool.label()}}


def use_episode(run: Run, episode: int, params_now) -> None:
    """Swaps ``episode``'s dense negatives into ``run.data``: loaded when that episode's
    file exists (a resumed run), else mined with the current parameters (each process
    encoding its share of the corpus into ``ance/episode_<e>_emb/``) and saved by process
    0, which then removes the embeddings."""
    s = run.s
    params_now = distributed.host_local(params_now)  # mined on every process alike
    path = ance.negatives_path(s.model_dir, episode)
    mined = {n: d for n, d in run.data.items() if s.ance_tasks is None or n in s.ance_tasks}
    if os.path.exists(path):
        negs = ance.load_negatives(path, mined)
    else:
        negs = ance.mine_episode(run.model, params_now, run.tokenizer, run.table, mined,
                                 num=s.num_negatives, seed=s.seed + episode,
                                 passage_len=run.lens.eval_passage, query_len=run.lens.query,
                                 marker=training_plan.query_format_of(s), batch_size=s.eval_batch_size,
                                 depth=s.ance_depth, sample=s.ance_sample,
                                 index_spec=s.ance_index_spec, progress=run.main_process,
                                 emb_dir=ance.episode_emb_dir(s.model_dir, episode))
        if run.main_process:
            ance.save_negatives(path, negs)
    distributed.barrier("ance_negatives")  # saved before the embeddings go
    if run.main_process:
        ance.remove_episode_embeddings(s.model_dir, episode)
    for name, d in mined.items():
        run.data[name] = TaskData(d.task, d.examples, negs[name])


# -------------------------------------------------------------------------------- 8. the end
def finish(run: Run, state, ckpt, bm25, dev, result, initial) -> dict:
    """Writes ``final_params.safetensors``, ``summary.json`` and (``compare_bm25``) the
    comparison table when every step is done; returns the summary."""
    s, total = run.s, run.plan.total_steps
    finished = int(state["step"]) >= total
    summary = {"steps": total, "completed_steps": int(state["step"]),
               "skipped_steps": int(state["skipped"]), "tasks": list(run.data),
               "best_step": ckpt.best_step(), "validation": _metrics(result),
               "initial_validation": _metrics(initial)}
    final = flat_params(state["params"]) if finished else None  # on every process: may gather
    if run.main_process and finished:  # (also an evaluation-only run: steps=0)
        if s.compare_bm25 and (result or initial):
            pool_bm25 = (bm25 if run.pool.info["kind"] == "full" else  # BM25 ranks the pool too
                         BM25Cache(bm25.root, run.pool.table, bm25.bm25_params, progress=False))
            comparison_table(s.model_dir, pool_bm25, run.pool.table, dev, result, initial,
                             int(state["step"]), run.pool.label())
        save_file(final, os.path.join(s.model_dir, PARAMS_FILE))
        write_summary(os.path.join(s.model_dir, SUMMARY_FILE), summary)  # last: "finished"
    return summary


def flat_params(params) -> Dict[str, np.ndarray]:
    """``{"a/b/c": array}`` (the layout of ``final_params.safetensors``); with several
    processes, every process must call it (parameters sharded across them are gathered)."""
    return flat_numpy(distributed.to_numpy(params))


def _metrics(result):
    return None if result is None else {"avg_page_rprec": result["avg_page_rprec"],
                                        "tasks": result["tasks"], "corpus": result["corpus"]}


# -------------------------------------------------------------------------- command line
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required: the run's output directory")
    cli.absolute_flags(FLAGS, "model_dir")
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    cli.absolute_gin_paths()
    result = train(model_dir=FLAGS.model_dir, allow_config_change=FLAGS.allow_config_change,
                   dry_run=FLAGS.dry_run)
    if not FLAGS.dry_run:  # a dry run has printed its plan
        print(final_report(FLAGS.model_dir, result))


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Output directory (checkpoints, logs, summary).")
    flags.DEFINE_boolean("allow_config_change", False, "Resume a run whose saved config.gin "
                         "differs (the old one is kept as config.<n>.gin).")
    flags.DEFINE_boolean("dry_run", False, "Train nothing: print the training plan (tasks, "
                         "batch sizes, phases, schedule) and write <model_dir>/plan.json.")


TOOL = "train"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
