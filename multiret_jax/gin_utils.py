"""Gin set-up shared by the command-line entry points.

``--gin_file=taco.gin`` resolves from the repository's ``gin_configs/`` directory (and
from the current directory), so users name configs without a path, t5x-style.
"""

from __future__ import annotations

import os
from typing import Sequence

import gin

GIN_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "gin_configs")


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files (searched in ``gin_configs/``) and bindings; unknown names fail loudly."""
    gin.add_config_file_search_path(GIN_CONFIG_DIR)
    gin.parse_config_files_and_bindings(list(files), list(bindings))


def define_gin_flags() -> None:
    """``--gin_file`` (repeatable, searched in gin_configs/) and ``--gin_param`` (repeatable);
    idempotent, so every entry point can call it."""
    from absl import flags
    if "gin_file" not in flags.FLAGS:
        flags.DEFINE_multi_string("gin_file", [], "Gin files (resolved from gin_configs/).")
        flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'train.steps=100'.")
