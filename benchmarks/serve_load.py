"""Load on the retrieval service (``python -m multiret_jax.serve``) against the same
engine called in-process: what HTTP, JSON and micro-batching cost.

    python -m multiret_jax.retrieve --model_dir=RUN --out_dir=OUT     # builds OUT/index/Flat
    python benchmarks/serve_load.py --model_dir=RUN --index_dir=OUT/index/Flat [--task=nq]
        [--k=10] [--clients=1,8,32] [--requests=256] [--max_batch=32] [--max_wait_ms=5]
        [--queries_file=FILE] [--data_dir=DIR] [--tasks=nq,...] [--port=0]

Queries: the ``--task``'s dev file in the run's data directory (``train.data_dir`` of its
``config.gin``, as ``serve`` / ``retrieve`` find it; or ``--data_dir``), or
``--queries_file`` (one query a line, or KILT ``.jsonl`` records whose ``input`` is
taken), cycled to ``--requests`` queries. Every measurement uses those same queries, one
query per request, the same ``k``.

Served: the real server is started as a subprocess (its own process group, on a free
port unless ``--port``; its log in a temporary file, removed after a clean run) with
``--max_batch``/``--max_wait_ms`` and ``--tasks`` (default: only ``--task``, so fewer
shapes compile), and is waited for on ``GET /health``. For each client count N, N
threads (one ``httpx.Client`` each, one untimed request first to open its connection)
send the ``--requests`` queries between them (client c sends queries c, c+N, ...) back to
back; each request's latency is recorded, q/s is ``--requests`` over the wall time from
the start to the last answer.
``GET /metrics`` before and after each level gives the batches the server formed at that
level (queries per batch). The server is stopped (SIGTERM to its process group, then
SIGKILL) before anything else, also on an error or Ctrl-C.

In-process, after the server stopped (the two never share the cores): ``load_engine`` and
``warm_up`` with the same ``max_batch`` and tasks, then ``Engine.run_jobs`` (what the
batcher's worker calls: tokenise, encode, FAISS search, passage fields) on the same
queries: one query per call (the latency a lone client could get without HTTP), batches
of ``max_batch`` one-query jobs (the best throughput), and, per client count, batches of
the sizes the server formed at that level (the same compute as served, minus HTTP, JSON
and waiting).

Prints the table (ratios: served q/s over in-process q/s with the server's batch sizes,
served p50 over the in-process one-query p50), then, last:

    serve_load: 1/8/32 clients: X/Y/Z q/s (in-process 1/call A q/s, batched B q/s),
        p50 a/b/c ms (in-process P), p99 d/e/f ms, served/in-process q/s r1/r2/r3

The machine's other load shows in every figure; the ratios, measured minutes apart, are
less noisy than the absolute numbers but not free of it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- queries
def load_queries(args) -> Tuple[List[str], str]:
    """The queries of the benchmark (blank ones left out) and where they came from."""
    if args.queries_file:
        path = args.queries_file
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                queries = [json.loads(line)["input"] for line in f if line.strip()]
            else:
                queries = [line.rstrip("\n") for line in f]
    else:
        from multiret_jax.data import kilt
        from multiret_jax.data.tasks import get_task
        from multiret_jax.run_dir import parse_run_config, run_data_dir
        if not args.data_dir:
            parse_run_config(args.model_dir)
        data_dir = run_data_dir(args.model_dir, args.data_dir)
        path = os.path.join(data_dir, get_task(args.task).filename("dev"))
        if not os.path.isfile(path):
            sys.exit(f"serve_load: {path}: missing (give --data_dir with the task files, or "
                     "--queries_file)")
        queries = [r.input for r in kilt.read_task_file(path) if r.input]
    queries = [q for q in queries if q.strip()]
    if not queries:
        sys.exit(f"serve_load: {path}: no queries")
    return queries, path


def cycled(queries: Sequence[str], n: int) -> List[str]:
    return [queries[i % len(queries)] for i in range(n)]


def pct(values: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), p)) if len(values) else float("nan")


# -- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m multiret_jax.serve`` in its own process group; ``stop()`` kills it."""

    def __init__(self, args, tasks: Sequence[str], port: int):
        self.url = f"http://127.0.0.1:{port}"
        fd, self.log_path = tempfile.mkstemp(prefix="serve_load_", suffix=".log")
        self.cmd = [sys.executable, "-m", "multiret_jax.serve", f"--model_dir={args.model_dir}",
                    f"--index_dir={args.index_dir}", f"--port={port}", "--host=127.0.0.1",
                    f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}",
                    f"--max_k={max(args.k, 1)}", f"--tasks={','.join(tasks)}"]
        if args.data_dir:
            self.cmd.append(f"--data_dir={args.data_dir}")
        with os.fdopen(fd, "w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log_tail(self, n: int = 4000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-n:]

    def wait_ready(self, timeout: float) -> Dict:
        import httpx
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the server was not ready in {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def get_metrics(url: str) -> Dict:
    import httpx
    r = httpx.get(f"{url}/metrics", timeout=30)
    r.raise_for_status()
    return r.json()


def batch_sizes_between(before: Dict, after: Dict) -> collections.Counter:
    """Queries per batch of the batches formed between two ``/metrics`` snapshots."""
    a = after["batches"]["queries_per_batch"]
    b = before["batches"]["queries_per_batch"]
    return collections.Counter({int(n): c - b.get(n, 0) for n, c in a.items()
                                if c - b.get(n, 0) > 0})


def drive(url: str, queries: List[str], task: str, k: int, clients: int,
          timeout: float) -> Dict:
    """``clients`` threads sending ``queries`` between them, one a request, back to back.
    Returns the wall time, per-request latencies and the server's batches meanwhile."""
    import httpx
    ready = threading.Barrier(clients + 1, timeout=timeout)
    go = threading.Barrier(clients + 1, timeout=timeout)
    latencies: List[List[float]] = [[] for _ in range(clients)]
    ends = [0.0] * clients
    errors: List[str] = []

    def post(http, q):
        r = http.post(f"{url}/search", json={"queries": [q], "task": task, "k": k},
                      timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        res = r.json()["results"]
        if len(res) != 1 or not 0 < len(res[0]) <= k:
            raise RuntimeError(f"unexpected response: {r.text[:300]}")

    def client(c: int):
        mine = queries[c::clients]
        try:
            with httpx.Client() as http:
                post(http, mine[0] if mine else queries[0])  # opens the connection
                ready.wait()
                go.wait()
                for q in mine:
                    t = time.perf_counter()
                    post(http, q)
                    latencies[c].append(time.perf_counter() - t)
                ends[c] = time.perf_counter()
        except threading.BrokenBarrierError:
            pass
        except Exception as e:  # noqa: BLE001 -- reported by the caller
            errors.append(f"client {c}: {type(e).__name__}: {e}")
            ready.abort()
            go.abort()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        ready.wait()
        before = get_metrics(url)
        go.wait()
        start = time.perf_counter()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(timeout)
        raise RuntimeError("; ".join(errors) or "a client did not start")
    for t in threads:
        t.join(timeout * max(1, len(queries)))
    if errors:
        raise RuntimeError("; ".join(errors[:5]))
    after = get_metrics(url)
    lat = [x for per in latencies for x in per]
    if len(lat) != len(queries):
        raise RuntimeError(f"{len(lat)} of {len(queries)} requests answered")
    return {"wall": max(ends) - start, "latencies": lat,
            "batches": batch_sizes_between(before, after),
            "compiles_after_warm_up": after.get("compiles_after_warm_up")}


# -- in-process
def time_calls(engine, task, queries: List[str], k: int, sizes: Sequence[int]) -> Dict:
    """``engine.run_jobs`` over ``queries`` in batches of ``sizes`` (cycled) one-query
    jobs: total seconds and each call's seconds."""
    from multiret_jax.serve.engine import Job
    calls, i, s = [], 0, 0
    while i < len(queries):
        n = sizes[s % len(sizes)]
        jobs = [Job("search", task, [q], k) for q in queries[i:i + n]]
        t = time.perf_counter()
        out = engine.run_jobs(jobs)
        calls.append(time.perf_counter() - t)
        bad = [o for o in out if isinstance(o, BaseException)]
        if bad:
            raise bad[0]
        i, s = i + n, s + 1
    return {"seconds": sum(calls), "calls": calls}


def expand(hist: collections.Counter) -> List[int]:
    """The batch sizes of a histogram, largest first."""
    return sorted((n for n, c in hist.items() for _ in range(c)), reverse=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="trained run directory")
    p.add_argument("--index_dir", required=True, help="OUT/index/Flat saved by retrieve")
    p.add_argument("--data_dir", default=None, help="default: the run's")
    p.add_argument("--task", default="nq")
    p.add_argument("--tasks", default=None, help="tasks served (default: --task)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clients", default="1,8,32", help="client counts, comma separated")
    p.add_argument("--requests", type=int, default=256, help="requests per client count")
    p.add_argument("--queries_file", default=None)
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--max_wait_ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=0, help="0: a free one")
    p.add_argument("--start_timeout", type=float, default=900.0)
    p.add_argument("--request_timeout", type=float, default=120.0)
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1 or args.requests < 1 or args.k < 1:
        p.error("need --clients >= 1, --requests >= 1, --k >= 1")
    tasks = args.tasks.split(",") if args.tasks else [args.task]
    if args.task not in tasks:
        p.error(f"--task {args.task} is not among --tasks {tasks}")
    for name in ("model_dir", "index_dir", "data_dir", "queries_file"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally stops the server

    pool, source = load_queries(args)
    queries = cycled(pool, args.requests)
    print(f"{len(pool)} queries of {args.task} from {source}; {args.requests} requests of one "
          f"query per client count, k={args.k}, max_batch={args.max_batch}, "
          f"max_wait_ms={args.max_wait_ms:g}, {len(os.sched_getaffinity(0))} usable cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    # -- served
    served: Dict[int, Dict] = {}
    t0 = time.perf_counter()
    server = Server(args, tasks, args.port or free_port())
    try:
        health = server.wait_ready(args.start_timeout)
        print(f"server up in {time.perf_counter() - t0:.1f} s ({health['index_spec']} index of "
              f"{health['num_passages']} passages, tasks {health['tasks']}, dim "
              f"{health['dim']}); log {server.log_path}", flush=True)
        for n in clients:
            r = drive(server.url, queries, args.task, args.k, n, args.request_timeout)
            served[n] = r
            lat_ms = np.asarray(r["latencies"]) * 1000
            b = r["batches"]
            mean_b = sum(k * c for k, c in b.items()) / max(1, sum(b.values()))
            print(f"  {n:>3} clients: {args.requests / r['wall']:7.1f} q/s, p50 "
                  f"{pct(lat_ms, 50):7.1f} ms, p99 {pct(lat_ms, 99):7.1f} ms, "
                  f"{sum(b.values())} batches (mean {mean_b:.1f} queries)", flush=True)
        compiles = get_metrics(server.url).get("compiles_after_warm_up")
    except BaseException:
        if server.proc.poll() is not None:
            print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
        print(f"serve_load: failed; the server's log: {server.log_path}", file=sys.stderr)
        raise
    finally:
        server.stop()
    os.unlink(server.log_path)  # kept (and its tail printed) when the server failed
    print(f"server stopped (exit {server.proc.returncode}); compilations after its warm-up: "
          f"{compiles}", flush=True)

    # -- in-process
    from multiret_jax.data.tasks import get_task
    from multiret_jax.serve.engine import load_engine
    t0 = time.perf_counter()
    engine = load_engine(args.model_dir, args.index_dir, args.data_dir, tasks=tasks,
                         max_batch=args.max_batch)
    warm = engine.warm_up()
    print(f"in-process engine loaded and warmed up in {time.perf_counter() - t0:.1f} s "
          f"({warm['shapes']} shapes)", flush=True)
    task = get_task(args.task)
    time_calls(engine, task, queries[:8], args.k, [1])  # first-call costs (FAISS, tokenizer)
    time_calls(engine, task, queries[:args.max_batch], args.k, [args.max_batch])
    single = time_calls(engine, task, queries, args.k, [1])
    batched = time_calls(engine, task, queries, args.k, [args.max_batch])
    same = {n: time_calls(engine, task, queries, args.k, expand(r["batches"]) or [1])
            for n, r in served.items()}
    one_ms = np.asarray(single["calls"]) * 1000
    qps_single = len(queries) / single["seconds"]
    qps_batched = len(queries) / batched["seconds"]
    p50_single = pct(one_ms, 50)

    # -- table
    print(f"\n{'':>22} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'in-proc q/s':>11} {'q/s ratio':>9} {'p50 ratio':>9}")
    print(f"{'in-process 1/call':>22} {qps_single:>8.1f} {p50_single:>8.1f} "
          f"{pct(one_ms, 99):>8.1f} {1:>6}")
    b_ms = np.asarray(batched["calls"]) * 1000
    print(f"{f'in-process {args.max_batch}/call':>22} {qps_batched:>8.1f} "
          f"{pct(b_ms, 50):>8.1f} {pct(b_ms, 99):>8.1f} {args.max_batch:>6}   (ms per call)")
    summary = {"qps": [], "p50": [], "p99": [], "ratio": []}
    for n, r in served.items():
        lat_ms = np.asarray(r["latencies"]) * 1000
        qps = len(queries) / r["wall"]
        b = r["batches"]
        mean_b = sum(k * c for k, c in b.items()) / max(1, sum(b.values()))
        qps_same = len(queries) / same[n]["seconds"]
        ratio = qps / qps_same
        print(f"{f'served, {n} clients':>22} {qps:>8.1f} {pct(lat_ms, 50):>8.1f} "
              f"{pct(lat_ms, 99):>8.1f} {mean_b:>6.1f} {qps_same:>11.1f} {ratio:>9.2f} "
              f"{pct(lat_ms, 50) / p50_single:>9.2f}")
        summary["qps"].append(f"{qps:.1f}")
        summary["p50"].append(f"{pct(lat_ms, 50):.1f}")
        summary["p99"].append(f"{pct(lat_ms, 99):.1f}")
        summary["ratio"].append(f"{ratio:.2f}")
    print("batch: mean queries per encoder batch; in-proc q/s: run_jobs on batches of the "
          "sizes the server formed;\nq/s ratio: served / that; p50 ratio: served p50 / "
          "in-process 1/call p50")
    for n, r in served.items():
        hist = ", ".join(f"{k}x{c}" for k, c in sorted(r["batches"].items()))
        print(f"  {n:>3} clients, server batches (queries x count): {hist}")
    print(f"serve_load: {'/'.join(map(str, served))} clients: {'/'.join(summary['qps'])} q/s "
          f"(in-process 1/call {qps_single:.1f} q/s, batched {qps_batched:.1f} q/s), "
          f"p50 {'/'.join(summary['p50'])} ms (in-process {p50_single:.1f}), "
          f"p99 {'/'.join(summary['p99'])} ms, served/in-process q/s "
          f"{'/'.join(summary['ratio'])}")


if __name__ == "__main__":
    main()
