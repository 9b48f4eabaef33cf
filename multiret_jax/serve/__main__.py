r"""Serves a trained run's retrieval over HTTP.

    python -m multiret_jax.retrieve --model_dir=RUN --out_dir=OUT    # builds OUT/index/Flat
    python -m multiret_jax.serve --model_dir=RUN --index_dir=OUT/index/Flat --port=8000
    curl -s localhost:8000/search -H 'content-type: application/json' \
        -d '{"queries": ["who wrote the iliad"], "task": "nq", "k": 5}'
    # or open http://localhost:8000/ : a search page (task, query; results, words marked)

At start: the run (its ``config.gin``, parameters and tokenizer, as ``retrieve.py`` loads
them), its passage table (``--data_dir``, default the run's) and the index saved in
``--index_dir`` by ``retrieve.py``, read only with every checksum verified (a damaged
file, or an index of other embeddings, is an error naming the file); then every
(batch, length) shape the encoder will see is compiled, and the server listens. API and
limits: ``serve/app.py``; batching: ``serve/batcher.py``.
"""

from __future__ import annotations

import logging

from absl import flags

from multiret_jax import cli
from multiret_jax.gin_utils import define_gin_flags

log = logging.getLogger(__name__)
FLAGS = flags.FLAGS
TOOL = "serve"


def main(argv):
    del argv
    cli.setup_logging()
    cli.absolute_flags(FLAGS, "model_dir", "index_dir", "data_dir", "params", "tokenizer_dir")
    try:
        import uvicorn

        from multiret_jax.serve.app import Limits, create_app
    except ImportError as e:
        raise cli.UsageError(f"{e}; the service needs its extra: pip install -e '.[serve]'")
    from multiret_jax.serve.engine import load_engine
    from multiret_jax.serve.metrics import Metrics

    metrics = Metrics()
    metrics.listen_to_jax()
    engine = load_engine(FLAGS.model_dir, FLAGS.index_dir, FLAGS.data_dir, tasks=FLAGS.tasks,
                         max_batch=FLAGS.max_batch, gin_files=FLAGS.gin_file,
                         gin_params=FLAGS.gin_param, params_path=FLAGS.params,
                         tokenizer_dir=FLAGS.tokenizer_dir, nprobe=FLAGS.nprobe,
                         ef_search=FLAGS.ef_search, on_call=metrics.encoder_call)
    warm = engine.warm_up()
    metrics.warmed_up(warm)
    log.info("compiled %d shapes (batch %s x length %s) in %.1fs", warm["shapes"],
             warm["batch_buckets"], warm["length_buckets"], warm["seconds"])
    limits = Limits(FLAGS.max_queries, FLAGS.max_query_chars,
                    min(FLAGS.max_k, engine.index.ntotal))
    app = create_app(engine, max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
                     limits=limits, metrics=metrics,
                     info={"model_dir": FLAGS.model_dir, "index_dir": FLAGS.index_dir})
    log.info("serving %d tasks over %d passages on http://%s:%d (docs: /docs)",
             len(engine.tasks), engine.index.ntotal, FLAGS.host, FLAGS.port)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="warning", access_log=False)


def define_flags() -> None:
    define_gin_flags()
    flags.DEFINE_string("model_dir", None, "Trained run directory.", required=True)
    flags.DEFINE_string("index_dir", None, "Index saved by multiret_jax.retrieve "
                        "(<out_dir>/index/<spec>).", required=True)
    flags.DEFINE_string("data_dir", None, "KILT directory or saved passage table (default: "
                        "the run's data).")
    flags.DEFINE_list("tasks", None, "Tasks served (default: every registered task).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every one).")
    flags.DEFINE_integer("port", 8000, "Port to listen on.", lower_bound=1, upper_bound=65535)
    flags.DEFINE_integer("max_batch", 32, "Queries per encoder call.", lower_bound=1)
    flags.DEFINE_float("max_wait_ms", 5.0, "How long a request waits for others to share its "
                       "encoder call.", lower_bound=0.0)
    flags.DEFINE_integer("max_queries", 256, "Queries per request.", lower_bound=1)
    flags.DEFINE_integer("max_query_chars", 100_000, "Characters per query.", lower_bound=1)
    flags.DEFINE_integer("max_k", 100, "Largest k a request may ask for (at most the index "
                         "size).", lower_bound=1)
    flags.DEFINE_integer("nprobe", None, "IVF lists searched.", lower_bound=1)
    flags.DEFINE_integer("ef_search", None, "HNSW beam width (at least k is used).",
                         lower_bound=1)
    flags.DEFINE_string("params", None, "Parameter file (default: final_params.safetensors).")
    flags.DEFINE_string("tokenizer_dir", None, "Tokenizer directory (default: the run's).")


if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL)
