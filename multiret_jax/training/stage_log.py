"""One log line per stage of a run: what it did, its seconds and the process's peak memory
while it ran, for the stages without a progress bar (reading the passages, BM25, the
validation pool, compiling, validation, ANCE mining).

    with timed("BM25 negatives"):
        ...
    # INFO BM25 negatives ...
    # INFO BM25 negatives: done in 42 s (peak RSS 3.1 GiB)

The peak is Linux's ``VmHWM``, reset at the start of each stage (``/proc/self/clear_refs``)
so it is the stage's own; elsewhere ``peak_rss_bytes`` is None and the line has no peak.
``benchmarks/scale_rehearsal.py`` reads these lines (``STAGE_LINE``).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Optional

log = logging.getLogger(__name__)

STAGE_LINE = re.compile(r"(?P<what>.+): done in (?P<seconds>[0-9.]+) s"
                        r"(?: \(peak RSS (?P<gib>[0-9.]+) GiB\))?$")


def reset_peak_rss() -> None:
    """Resets the process's peak RSS to its current RSS (Linux >= 4.0; else nothing)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> Optional[int]:
    """The process's peak RSS since the last reset (``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class timed:
    """Logs ``what`` before, and after: its seconds and peak RSS (``STAGE_LINE``)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        log.info("%s ...", self.what)
        reset_peak_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            peak = peak_rss_bytes()
            log.info("%s: done in %.1f s%s", self.what, time.perf_counter() - self.start,
                     "" if peak is None else f" (peak RSS {peak / 2 ** 30:.2f} GiB)")
