"""A trained run's parameters on disk: ``final_params.safetensors`` with flat
``"a/b/c"`` names (the parameter pytree's key path), read back into a model's pytree with
every name and shape checked."""

from __future__ import annotations

import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

PARAMS_FILE = "final_params.safetensors"


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat_numpy(params: Any) -> Dict[str, np.ndarray]:
    """``{"a/b/c": array}`` of a pytree of host-addressable arrays (gather first when
    parameters span several processes)."""
    return {_name(path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def load_params_into(path: str, params: Any) -> Any:
    """Parameters from a previous run's ``final_params.safetensors`` (the file or its
    model_dir), checked against ``params``' names and shapes.

    Args:
      path: the file, or the directory holding ``final_params.safetensors``.
      params: a pytree of the model's parameters (its structure, names and shapes).
    Returns:
      the saved parameters in ``params``' structure.
    """
    if os.path.isdir(path):
        path = os.path.join(path, PARAMS_FILE)
    saved = load_file(path)
    want = {_name(path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for name, shape in want.items():
        if name not in saved or saved[name].shape != shape:
            got = "missing" if name not in saved else f"shape {saved[name].shape}"
            raise ValueError(f"{path}: parameter {name!r} is {got}, model wants {shape} "
                             "(saved from another architecture)")
    leaves = [jnp.asarray(saved[name]) for name in want]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
