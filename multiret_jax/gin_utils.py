"""Gin set-up shared by the command-line entry points.

``--gin_file=taco.gin`` resolves from the repository's ``gin_configs/`` directory (and
from the current directory), so users name configs without a path, t5x-style.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import gin

GIN_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "gin_configs")


def _not_search_miss(record: logging.LogRecord) -> bool:
    # gin probes every search path with an importlib-based reader that logs an ERROR
    # ("Path not found") for each miss, even when a later path has the file.
    return record.msg != "Path not found: %s"


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files (searched in ``gin_configs/``) and bindings; unknown names fail loudly."""
    if GIN_CONFIG_DIR not in gin.config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(GIN_CONFIG_DIR)
    root = logging.getLogger()
    root.addFilter(_not_search_miss)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings))
    finally:
        root.removeFilter(_not_search_miss)


def define_gin_flags() -> None:
    """``--gin_file`` (repeatable, searched in gin_configs/) and ``--gin_param`` (repeatable);
    idempotent, so every entry point can call it."""
    from absl import flags
    if "gin_file" not in flags.FLAGS:
        flags.DEFINE_multi_string("gin_file", [], "Gin files (resolved from gin_configs/).")
        flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'train.steps=100'.")
