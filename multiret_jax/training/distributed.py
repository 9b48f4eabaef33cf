"""Multi-process (multi-controller) helpers for the trainer.

Every process (one per TPU VM / GPU node, or several CPU processes on one machine in the
tests) runs the same program on the same global data: the mesh spans all processes'
devices, each process feeds its addressable shards of the global batch
(``training.step.put_batch``), all processes call every jitted step and every orbax save;
only process 0 writes the other files (mini-KILT, vocabulary, ANCE negatives, TensorBoard
events, ``final_params.safetensors``, ``summary.json``).

Validation and ANCE mining run redundantly on each process, with a process-local copy of
the parameters (``host_local``): encoding and exact search are host loops over local
arrays, so every process ranks with the same values and no collective is involved.

CPU collectives across processes use gloo, the default of
``jax_cpu_collectives_implementation`` in jax 0.10 (nothing to set before
``jax.distributed.initialize``). A gloo collective fails when a peer is more than 30 s
late ("Gloo context initialization failed: ... GetKeyValue() timed out"), so the waits
here (``barrier``: while process 0 writes the mini-KILT; ``compile_together``: compile
times differ between processes) use the coordination service's barrier instead.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """``jax.distributed.initialize``; None arguments are auto-detected (TPU pods, SLURM,
    Open MPI, ...). Must run before anything starts a JAX backend; a no-op once done."""
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


_BARRIERS = itertools.count()


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process got here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax._src import distributed as jax_distributed  # its client, as orbax uses it
        jax_distributed.global_state.client.wait_at_barrier(
            f"multiret_{name}_{next(_BARRIERS)}", timeout_in_ms=timeout_s * 1000)


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
