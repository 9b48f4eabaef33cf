"""Multi-process (multi-controller) helpers for the trainer.

Every process (one per TPU VM / GPU node, or several CPU processes on one machine in the
tests) runs the same program on the same global data: the mesh spans all processes'
devices, each process feeds its addressable shards of the global batch
(``training.step.put_batch``), all processes call every jitted step and every orbax save;
only process 0 writes the other files (mini-KILT, vocabulary, ANCE negatives, TensorBoard
events, ``final_params.safetensors``, ``summary.json``).

Validation runs redundantly on each process, with a process-local copy of the parameters
(``host_local``): encoding and exact search are host loops over local arrays, so every
process ranks with the same values and no collective is involved. ANCE mining splits the
corpus instead (``index/distributed_search.py``): each process encodes and searches its
share of the shards, and the partial rankings are gathered (after a barrier) and merged,
so every process filters the same ranking.

CPU collectives across processes use gloo, the default of
``jax_cpu_collectives_implementation`` in jax 0.10 (nothing to set before
``jax.distributed.initialize``). A gloo collective fails when a peer is more than 30 s
late ("Gloo context initialization failed: ... GetKeyValue() timed out"), so the waits
here (``barrier``: while process 0 writes the mini-KILT; ``compile_together``: compile
times differ between processes) use the coordination service's barrier instead.
``initialize`` and ``barrier`` live in ``multiret_jax/processes.py`` (layer 0, so that
``index/`` can use them) and are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from multiret_jax.processes import barrier, initialize

__all__ = ["barrier", "initialize", "compile_together", "host_local", "to_numpy"]

log = logging.getLogger(__name__)


def compile_together(fn: Callable, *args: Any) -> None:
    """Compiles the jitted ``fn`` for ``args`` ahead of its first call (reused by that call:
    jit's cache); with several processes then waits for the others, so its collectives
    start together."""
    fn.lower(*args).compile()
    barrier("compiled")


def _local(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if x.is_fully_replicated:  # this process already holds the whole value
        return x.addressable_data(0)
    # sharded across processes (e.g. a "model" axis spanning hosts): a collective, so
    # every process must call host_local on the same tree
    return jax.device_put(multihost_utils.process_allgather(x, tiled=True), jax.local_devices()[0])


def host_local(tree: Any) -> Any:
    """``tree`` with each array spanning other processes' devices replaced by a copy of
    its full value on this process's first device (fully addressable leaves as they are)."""
    return jax.tree_util.tree_map(_local, tree)


def to_numpy(tree: Any) -> Any:
    """Host (numpy) copies of a pytree's full values; collective like ``host_local``."""
    return jax.tree_util.tree_map(np.asarray, host_local(tree))


def main_first(name: str, fn: Callable[[], Any], timeout_s: int = 48 * 3600) -> Any:
    """``fn()`` on process 0, then, once it is done, on the others: for work that caches
    its results in shared files (BM25 negatives, the validation pool), which the others
    then read instead of computing (or compute too, where the files are not shared).

    Args:
      name: the barrier's name.
      fn: the work; every process returns its own call's result.
      timeout_s: how long the others wait for process 0 (BM25 over 36M passages takes
        hours).
    """
    out = fn() if jax.process_index() == 0 else None
    barrier(name, timeout_s=timeout_s)
    return fn() if jax.process_index() != 0 else out
