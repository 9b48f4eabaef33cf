"""A run directory's configuration: saved once, compared on every resume.

``<model_dir>/config.gin`` is the run's full gin configuration (``gin.config_str()``); the
tools that read a finished run (retrieve, index.encode, plots) rebuild the model from it,
so it must describe the parameters in the directory. ``check_and_save`` runs before
``train`` touches anything:

* no ``config.gin`` yet: it is written (atomically);
* the same bindings (macros resolved; the operational settings in ``IGNORED`` may differ):
  nothing is written, the run resumes;
* different bindings in a directory that holds training state (checkpoints, final
  parameters, a summary): ``ConfigChangedError`` lists every changed binding and nothing
  is written, unless ``allow_change`` (``--allow_config_change``): then the old file is
  kept as ``config.<n>.gin`` and the new one written;
* different bindings in a directory without training state (a run stopped before its
  first checkpoint): replaced, with a log line.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from typing import Callable, Dict, List, Optional

from gin import config_parser

from multiret_jax.outputs import write_text

log = logging.getLogger(__name__)

CONFIG_FILE = "config.gin"
# Settings that change how a run is executed, not what it trains: they may differ on resume.
IGNORED = frozenset({"train.halt_after", "train.coordinator_address", "train.num_processes",
                     "train.process_id", "train.keep", "train.allow_config_change",
                     "train.dry_run", "train.return_settings"})
# Files whose presence means the directory holds training state.
STATE_MARKERS = ("checkpoints", "final_params.safetensors", "summary.json")


class ConfigChangedError(ValueError):
    """A resumed run's configuration differs from the one it was trained with."""


class _Delegate(config_parser.ParserDelegate):
    """Keeps references and macros as text (``@fn()``, ``%MACRO``): nothing is evaluated."""

    def configurable_reference(self, scoped_name, evaluate):
        return _Text(f"@{scoped_name}{'()' if evaluate else ''}")

    def macro(self, macro_name):
        return _Text(f"%{macro_name}")


class _Text(str):
    def __repr__(self):
        return str(self)


def bindings(text: str) -> Dict[str, str]:
    """``{"configurable.param": repr(value)}`` of a gin config text, each ``%MACRO`` value
    replaced by the macro's own value (macro definitions themselves are not listed)."""
    raw: Dict[str, object] = {}
    for stmt in config_parser.ConfigParser(text, _Delegate()):
        if isinstance(stmt, config_parser.BindingStatement):
            name = ".".join(p for p in (stmt.scope, stmt.selector, stmt.arg_name) if p)
            raw[name] = stmt.value
    macros = {k: v for k, v in raw.items() if "." not in k}

    def resolve(value, depth=0):
        if isinstance(value, _Text) and value.startswith("%") and depth < 16:
            name = value[1:]
            return resolve(macros[name], depth + 1) if name in macros else value
        return value

    return {k: repr(resolve(v)) for k, v in raw.items() if "." in k}


def defaults_of(fn: Callable, name: Optional[str] = None) -> Dict[str, str]:
    """``{"<name>.<param>": repr(default)}`` of a configurable's keyword defaults (``name``
    defaults to the function's name): a binding absent from one config and at its default
    in the other is the same setting."""
    name = name or fn.__name__
    return {f"{name}.{p.name}": repr(p.default)
            for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty}


def differences(old: str, new: str, defaults: Optional[Dict[str, str]] = None) -> List[str]:
    """Human-readable changes from config text ``old`` to ``new`` (``IGNORED`` skipped; a
    binding missing on one side counts as its value in ``defaults`` when it has one)."""
    a, b = bindings(old), bindings(new)
    for side in (a, b):
        for key, value in (defaults or {}).items():
            side.setdefault(key, value)
    out = []
    for name in sorted(set(a) | set(b)):
        if name in IGNORED or a.get(name) == b.get(name):
            continue
        if name not in a:
            out.append(f"{name}: (unset) -> {b[name]}")
        elif name not in b:
            out.append(f"{name}: {a[name]} -> (unset)")
        else:
            out.append(f"{name}: {a[name]} -> {b[name]}")
    return out


def has_training_state(model_dir: str) -> bool:
    """Whether ``model_dir`` holds checkpoints, final parameters or a summary."""
    for name in STATE_MARKERS:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
            return True
    return False


def _free_name(model_dir: str) -> str:
    n = 1
    while os.path.exists(os.path.join(model_dir, f"config.{n}.gin")):
        n += 1
    return os.path.join(model_dir, f"config.{n}.gin")


def check_and_save(model_dir: str, config_text: str, allow_change: bool = False,
                   write: bool = True,
                   defaults: Optional[Dict[str, str]] = None) -> Optional[List[str]]:
    """Compares ``config_text`` with ``<model_dir>/config.gin`` and saves it (see the module
    docstring).

    Args:
      model_dir: the run directory (created when the config is written).
      config_text: the new configuration (``gin.config_str()``).
      allow_change: continue with a changed configuration (the old file is kept as
        ``config.<n>.gin``).
      defaults: parameter defaults (``defaults_of``) for bindings on one side only.
      write: False to check only (processes other than the main one; a check before
        the data and model are loaded).
    Returns:
      The list of changes accepted (empty: same configuration), or None for a new run.
    Raises:
      ConfigChangedError: the configuration changed in a directory with training state and
        ``allow_change`` is False; no file was touched.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        if write:
            os.makedirs(model_dir, exist_ok=True)
            write_text(path, config_text)
        return None
    with open(path, encoding="utf-8") as f:
        old = f.read()
    try:
        changes = differences(old, config_text, defaults)
    except Exception as e:  # a hand-edited or truncated file
        raise ConfigChangedError(f"{path}: cannot be read as a gin config ({e}); move it "
                                 "away or use a new --model_dir") from e
    if not changes:
        return []
    listed = "; ".join(changes)
    if not has_training_state(model_dir):
        if write:
            log.info("%s: no checkpoint yet, configuration replaced (%s)", path, listed)
    elif not allow_change:
        raise ConfigChangedError(
            f"{model_dir} was trained with another configuration ({path}); changed: {listed}. "
            "Nothing was written. Use a new --model_dir, undo the change, or pass "
            "--allow_config_change to resume with it (the old config is kept beside it)")
    else:
        kept = _free_name(model_dir)
        if not write:  # a check only: the main process keeps the old file and says so
            return changes
        shutil.copyfile(path, kept)
        log.warning("resuming %s with a changed configuration (%s); the previous one is "
                    "kept as %s", model_dir, listed, kept)
    if write:
        write_text(path, config_text)
    return changes
