"""Scalar logging: TensorBoard event files via tensorboardX (no TensorFlow) and JSON
summaries."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

__all__ = ["ScalarLogger", "write_summary"]


def _to_float(value) -> float:
    arr = np.asarray(value)  # works for jax arrays, numpy scalars, Python numbers
    if arr.size != 1:
        raise ValueError(f"scalar expected, got shape {arr.shape}")
    return float(arr.reshape(()))


class ScalarLogger:
    """Writes scalars to TensorBoard event files under ``logdir``.

    ``log(step, {"loss/total": 0.3, "lr": 1e-4})`` adds one scalar summary per entry
    (values may be Python numbers, numpy or jax scalars). Use as a context manager or call
    ``close()``.
    """

    def __init__(self, logdir: str, flush_secs: int = 30):
        from tensorboardX import SummaryWriter  # imported lazily: optional at import time
        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._writer = SummaryWriter(logdir=logdir, flush_secs=flush_secs)
        self._closed = False

    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("ScalarLogger is closed")
        step = int(step)
        for name, value in scalars.items():
            self._writer.add_scalar(str(name), _to_float(value), global_step=step)

    def flush(self) -> None:
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if hasattr(x, "shape") or isinstance(x, (int, float, np.generic)):
        arr = np.asarray(x)
        if arr.ndim:
            return _jsonable(arr.tolist())
        v = arr.item()
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)  # JSON has no NaN/inf
        return v
    return str(x)


def write_summary(path: str, summary: Mapping[str, Any]) -> None:
    """Writes ``summary`` as indented JSON to ``path`` atomically (arrays become lists,
    non-finite floats strings)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_jsonable(summary), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
