r"""Zero- and few-shot transfer to held-out tasks (MT-DPR Table 5), end to end.

    python -m multiret_jax.experiments.zero_few_shot --out_dir=runs/zfs_tiny --held_out=nq,fever \
        --base_gin=leave_one_out_tiny.gin \
        --few_shot_gin=few_shot_128_tiny.gin,few_shot_1024_tiny.gin
    python -m multiret_jax.experiments.zero_few_shot --data_dir=/data/kilt --out_dir=runs/zfs \
        --gin_param="build_biencoder.checkpoint_dir='/ckpt/bert-base-uncased'" \
        --multitask_dir=runs/mtdpr            # adds the full multi-task model's row

For every held-out task T (``--held_out``; default every task with a train and a dev file
in the data directory):

1. **leave-one-out**: ``--base_gin`` with ``HELD_OUT=T`` trains on every task but T
   (``<out_dir>/<T>/leave_one_out``). Its final validation covers every dev file, T's too
   (``train.val_tasks`` unset), so
2. **zero-shot** is that run's ``summary.json`` "validation" on T's dev set: no separate
   evaluation run.
3. **few-shot**: each ``--few_shot_gin`` (``TASKS=[HELD_OUT]``, ``MAX_EXAMPLES=N``)
   fine-tunes the leave-one-out model (``train.init_from=<its model_dir>``, and its
   vocabulary when it built one) on a seeded sample of N of T's training examples
   (``training.inputs.load_task_data``: ``random.Random(f"{seed}/{task}").sample``, the same for
   every run with that seed) into ``<out_dir>/<T>/<gin name>``. The 128-sample is a subset
   of the 1,024-sample for every KILT training set (> 4,117 examples) but not for all sizes
   (between ~1,050 and ~4,100 ``random.sample`` switches algorithm with the sample size). With
   ``train.eval_at_start`` on (``--check_init``, default), its "initial_validation" must
   equal the leave-one-out validation: the driver checks that it really started from it.
4. **table**: rows BM25 (``evaluate.py`` on the held-out tasks' dev sets, or
   ``--bm25_dir``), zero-shot, one row per few-shot config, and the full multi-task model
   (``--multitask_dir``, optional); columns the held-out tasks (papers' order) + Avg; one
   section per ``--metrics`` (page R-precision first: the papers' metric), signed
   differences to ``--reference`` if given. Printed, and written to
   ``<out_dir>/table.{md,csv,json}`` (``compare.write_comparison``; the JSON also lists
   every cell's source file, the stages, the notes and the initialisation checks).

Fewer than N examples: ``train`` keeps *all* of a task's examples when it has fewer than
``max_examples`` (no error). The driver counts T's training records before anything runs;
with fewer than N, ``--too_few=cap`` (default) runs on all of them and says so in the plan,
the log and the table's notes; ``--too_few=fail`` stops before training. (The count is of
records in the train file; the provenance BLEU filter may drop a few more, the train log
says how many: "kept k/n examples".)

Steps: the plan prints each few-shot stage's passes over its examples (steps x batch /
examples). ``few_shot_128.gin`` / ``few_shot_1024.gin`` make 100 passes each (100 / 800 steps
at batch 128, DPR's 100 epochs for its small training sets); the ``*_tiny`` variants keep
``runs/tiny.gin``'s 300 steps at batch 64. ``--jax_cache_dir`` gives the stages JAX's
persistent compilation cache: stages of equal shapes (few-shot ones) then compile once.

Layout: ``<out_dir>/bm25`` (evaluate.py output), ``<out_dir>/<T>/leave_one_out`` and
``<out_dir>/<T>/<few-shot gin name>`` (train model_dirs, each with ``zero_few_shot.log``:
the stage's output), ``<out_dir>/table.{md,csv,json}``.

Each stage is a subprocess (``python -m multiret_jax.train`` / ``multiret_jax.evaluate``):
gin's configuration is process-global (includes, macros, the operative config each run
writes to ``config.gin``), and so are JAX's compiled executables and live device buffers;
a fresh process per stage starts every run from exactly the state its command describes,
frees the accelerator memory of the previous model, survives a stage that crashes or is
killed (OOM, XLA abort) with the driver still able to report which, and is the very
command (printed, and stored in ``<run_dir>/zero_few_shot.json``) that reruns or debugs that
stage alone. The cost, a few seconds of imports and compilation per stage, is negligible
next to training. The driver parses each stage's gin in-process only to check the plan
(clearing gin after each) before anything runs.

Resuming: a stage whose run directory has a ``summary.json`` with all its steps completed
(BM25: a ``results.json`` with every held-out task) is skipped; an unfinished one is rerun
with the same command, and ``train`` resumes from its latest checkpoint. A directory made
by a *different* command (other gin files or bindings) stops the driver before anything
runs, unless ``--reuse_changed``.
"""

