"""Train-state checkpoints: a thin wrapper over ``orbax.checkpoint.CheckpointManager``.

Each checkpoint step directory holds two orbax items:

* ``state``: the train-state pytree ``{"params", "opt_state", "step", "rng"}`` (optax state
  NamedTuples such as ``TacoState`` included), written with ``StandardSave`` (tensorstore,
  no pickle);
* ``metadata``: a small JSON-able dict (data-sampler state, model config, passage-table
  checksum, ...), written with ``JsonSave``.

Retention (orbax ``preservation_policy``): the ``keep`` latest steps are kept; with
``best_metric`` set, the single best step by ``metrics[best_metric]`` (``best_mode`` "max" or
"min") is also never deleted. Steps saved without that metric never count as best.

Restoring goes into the structure, dtypes and shardings of ``target``: a concrete state, or
``jax.eval_shape`` output (``jax.ShapeDtypeStruct`` leaves; their ``.sharding`` is honoured).
NamedTuple and other container types come from ``target``. Before reading any array the
saved shapes are compared to ``target``'s; a mismatch (another architecture) raises a
``ValueError`` (``ArchitectureMismatch``) naming the first differing parameter path and both
shapes.

A checkpoint that cannot be read (a truncated or corrupted file, a crash during a
copy) is named with its step and directory by ``restore``; ``restore_intact`` (what a
resuming run calls) then falls back to the previous intact step with a warning (``keep``
>= 2 keeps one), moving the unreadable step aside as ``<step>.unreadable`` so the run can
save that step again, and fails only when no step is intact.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, List, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

__all__ = ["ArchitectureMismatch", "Checkpointer", "UnreadableCheckpoint"]

log = logging.getLogger(__name__)


class ArchitectureMismatch(ValueError):
    """The checkpoint was saved from another architecture (shapes or parameters differ)."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint step whose files cannot be read (names the step and its directory)."""

