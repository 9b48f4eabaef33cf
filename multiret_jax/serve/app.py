"""The HTTP API (FastAPI): request and response models, validation with 4xx messages,
request metrics. ``create_app`` wraps a loaded, warmed-up ``Engine``.

    POST /search   {"queries": [...], "task": "nq", "k": 10}
                   -> {"results": [[{"passage_id", "wikipedia_id", "title", "score", "text"}]]}
    POST /encode   {"queries": [...], "task": "nq"} -> {"embeddings": [[...]], "dim": D}
    GET  /health   status, model, index and served tasks
    GET  /metrics  requests, latency percentiles, batch sizes, compilations after warm-up
    GET  /docs, /openapi.json
    GET  /         a search page (``page.html``: task, query, results with query words marked)

A malformed JSON body is a 400; a body of the wrong shape, an unknown task, an empty or
too long query list, a blank or too long query and ``k`` out of range are 422s, each with
a ``detail`` message saying what to change. A failure inside a batch is a 500 for the
requests of that batch; the server goes on serving either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import logging
import time
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from multiret_jax.data.tasks import Task
from multiret_jax.serve.batcher import Batcher
from multiret_jax.serve.engine import Engine, Job
from multiret_jax.serve.metrics import Metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for: queries per request, characters per query, ``k``."""

    max_queries: int = 256
    max_query_chars: int = 100_000
    max_k: int = 100


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: List[StrictStr] = Field(description="Raw queries (a KILT record's 'input'); "
                                     "the task's marker is added as in training.")
    task: StrictStr = Field(description="The queries' task, e.g. 'nq' (GET /health lists them).")


class SearchRequest(EncodeRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"queries": ["who wrote the iliad"], "task": "nq", "k": 10}]})
    k: StrictInt = Field(10, description="Passages per query.")


class Hit(BaseModel):
    passage_id: str
    wikipedia_id: str
    title: str
    score: float = Field(description="Inner product of query and passage embeddings.")
    text: str


class SearchResponse(BaseModel):
    results: List[List[Hit]] = Field(description="Per query, its passages best first.")


class EncodeResponse(BaseModel):
    embeddings: List[List[float]]
    dim: int


def search_page() -> str:
    """The search page (one static HTML file with inline CSS and JavaScript, package data)."""
    return importlib.resources.files(__package__).joinpath("page.html").read_text("utf-8")


def _invalid(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


def check_request(req: EncodeRequest, engine: Engine, limits: Limits) -> Task:
    """The request's task, after checking the request against ``limits``; HTTP 422 with
    the reason otherwise."""
    task = engine.tasks.get(req.task)
    if task is None:
        raise _invalid(f"unknown task {req.task!r}; this server serves {sorted(engine.tasks)}")
    n = len(req.queries)
    if not 1 <= n <= limits.max_queries:
        raise _invalid(f"queries: give 1 to {limits.max_queries} queries per request, got {n}")
    for i, q in enumerate(req.queries):
        if not q.strip():
            raise _invalid(f"queries[{i}]: empty query")
        if len(q) > limits.max_query_chars:
            raise _invalid(f"queries[{i}]: {len(q)} characters, at most "
                           f"{limits.max_query_chars}")
    if isinstance(req, SearchRequest) and not 1 <= req.k <= limits.max_k:
        raise _invalid(f"k: must be 1 to {limits.max_k}, got {req.k}")
    return task


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, 422 for a body of the wrong shape; one message."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        why = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (why.get("ctx") or {}).get("error", why.get("msg", ""))
        return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts)}, status_code=422)


def create_app(engine: Engine, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               limits: Limits = Limits(), metrics: Optional[Metrics] = None,
               info: Optional[Dict[str, Any]] = None) -> FastAPI:
    """The FastAPI app over a loaded (and warmed-up) engine.

    Args:
      engine: the ``Engine``.
      max_batch, max_wait_ms: the batcher's settings (``Batcher``).
      limits: per-request limits.
      metrics: the counters (default new ones; the engine's ``on_call`` should feed them).
      info: more fields for ``GET /health`` (model and index directories).
    """
    metrics = metrics or Metrics()
    page = search_page()
    batcher = Batcher(engine.run_jobs, max_batch, max_wait_ms, on_batch=metrics.batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="multiret_jax retrieval service", lifespan=lifespan,
                  description="Dense retrieval with a trained multiret_jax run over its FAISS "
                              "index; queries formatted as in training.")
    app.add_exception_handler(RequestValidationError, _validation_error)
    known = {"/search", "/encode", "/health", "/metrics"}

    @app.middleware("http")
    async def record(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        if path in known:
            metrics.request(path, response.status_code, time.perf_counter() - t0)
        return response

    async def submit(job: Job) -> Any:
        try:
            return await batcher.submit(job)
        except Exception as e:  # noqa: BLE001 -- this request fails, the server goes on
            raise HTTPException(status_code=500, detail=f"{type(e).__name__}: {e}") from None

    @app.post("/search", response_model=SearchResponse)
    async def search(req: SearchRequest) -> Any:
        """Top-``k`` passages of the index for each query."""
        task = check_request(req, engine, limits)
        return await submit(Job("search", task, req.queries, req.k))

    @app.post("/encode", response_model=EncodeResponse)
    async def encode(req: EncodeRequest) -> Any:
        """Query embeddings (float32 values), as the search uses them."""
        task = check_request(req, engine, limits)
        return await submit(Job("encode", task, req.queries))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        """The search page: it calls ``/health`` (tasks) and ``/search``."""
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        """Ready (the index loaded and verified, every shape compiled)."""
        return {"status": "ok", "tasks": sorted(engine.tasks), "num_passages": len(engine.table),
                "index_spec": engine.index.spec, "dim": engine.dim, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "limits": dataclasses.asdict(limits),
                **(info or {})}

    @app.get("/metrics")
    async def get_metrics() -> Dict[str, Any]:
        """Requests per endpoint (count, errors, latency p50/p90/p99 in ms), batches,
        encoder calls per padded shape, compilations since the warm-up."""
        return metrics.snapshot()

    return app
