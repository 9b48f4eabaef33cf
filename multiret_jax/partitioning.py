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


def elementwise_spec(shape: Sequence[int], mesh: Mesh, base: P = P(), lead: int = 0) -> P:
    """A PartitionSpec that splits an elementwise array (optimizer moments, TACO's K x params
    EMA, stacked task gradients) over every mesh axis ``base`` leaves free, FSDP-style.

    Args:
      shape: the array's shape.
      mesh: the mesh.
      base: the spec of the matching parameter (its model-axis split is kept), for the
        dims after ``lead``.
      lead: leading dims that are not parameter dims (1 for a ``[K, *param]`` stack); they
        stay unsplit.
    Returns:
      ``base`` (after ``lead`` unsplit dims) with the free axes, all together where a dim
      divides by their product (else one axis alone), on the first parameter dim that
      divides: the first one where possible, so a row-major flattening stays a contiguous
      split. Unchanged when no dim divides.
    """
    spec = [None] * lead + list(base) + [None] * (len(shape) - lead - len(base))
    used = {a for s in spec if s is not None for a in (s if isinstance(s, tuple) else (s,))}
    free = tuple(a for a in mesh.axis_names if a not in used and mesh.shape[a] > 1)
    options = ([free] if len(free) > 1 else []) + [(a,) for a in free]
    for axes in options:
        size = int(np.prod([mesh.shape[a] for a in axes]))
        for d in range(lead, len(shape)):
            if spec[d] is None and shape[d] % size == 0:
                spec[d] = axes if len(axes) > 1 else axes[0]
                return P(*spec)
    return P(*spec)


def elementwise_sharding(shape: Sequence[int], mesh: Mesh, base: P = P(),
                         lead: int = 0) -> NamedSharding:
    """``NamedSharding`` of ``elementwise_spec``."""
    return NamedSharding(mesh, elementwise_spec(shape, mesh, base, lead))
