"""File checksums shared by the shard format (``index/shards.py``) and run fingerprints
(``run_dir.py``)."""

from __future__ import annotations

import hashlib


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
