"""Checks of ``train()``'s settings, before a run touches any file: every integer, range and
choice a gin file or binding can get wrong is named as ``train.<parameter>``."""

from __future__ import annotations

import math
from typing import Any

from multiret_jax.data.passages import CHUNK_MODES
from multiret_jax.index.faiss_index import check_index_spec
from multiret_jax.data.tasks import MARKER_FORMATS
from multiret_jax.training.plan import check_plan_settings
from multiret_jax.training.schedules import SCHEDULES

# train() parameters that must be integers >= the bound (None allowed for the Optional ones).
_INT_AT_LEAST = {"steps": 0, "global_batch": 1, "num_negatives": 0, "passage_len": 1,
                 "ance_episodes": 0, "ance_episode_steps": 0, "ance_depth": 1,
                 "model_parallel": 1, "eval_every": 1, "keep": 1, "eval_batch_size": 1,
                 "seed": 0, "max_examples": 1, "eval_passage_len": 1, "query_len": 1,
                 "grad_cache_chunk": 1, "checkpoint_every": 1, "halt_after": 0}
_OPTIONAL = {"max_examples", "eval_passage_len", "query_len", "grad_cache_chunk",
             "checkpoint_every", "halt_after"}
# (lowest, highest, lowest allowed itself) for float parameters; all must be finite.
_FLOAT_RANGE = {"mixing_c": (0.0, math.inf, False), "learning_rate": (0.0, math.inf, False),
                "warmup_fraction": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, True),
                "clip_norm": (0.0, math.inf, False), "temperature": (0.0, math.inf, False),
                "minikilt_scale": (0.0, math.inf, False)}
MARKERS = ("prefix", "type", "none")


def check_settings(s: Any) -> None:
    """``ValueError`` naming every ``train.<parameter>`` whose value cannot work (a negative
    step count, a zero batch, a non-finite learning rate, an unknown marker ...)."""
    bad = []
    for name, low in _INT_AT_LEAST.items():
        v = getattr(s, name)
        if v is None and name in _OPTIONAL:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            bad.append(f"train.{name} must be an integer >= {low}, got {v!r}")
    for name, (low, high, closed) in _FLOAT_RANGE.items():
        v = getattr(s, name)
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (v >= low if closed else v > low) and v <= high)
        if not ok:
            rng = f"{'[' if closed else '('}{low}, {high}]"
            bad.append(f"train.{name} must be a finite number in {rng}, got {v!r}")
    if s.marker not in MARKERS:
        bad.append(f"train.marker must be one of {MARKERS}, got {s.marker!r}")
    if s.chunk_mode not in CHUNK_MODES:
        bad.append(f"train.chunk_mode must be one of {CHUNK_MODES}, got {s.chunk_mode!r}")
    if s.lr_schedule not in SCHEDULES:
        bad.append(f"train.lr_schedule must be one of {sorted(SCHEDULES)}, got {s.lr_schedule!r}")
    if s.marker_format not in MARKER_FORMATS:
        bad.append(f"train.marker_format must be one of {sorted(MARKER_FORMATS)}, got "
                   f"{s.marker_format!r}")
    for name in ("lr_per_phase", "marker_in_query_len"):
        if not isinstance(getattr(s, name), bool):
            bad.append(f"train.{name} must be True or False, got {getattr(s, name)!r}")
    bad += check_plan_settings(s)
    if s.ance_index_spec:
        try:
            check_index_spec(s.ance_index_spec)
        except ValueError as e:
            bad.append(f"train.ance_index_spec: {e}")
    if bad:
        raise ValueError("; ".join(bad))
