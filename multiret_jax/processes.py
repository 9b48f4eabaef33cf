"""Several JAX processes (multi-controller): starting ``jax.distributed`` and waiting for
each other, for every layer that splits work across processes (the trainer, corpus
encoding and search in ``index/``, the retrieval CLI).

Every process runs the same program; work split across processes (e.g. each encoding its
share of the corpus) ends in ``barrier`` before anyone reads the others' output. A barrier
is the coordination service's (``wait_at_barrier``), not a collective: a CPU collective
across processes (gloo) fails when a peer is more than 30 s late, a barrier waits up to
``timeout_s``. With one process both functions do nothing.
"""

from __future__ import annotations

import itertools
import logging
from typing import Optional

import jax

log = logging.getLogger(__name__)

_BARRIERS = itertools.count()


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


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process got here (a no-op with one process).

    Args:
      name: what is waited for (in the barrier's id, with a running count, so every
        process must call the same barriers in the same order).
      timeout_s: how long to wait for the slowest process before failing.
    """
    if jax.process_count() > 1:
        from jax._src import distributed as jax_distributed  # its client, as orbax uses it
        jax_distributed.global_state.client.wait_at_barrier(
            f"multiret_{name}_{next(_BARRIERS)}", timeout_in_ms=int(timeout_s * 1000))


def is_main_process() -> bool:
    """Whether this is process 0 (the one that writes shared files)."""
    return jax.process_index() == 0
