"""Gin set-up shared by the command-line entry points.

``--gin_file=taco.gin`` resolves from the repository's ``gin_configs/`` directory (and
from the current directory), so users name configs without a path, t5x-style.
"""

from __future__ import annotations

import os
from typing import Sequence

import gin

from multiret_jax import embedded  # noqa: F401  (registers @embedded_data_dir, @installed_model_dir)

GIN_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "gin_configs")


def _is_package_reader(reader) -> bool:
    return getattr(reader[0], "__module__", "") == "gin.resource_reader"


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files (searched in ``gin_configs/``) and bindings; unknown names fail loudly.

    Only plain files are read: gin's package-resource reader is switched off while parsing.
    It treats ``include 'runs/train.gin'`` as package ``runs``, and a ``runs/`` directory in
    the working directory (where the README's runs write) is a namespace package without a
    file, on which it crashes with a TypeError.
    """
    if GIN_CONFIG_DIR not in gin.config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(GIN_CONFIG_DIR)
    readers = gin.config._FILE_READERS
    saved = list(readers)
    readers[:] = [r for r in readers if not _is_package_reader(r)]
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings))
    finally:
        readers[:] = saved


def define_gin_flags() -> None:
    """``--gin_file`` (repeatable, searched in gin_configs/) and ``--gin_param`` (repeatable);
    idempotent, so every entry point can call it."""
    from absl import flags
    if "gin_file" not in flags.FLAGS:
        flags.DEFINE_multi_string("gin_file", [], "Gin files (resolved from gin_configs/).")
        flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'train.steps=100'.")
