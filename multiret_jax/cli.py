"""What every command-line entry point does first: readable logging, absolute paths, and
one-line errors.

- ``run(main, tool)``: ``app.run`` with errors a user can fix (bad flags, bad input files,
  missing paths, refused overwrites) printed as one line ``<tool>: error: ...`` and exit
  status 2; the traceback is printed too with ``--verbosity=1``.

- ``setup_logging()``: our loggers (``multiret_jax.*``) at INFO, third-party ones (orbax and
  everything else that logs through absl, jax, bm25s, ...) at WARNING; absl's
  ``--verbosity`` raises them (1: third-party INFO, 2: ours DEBUG too). One short format.
- ``absolute_flags(...)`` / ``absolute_gin_paths()``: paths a user gives (flags, gin
  bindings and the macros behind them) are made absolute at the boundary, relative to the
  working directory, so a command that works from one directory works from any, and
  libraries that insist on absolute paths (orbax) get them. The resolved values are bound
  back into gin, so a run's saved ``config.gin`` names concrete directories.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable, Iterable, Optional, Sequence

import gin

# Gin parameters that hold a path (configurables that are not registered are skipped).
PATH_PARAMETERS = (
    "train.model_dir", "train.data_dir", "train.tokenizer_dir", "train.init_from",
    "build_biencoder.checkpoint_dir", "run_evaluation.data_dir", "run_evaluation.out_dir",
)

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def absolute_path(path: Optional[str]) -> Optional[str]:
    """``path`` made absolute against the working directory (``~`` expanded); None and
    URLs (``gs://...``) are returned as they are."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def absolute_flags(flag_values, *names: str) -> None:
    """Rewrites the named string flags of ``flag_values`` (absl FLAGS) as absolute paths."""
    for name in names:
        value = getattr(flag_values, name)
        if isinstance(value, str) and value:
            setattr(flag_values, name, absolute_path(value))


def absolute_gin_paths(parameters: Iterable[str] = PATH_PARAMETERS) -> None:
    """Binds every path-valued gin parameter (macros and ``@fn()`` references resolved) to
    its absolute path; parameters of configurables that are not registered are skipped."""
    for name in parameters:
        configurable, param = name.rsplit(".", 1)
        try:
            bound = gin.get_bindings(configurable)
        except ValueError:  # not registered by this entry point
            continue
        value = bound.get(param)
        if isinstance(value, str) and value:
            with gin.unlock_config():
                gin.bind_parameter(name, absolute_path(value))


class _LevelFilter(logging.Filter):
    """Passes our records from ``ours`` up and everybody else's from ``third_party`` up,
    whatever levels the libraries set on their own loggers (bm25s sets DEBUG on import)."""

    def __init__(self, ours: int, third_party: int):
        super().__init__()
        self.ours, self.third_party = ours, third_party

    def filter(self, record: logging.LogRecord) -> bool:
        mine = record.name.split(".")[0] in OUR_LOGGERS
        return record.levelno >= (self.ours if mine else self.third_party)


OUR_LOGGERS = ("multiret_jax", "__main__")  # "__main__": a module run with python -m


def setup_logging(verbosity: Optional[int] = None) -> None:
    """Ours at INFO, third-party loggers at WARNING; ``verbosity`` (default: absl's
    ``--verbosity`` flag when parsed, else 0) >= 1 lets third-party INFO through and >= 2
    shows our DEBUG messages."""
    if verbosity is None:
        from absl import flags
        verbosity = flags.FLAGS.verbosity if flags.FLAGS.is_parsed() else 0
    third_party = logging.INFO if verbosity >= 1 else logging.WARNING
    ours = logging.DEBUG if verbosity >= 2 else logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        for old in [f for f in handler.filters if isinstance(f, _LevelFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_LevelFilter(ours, third_party))
    root.setLevel(min(ours, third_party))
    for name in ("absl", "jax", "orbax", "bm25s", "tensorboardX", "matplotlib"):
        logging.getLogger(name).setLevel(third_party)
    # orbax's reads of a damaged checkpoint leave failed asyncio tasks whose errors asyncio
    # logs at exit, after ours named the checkpoint: shown only with --verbosity >= 1
    logging.getLogger("asyncio").setLevel(third_party if verbosity >= 1 else logging.CRITICAL)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)


# Errors that a user's input causes: the message says what to fix, a traceback adds nothing.
# (SyntaxError: a gin file or --gin_param that does not parse; gin names the line.)
USER_ERRORS = (ValueError, KeyError, OSError, EOFError, SyntaxError)


class UsageError(ValueError):
    """A flag value or combination that cannot work (raised before any work starts)."""


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` on one line: a KeyError's quotes and the lines gin adds
    ("In call to configurable ...") dropped."""
    text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    if isinstance(exc, SyntaxError):  # gin: the last line of its message is the reason
        reason = (exc.msg or "").strip().splitlines()[-1:] or ["syntax error"]
        text = (f"{exc.filename or 'gin bindings'}:{exc.lineno}: {(exc.text or '').strip()} "
                f"({reason[0].strip()})")
    lines = [ln for ln in str(text).splitlines()
             if not ln.strip().startswith("In call to configurable")]
    out = " ".join(" ".join(lines).split())
    if isinstance(exc, KeyError) and len(out) > 1 and out[0] == out[-1] and out[0] in "'\"":
        out = out[1:-1]  # a KeyError re-raised by gin prints its message quoted
    return out or type(exc).__name__


def fail(tool: str, exc: BaseException) -> None:
    """Prints ``<tool>: error: <message>`` (after the traceback with ``--verbosity>=1``)
    and exits with status 2."""
    from absl import flags
    verbosity = flags.FLAGS.verbosity if flags.FLAGS.is_parsed() else 0
    if verbosity >= 1:
        traceback.print_exception(exc)
    hint = ("" if verbosity >= 1 or isinstance(exc, UsageError)
            else " (--verbosity=1 shows the traceback)")
    sys.stderr.write(f"{tool}: error: {error_message(exc)}{hint}\n")
    sys.stderr.flush()
    sys.exit(2)


def run(main: Callable[[Sequence[str]], None], tool: str) -> None:
    """``absl.app.run(main)`` for the command ``tool``: a flag that fails to parse or
    validate, ``app.UsageError`` and the ``USER_ERRORS`` raised by ``main`` print one line
    ``<tool>: error: ...`` and exit 2 (``fail``); other exceptions (bugs) keep their
    traceback."""
    from absl import app, flags

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(tool, UsageError(str(e)))

    def guarded(argv):
        try:
            main(argv)
        except app.UsageError as e:
            fail(tool, UsageError(str(e)))
        except USER_ERRORS as e:
            fail(tool, e)

    app.run(guarded, flags_parser=parse)



def int_list(flag: str, values: Sequence[str], minimum: int = 1) -> list:
    """The integers of a list flag (``--ks=1,5,20``); ``UsageError`` naming the flag for a
    value that is not an integer >= ``minimum``."""
    out = []
    for v in values:
        try:
            n = int(v)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise UsageError(f"--{flag}: {v!r} is not an integer >= {minimum}")
        out.append(n)
    if not out:
        raise UsageError(f"--{flag}: give at least one value")
    return out
