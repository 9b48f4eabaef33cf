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
