"""HF-format checkpoint directories <-> flat numpy state dicts, with clear errors.

An HF checkpoint directory holds ``config.json`` and ``model.safetensors`` (or the older
``pytorch_model.bin``, read with ``torch.load(weights_only=True)``; torch is only needed
for that format). Architecture-specific modules (``bert_hf.py``, ``t5_hf.py``) map the
flat ``{hf_name: array}`` dicts to and from our Flax parameter trees; this module does the
file IO and the checks every architecture shares.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

StateDict = Dict[str, np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing file, unknown architecture, bad shape."""


def read_config(directory: str) -> Dict[str, Any]:
    """``config.json`` of an HF checkpoint directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: no config.json (not an HF checkpoint directory)")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def read_state_dict(directory: str) -> StateDict:
    """All tensors of an HF checkpoint directory as float32/int numpy arrays.

    Reads ``model.safetensors`` when present, else ``pytorch_model.bin`` with
    ``torch.load(weights_only=True)`` (never unpickling arbitrary objects).
    """
    st = os.path.join(directory, "model.safetensors")
    if os.path.isfile(st):
        return dict(load_file(st))
    binp = os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(binp):
        try:
            import torch  # only for this legacy format
        except ImportError:
            raise CheckpointError(f"{binp}: reading pytorch_model.bin needs torch; convert it "
                                  "to model.safetensors or install torch") from None
        sd = torch.load(binp, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in sd.items()}
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def check_architecture(config: Mapping[str, Any], model_types: Tuple[str, ...], directory: str) -> None:
    mt = config.get("model_type")
    if mt not in model_types:
        raise CheckpointError(f"{directory}: model_type {mt!r} is not one of {model_types} "
                              f"(architectures: {config.get('architectures')})")


def take(state: StateDict, name: str, shape: Tuple[int, ...], directory: str = "") -> np.ndarray:
    """``state[name]`` checked against the expected shape (error names both shapes)."""
    if name not in state:
        raise CheckpointError(f"{directory}: parameter {name!r} missing from the checkpoint")
    arr = np.asarray(state[name])
    if tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"{directory}: parameter {name!r} has shape {tuple(arr.shape)}, "
                              f"model expects {tuple(shape)}")
    return arr


def write_hf_dir(directory: str, state: StateDict, config: Mapping[str, Any]) -> None:
    """Writes ``model.safetensors`` (contiguous float32) and ``config.json``."""
    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(config), f, indent=2)
