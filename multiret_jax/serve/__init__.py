"""A retrieval service over a trained run and its saved FAISS index (FastAPI + uvicorn,
``pip install -e ".[serve]"``)::

    python -m multiret_jax.serve --model_dir=RUN --index_dir=OUT/index/Flat \
        [--host=127.0.0.1 --port=8000 --max_batch=32 --max_wait_ms=5]

- ``engine``: the run's query encoder (bucketed shapes, compiled at start), the index
  (read only, checksums verified) and the passage table.
- ``batcher``: requests arriving within ``max_wait_ms`` share one encoder call.
- ``app``: the HTTP API (``/search``, ``/encode``, ``/health``, ``/metrics``, ``/docs``) and
  the search page at ``/`` (``page.html``).
- ``metrics``: request, latency, batch and compilation counters.
- ``__main__``: the command.
"""
