r"""``python -m multiret_jax.export``: a trained run as HF / sentence-transformers directories.

    python -m multiret_jax.export --model_dir=runs/taco_tiny --out_dir=runs/taco_tiny/export
    python -m multiret_jax.export --model_dir=RUN --out_dir=DIR --format=sentence-transformers

Everything is checked first (the run's ``config.gin``, ``final_params.safetensors``,
``summary.json`` and tokenizer; the format; ``--out_dir``); then the towers are written
beside and swapped in. A non-empty ``--out_dir`` is replaced only when it is an export: of
the same run (same parameters and model config), or of another with ``--overwrite``; a
directory holding anything else is refused.
"""

from __future__ import annotations

from absl import flags

from multiret_jax import cli
from multiret_jax.export.plan import FORMATS
from multiret_jax.export.write import export_run
from multiret_jax.gin_utils import define_gin_flags

FLAGS = flags.FLAGS
TOOL = "export"


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "model_dir", "out_dir", "params")
    plan = export_run(FLAGS.model_dir, FLAGS.out_dir, FLAGS.format, FLAGS.overwrite,
                      FLAGS.gin_file, FLAGS.gin_param, FLAGS.params)
    print(f"exported {plan.run.model_dir} ({plan.encoder}, {plan.pooling} pooling) as "
          f"{plan.fmt} into {plan.out_dir}:")
    for tower in plan.towers:
        tasks = f": queries of {', '.join(tower.tasks)}" if tower.tasks else ""
        print(f"  {tower.path or '.'}  {tower.role} tower{tasks}")
    if plan.pooling == "encdec":
        print("T5 ST5-EncDec: each tower is a transformers T5Model; an embedding is ONE "
              "decoder step from the start token (README.md shows the code)")
    print(f"query formats and validation figures in {plan.out_dir}/README.md")


def define_flags() -> None:
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Trained run directory.", required=True)
    flags.DEFINE_string("out_dir", None, "Export directory.", required=True)
    flags.DEFINE_enum("format", "hf", list(FORMATS), "hf: transformers directories; "
                      "sentence-transformers: the same plus modules, pooling and prompts.")
    flags.DEFINE_string("params", None, "Parameter file (default: final_params.safetensors).")
    flags.DEFINE_boolean("overwrite", False, "Replace an --out_dir that holds an export of "
                         "another run (a directory that is not an export is never replaced).")


if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