from __future__ import annotations


from absl import app, flags, logging

from multiret_jax import cli
from multiret_jax.experiments import compare
from multiret_jax.experiments.zero_few_shot.driver import run_zero_few_shot
from multiret_jax.experiments.zero_few_shot.plan import Options

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the stages log; the driver prints its progress
    cli.absolute_flags(FLAGS, "out_dir", "data_dir", "bm25_dir", "multitask_dir",
                       "jax_cache_dir")
    opts = Options(
        out_dir=FLAGS.out_dir, data_dir=FLAGS.data_dir, held_out=FLAGS.held_out,
        base_gin=FLAGS.base_gin, few_shot_gins=FLAGS.few_shot_gin, gin_params=FLAGS.gin_param,
        base_gin_params=FLAGS.base_gin_param, few_shot_gin_params=FLAGS.few_shot_gin_param,
        bm25=FLAGS.bm25, bm25_dir=FLAGS.bm25_dir, bm25_gin_params=FLAGS.bm25_gin_param,
        multitask_dir=FLAGS.multitask_dir, metrics=FLAGS.metrics, reference=FLAGS.reference,
        too_few=FLAGS.too_few, check_init=FLAGS.check_init, reuse_changed=FLAGS.reuse_changed,
        minikilt_scale=FLAGS.minikilt_scale, quiet=FLAGS.quiet, dry_run=FLAGS.dry_run,
        jax_cache_dir=FLAGS.jax_cache_dir)
    run_zero_few_shot(opts)  # a PlanError (ValueError) is one line, exit 2 (cli.run)


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    flags.DEFINE_string("out_dir", None, "Output directory (a run dir per stage, table.*).",
                        required=True)
    flags.DEFINE_string("data_dir", None, "KILT-format benchmark (default: the generated "
                        "mini-KILT in <out_dir>/minikilt).")
    flags.DEFINE_list("held_out", None, "Held-out tasks (default: every task with a train "
                      "and a dev file).")
    flags.DEFINE_string("base_gin", "leave_one_out.gin", "Leave-one-out experiment (HELD_OUT).")
    flags.DEFINE_list("few_shot_gin", ["few_shot_128.gin", "few_shot_1024.gin"],
                      "Few-shot experiments (HELD_OUT, init_from); empty: zero-shot only.")
    flags.DEFINE_multi_string("gin_param", [], "Gin binding for every training stage.")
    flags.DEFINE_multi_string("base_gin_param", [], "Gin binding for leave-one-out stages.")
    flags.DEFINE_multi_string("few_shot_gin_param", [], "Gin binding for few-shot stages.")
    flags.DEFINE_bool("bm25", True, "Include the BM25 row.")
    flags.DEFINE_string("bm25_dir", None, "An evaluate.py output dir with the held-out tasks "
                        "(default: run evaluate.py into <out_dir>/bm25).")
    flags.DEFINE_multi_string("bm25_gin_param", [], "Gin binding for the BM25 evaluation.")
    flags.DEFINE_string("multitask_dir", None, "The full multi-task model's model_dir (or an "
                        "evaluate.py dir): adds its row.")
    flags.DEFINE_list("metrics", ["page_rprec", "passage_rprec"], "Table sections "
                      f"({compare.METRIC_HELP}; train runs have R-precision and page recall@5).")
    flags.DEFINE_string("reference", None, "Row to subtract from the others (e.g. BM25).")
    flags.DEFINE_enum("too_few", "cap", ["cap", "fail"], "Held-out task with fewer training "
                      "records than a few-shot config's max_examples: train on all of them "
                      "(noted) or stop before training.")
    flags.DEFINE_bool("check_init", True, "Validate few-shot runs at step 0 and check that "
                      "it equals the leave-one-out validation.")
    flags.DEFINE_bool("reuse_changed", False, "Keep run dirs made by a different command.")
    flags.DEFINE_float("minikilt_scale", 1.0, "Size of the generated mini-KILT (no --data_dir).",
                       lower_bound=1e-6)
    flags.DEFINE_bool("quiet", False, "Stage output to the logs only (not to the terminal).")
    flags.DEFINE_string("jax_cache_dir", None, "JAX persistent compilation cache directory "
                        "for the stages (few-shot stages of one shape then compile once).")
    flags.DEFINE_bool("dry_run", False, "Print the plan and the commands; run nothing.")


TOOL = "zero_few_shot"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
