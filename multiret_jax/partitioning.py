"""Mesh, logical axis rules and NamedShardings (a small, t5x-like partitioner).

Model code names its axes logically (params: "vocab", "embed", "mlp", "heads", "kv",
"relpos_buckets"; activations: "batch", "length", "embed"). ``LOGICAL_RULES`` maps them to
the mesh axes ``("data", "model")``: the batch is sharded on "data"; with a model axis of
size 1 (the default) every parameter is replicated, and a larger "model" axis shards the
MLP, heads and vocabulary dimensions (tensor parallelism) without touching model code.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LOGICAL_RULES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("relpos_buckets", None),
    ("towers", None),
)


class LogicallyPartitioned(nn.LogicallyPartitioned):
    """``nn.LogicallyPartitioned`` that skips the sharding constraint while its value's rank
    differs from its names.

    Flax's ``DenseGeneral`` initialises multi-axis kernels flat (2-D), unboxes them and then
    reshapes; flax also re-runs initialisers under ``jax.eval_shape`` during ``apply`` to
    check parameter shapes. Under an active mesh (``jax.set_mesh``) the stock box would
    apply the 3-D logical constraint to the 2-D flat kernel and fail.
    """

    def unbox(self, apply_constraint: bool = True) -> Any:
        if len(getattr(self.value, "shape", ())) != len(self.names):
            return self.value
        return super().unbox(apply_constraint)


def with_logical_partitioning(fn: Any, names: Tuple[Optional[str], ...]) -> Any:
    """Wraps an initializer so its result carries logical axis ``names``."""
    def init(*args, **kwargs):
        return LogicallyPartitioned(fn(*args, **kwargs), names)
    return init


def make_mesh(model_parallel: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ("data", "model") mesh over ``devices`` (default: all devices, all processes).

    Args:
      model_parallel: size of the "model" axis; must divide the device count.
      devices: devices to use.
    Returns:
      The mesh; the "data" axis gets the remaining factor.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) % model_parallel:
        raise ValueError(f"model_parallel={model_parallel} does not divide {len(devices)} devices")
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // model_parallel, model_parallel)
    return Mesh(grid, ("data", "model"))


def logical_shardings(logical_specs: Any, mesh: Mesh,
                      rules: Sequence[Tuple[str, Optional[str]]] = LOGICAL_RULES) -> Any:
    """NamedShardings for a pytree of logical PartitionSpecs (``nn.get_partition_spec``)."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis on "data", the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def axis_rules(rules: Sequence[Tuple[str, Optional[str]]] = LOGICAL_RULES):
    """Context manager activating the rules for ``nn.with_logical_constraint`` in model code."""
    return nn.logical_axis_rules(list(rules))
