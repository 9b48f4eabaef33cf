r"""Streaming corpus encoding into verified ``.npy`` shards, resumable and splittable.

    python -m multiret_jax.index.encode --model_dir=runs/taco_tiny \
        --out_dir=runs/taco_tiny/emb        # the run's config.gin; data: <model_dir>/minikilt
    python -m multiret_jax.index.encode --model_dir=RUN --data_dir=KILT \
        --out_dir=EMB --shard_id=3 --num_shards=8 --dtype=float16   # job 3 of 8
    python -m multiret_jax.index.encode --gin_file=taco.gin --model_dir=OLD_RUN ...  # no config.gin

    encode_corpus(encode_fn, tokenizer, table, out_dir, fingerprint="run-7")
    for ids, emb in iter_shards(out_dir, table):  # verified, one memmapped shard at a time
        index.add(emb)
    emb = load_embeddings(out_dir, table)         # [P, D], aligned to table rows

Job ``shard_id`` of ``num_shards`` encodes a contiguous block of whole shards of
``shard_size`` table rows into ``emb_<k>.npy`` + ``ids_<k>.npy`` and its own
``manifest_<shard_id>-of-<num_shards>.json`` (format and loaders: ``shards.py``; the
encoder: ``shard_encoding.py``; both re-exported here), so jobs never write the same file
and their union is the single-job output. Memory is O(batch + shard): a shard is tokenized, encoded (longest texts first, lengths padded to
multiples of 16 as in ``encoding.encode_texts``, batch rows split over the local devices
on a 1-D mesh), written atomically and recorded in the manifest before the next starts.

A rerun resumes: finished shards are verified (files, row counts, sha256, ids against the
table) and only missing or invalid ones are encoded again, invalid ones with a warning. A
directory made for another table, model, tokenizer or settings is refused (ValueError)
unless ``overwrite=True``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from absl import flags

from multiret_jax import cli
from multiret_jax.gin_utils import define_gin_flags
from multiret_jax.index.shard_encoding import (DTYPES, encode_corpus, params_fingerprint,
                                               passage_encoder, release_memory,
                                               tokenizer_fingerprint)
from multiret_jax.index.shards import (iter_shards, job_shards, load_embeddings, load_shards,
                                       manifest_path, read_manifests)
from multiret_jax.run_dir import load_run, parse_run_config, run_table

__all__ = ["encode_corpus", "encode_run", "passage_encoder", "params_fingerprint",
           "tokenizer_fingerprint", "release_memory",
           "iter_shards", "load_shards", "load_embeddings", "read_manifests", "job_shards",
           "manifest_path"]


def encode_run(model_dir: str, out_dir: str, data_dir: Optional[str] = None,
               params_path: Optional[str] = None, tokenizer_dir: Optional[str] = None,
               passage_len: Optional[int] = None, chunk_mode: Optional[str] = None,
               **kwargs) -> Dict[str, Any]:
    """``encode_corpus`` with a trained run: ``build_biencoder()`` as the parsed gin config
    (the run's ``config.gin`` via ``run_dir.parse_run_config``, or its ``--gin_file`` /
    ``--gin_param``) builds it, with the run's parameters (``run_dir.load_run``).

    Args:
      model_dir: the run directory (``train.model_dir``).
      out_dir: the shard directory.
      data_dir: KILT directory (``knowledge_source.jsonl``) or a saved ``PassageTable``;
        default gin ``train.data_dir``, else ``<model_dir>/minikilt``.
      params_path: default ``<model_dir>/final_params.safetensors``.
      tokenizer_dir: default as in training (``run_dir.find_tokenizer``).
      passage_len, chunk_mode: default gin ``train.eval_passage_len`` / ``train.passage_len``
        (capped by the model's positions) and ``train.chunk_mode``.
      **kwargs: ``encode_corpus`` options (shard_size, batch_size, shard_id, ...).
    """
    run = load_run(model_dir, params_path, tokenizer_dir, passage_len)
    table, data_dir = run_table(model_dir, data_dir, chunk_mode)
    return encode_corpus(passage_encoder(run.model, run.params), run.tokenizer, table,
                         out_dir, fingerprint=run.fingerprint, passage_len=run.passage_len,
                         metadata={"params": os.path.abspath(run.params_path),
                                   "data_dir": os.path.abspath(data_dir)}, **kwargs)


def main(argv):
    del argv
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "model_dir", "out_dir", "data_dir", "params", "tokenizer_dir")
    if FLAGS.shard_id >= FLAGS.num_shards:
        raise cli.UsageError(f"--shard_id={FLAGS.shard_id} must be below "
                             f"--num_shards={FLAGS.num_shards}")
    parse_run_config(FLAGS.model_dir, FLAGS.gin_file, FLAGS.gin_param)
    res = encode_run(FLAGS.model_dir, FLAGS.out_dir, FLAGS.data_dir, FLAGS.params,
                     FLAGS.tokenizer_dir, FLAGS.passage_len, FLAGS.chunk_mode,
                     shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size,
                     shard_id=FLAGS.shard_id, num_shards=FLAGS.num_shards, dtype=FLAGS.dtype,
                     overwrite=FLAGS.overwrite)
    print(f"{FLAGS.out_dir}: job {FLAGS.shard_id} of {FLAGS.num_shards} done: "
          f"{len(res['encoded'])} shards encoded, {len(res['reused'])} reused")


FLAGS = flags.FLAGS


def define_flags() -> None:
    """This command's flags (on absl's global FLAGS)."""
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Trained run directory.", required=True)
    flags.DEFINE_string("out_dir", None, "Shard directory.", required=True)
    flags.DEFINE_string("data_dir", None, "KILT directory or saved PassageTable.")
    flags.DEFINE_string("params", None, "Parameter file (default: final_params.safetensors).")
    flags.DEFINE_string("tokenizer_dir", None, "Tokenizer directory.")
    flags.DEFINE_integer("passage_len", None, "Passage length in tokens.",
                         lower_bound=1)
    flags.DEFINE_enum("chunk_mode", None, ["page", "paragraph"], "Passages per page or per "
                      "paragraph (default: the run's).")
    flags.DEFINE_integer("shard_size", 100_000, "Passages per shard file.",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 128, "Passages per device call (all local devices).",
                         lower_bound=1)
    flags.DEFINE_integer("shard_id", 0, "This job's index (0 .. num_shards - 1).",
                         lower_bound=0)
    flags.DEFINE_integer("num_shards", 1, "Number of jobs.",
                         lower_bound=1)
    flags.DEFINE_enum("dtype", "float32", DTYPES, "Stored dtype.")
    flags.DEFINE_boolean("overwrite", False, "Replace shards made otherwise.")


TOOL = "index.encode"

if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