_STATE, _META = "state", "metadata"


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_shapes(tree) -> dict:
    """{path tuple of str: shape tuple} over non-None leaves (NamedTuple fields and dict keys
    both become their names, so saved metadata and live trees compare equal)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {tuple(_key_name(k) for k in path): tuple(getattr(leaf, "shape", np.shape(leaf)))
            for path, leaf in leaves if leaf is not None}


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    return x


class Checkpointer:
    """Saves / restores the whole train state plus a JSON metadata dict with orbax.

    Args:
      directory: root directory (created if missing); one sub-directory per step.
      keep: number of most recent checkpoints kept.
      best_metric: if set, name of a key of ``save(..., metrics=...)``; the best step by it
        is kept in addition to the ``keep`` latest.
      best_mode: "max" or "min" (the direction in which ``best_metric`` is better).
      async_save: write in a background thread (call ``wait()`` before reading the files).
    """

    def __init__(self, directory, keep: int = 3, best_metric: Optional[str] = None,
                 best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.best_metric, self.best_mode = best_metric, best_mode
        policies = [ocm.LatestN(n=keep)]
        if best_metric is not None:
            policies.append(ocm.BestN(get_metric_fn=self._metric, reverse=best_mode == "min",
                                      n=1, keep_checkpoints_without_metrics=False))
        # best_fn only makes orbax write the metrics to disk (retention is the policy's): without
        # it a reopened manager would see no metrics and BestN could drop the best step.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=self._metric if best_metric is not None else None, best_mode=best_mode,
            enable_async_checkpointing=async_save, create=True)
        # Handlers named up front, so a manager reopened in a new process (resume) can read
        # the saved items' metadata before any save.
        self._mgr = ocp.CheckpointManager(
            directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                           _META: ocp.JsonCheckpointHandler()})

    def _metric(self, metrics) -> float:
        value = (metrics or {}).get(self.best_metric)
        if value is None:  # ranks last whatever the mode
            return -math.inf if self.best_mode == "max" else math.inf
        return float(value)

    @property
    def directory(self):
        return self._mgr.directory

    def save(self, step: int, state: Any, metadata: Optional[Mapping[str, Any]] = None,
             metrics: Optional[Mapping[str, float]] = None) -> bool:
        """Saves ``state`` and ``metadata`` at ``step``; returns whether a save started."""
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        return self._mgr.save(
            int(step), metrics=metrics, force=True,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                       _META: ocp.args.JsonSave(dict(metadata or {}))}))

    def all_steps(self):
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def best_step(self) -> Optional[int]:
        """Best step by ``best_metric`` among kept steps with that metric (``None`` if none);
        without ``best_metric``, the latest step."""
        if self.best_metric is None:
            return self.latest_step()
        scored = []
        for s in self.all_steps():
            m = self._mgr.metrics(s)
            if m and m.get(self.best_metric) is not None:
                scored.append((self._metric(m), s))
        if not scored:
            return None
        pick = max if self.best_mode == "max" else min
        return pick(scored, key=lambda t: t[0])[1]

    def _check_shapes(self, step: int, target) -> None:
        saved = self._mgr.item_metadata(step)[_STATE]
        saved_shapes, want = _flat_shapes(saved), _flat_shapes(target)
        # "params" first, so a mismatch names the model parameter, not its optimizer moment
        order = sorted(want, key=lambda p: p[:1] != ("params",))
        for path in order:
            shape = want[path]
            name = "/".join(path)
            if path not in saved_shapes:
                raise ArchitectureMismatch(f"checkpoint step {step} in {self.directory} has no "
                                 f"parameter {name!r} (wanted shape {shape}): it was saved "
                                 f"from another architecture")
            if saved_shapes[path] != shape:
                raise ArchitectureMismatch(f"checkpoint step {step} in {self.directory}: parameter "
                                 f"{name!r} has shape {saved_shapes[path]} in the checkpoint "
                                 f"but {shape} in the target (another architecture?)")
        extra = sorted(set(saved_shapes) - set(want), key=lambda p: (p[:1] != ("params",), p))
        if extra:
            raise ArchitectureMismatch(f"checkpoint step {step} in {self.directory} has parameter "
                             f"{'/'.join(extra[0])!r} (shape {saved_shapes[extra[0]]}) that "
                             f"the target lacks: it was saved from another architecture")

    def saved_structure(self, step: int) -> Any:
        """The saved state of ``step`` as a tree of ``jax.ShapeDtypeStruct`` (no array read),
        usable as ``restore``'s target when the live state cannot be rebuilt (analysis
        tools). Containers are as saved: dicts and lists (NamedTuples such as ``TacoState``
        become dicts of their fields, tuples lists); ``None`` leaves stay ``None``."""
        saved = self._mgr.item_metadata(step)[_STATE]
        tree = saved.tree if hasattr(saved, "tree") else saved

        def abstract(x):
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
            return x
        return jax.tree_util.tree_map(abstract, tree, is_leaf=lambda x: hasattr(x, "shape"))

    def restore(self, step: Optional[int] = None, target: Any = None) -> Tuple[Any, dict]:
        """Restores ``(state, metadata)`` of ``step`` (default: latest) into ``target``'s
        structure, dtypes and shardings (``target`` is required)."""
        if target is None:
            raise ValueError("restore needs a target state (concrete or jax.eval_shape output)")
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.wait()
        try:
            self._check_shapes(step, target)
            abstract = jax.tree_util.tree_map(_abstract, target)
            out = self._mgr.restore(step, args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}))
        except ArchitectureMismatch:
            raise
        except Exception as e:  # tensorstore / JSON / OS errors of damaged files
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise UnreadableCheckpoint(
                f"checkpoint step {step} is unreadable: files in "
                f"{os.path.join(str(self.directory), str(step))} are damaged or incomplete "
                f"({type(e).__name__}: {first})") from e
        return out[_STATE], dict(out[_META] or {})

    def restore_intact(self, target: Any) -> Tuple[Any, dict, int]:
        """``restore`` of the latest step that can be read: each unreadable newer step is
        logged, moved aside as ``<step>.unreadable`` and skipped.

        Returns:
          ``(state, metadata, step)``.
        Raises:
          FileNotFoundError: no checkpoint at all.
          UnreadableCheckpoint: no step is intact (the message lists each step's error).
          ArchitectureMismatch: the latest readable step is of another architecture.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors: List[str] = []
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, target)
            except UnreadableCheckpoint as e:
                errors.append(str(e))
                continue
            for bad in errors:
                log.warning("%s; resuming from step %d instead", bad, step)
            self._set_aside(steps[steps.index(step) + 1:])
            return state, meta, step
        raise UnreadableCheckpoint(f"no intact checkpoint in {self.directory} (orbax keeps the "
                                   f"last `keep` steps): " + "; ".join(errors))

    def _set_aside(self, steps: List[int]) -> None:
        """Renames unreadable step directories to ``<step>.unreadable`` (kept, not deleted),
        so the resumed run can save those steps again."""
        for step in steps:
            path = os.path.join(str(self.directory), str(step))
            dst, n = path + ".unreadable", 1
            while os.path.exists(dst):
                dst, n = f"{path}.unreadable{n}", n + 1
            os.rename(path, dst)
            log.warning("moved unreadable checkpoint step %d to %s", step, dst)
        if steps:
            self._mgr.reload()

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
