"""mini-KILT: a seeded generator of a fictional encyclopedia and KILT-format task files.

The project's embedded default benchmark. ``generate(out_dir, scale=1.0, seed=0)`` writes

* ``knowledge_source.jsonl``: one page a line, ``{"_id", "wikipedia_id", "wikipedia_title",
  "text": [title, paragraph, ...]}`` (occasional ``Section::::History.``-style paragraphs);
* ``<task>-<split>-kilt.jsonl`` for the train and dev splits of the 8 KILT tasks of
  ``tasks.KILT_TASKS`` (fever, aidayago2, trex, structured_zeroshot, nq, hotpotqa, triviaqa,
  wow), shaped like the real files, with provenance pointing at the exact character span of
  the sentence that states the fact (paragraph ids index ``text``);
* ``minikilt_manifest.json``: seed, scale, counts, file sizes and the generator version.

Modules: ``minikilt_world`` (the entity table and the pages), ``minikilt_vocab`` (page-side
words and templates), ``minikilt_queries`` (query-side words and templates) and
``minikilt_records`` (the 8 task builders).
The world has many namesakes ("Abrel Tonvik (sculptor)" / "(footballer)"), relatives and
pages that repeat other entities' names; pages and queries phrase each relation with
different words ("X hails from Y" / "where was X born") and queries name namesakes with
paraphrased descriptors ("the stone carver Abrel Tonvik") or describe entities ("the stone
carver married to Mira Tonvik"), with the same conventions in every split: lexical matching
is misled where a retriever trained on the train split need not be (at scale 1, BM25 gets
about 40-60 dev page R-precision; see ``tests/test_minikilt.py``).

Output is byte-identical for a given (seed, scale) (pages are pure functions of the seed and
the entity; files stream to disk); a second call with a matching manifest returns at once.
A directory holding files it would write that are not an earlier mini-KILT's (listed in its
manifest, unchanged in size) is refused unless ``overwrite=True`` (``--overwrite``): a
user's own ``knowledge_source.jsonl`` is never replaced by accident.
At scale 1: ~1,800 pages, 60 (AIDA) to 600 (T-REx) train records per task and 40-70 dev
records; everything scales linearly with ``scale``.

CLI: ``python -m multiret_jax.data.minikilt --out_dir=data/minikilt --scale=1 --seed=0
[--overwrite]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import gin

from multiret_jax import cli
from multiret_jax.data import minikilt_queries as Q
from multiret_jax.data import minikilt_records as R
from multiret_jax.data import minikilt_vocab as V
from multiret_jax.data import minikilt_world as W
from multiret_jax.data.tasks import KILT_TASKS

GENERATOR_VERSION = "minikilt-2"
MANIFEST = "minikilt_manifest.json"
KNOWLEDGE_SOURCE = "knowledge_source.jsonl"
SPLITS = ("train", "dev")
PAGES_PER_SCALE = W.PAGES_PER_SCALE
# (train, dev) records per task at scale 1, imbalanced like KILT.
RECORDS_PER_SCALE: Dict[str, Tuple[int, int]] = {
    "fever": (400, 60), "aidayago2": (60, 40), "trex": (600, 60),
    "structured_zeroshot": (550, 50), "nq": (450, 70), "hotpotqa": (300, 60),
    "triviaqa": (250, 50), "wow": (200, 40)}


SOURCE_FILES = (__file__, W.__file__, V.__file__, Q.__file__, R.__file__)  # the generator


def _source_digest() -> str:
    """Digest of the generator's code (all its modules): a manifest from other code is stale."""
    h = hashlib.sha256()
    for path in SOURCE_FILES:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class GeneratedBenchmark:
    """Paths and counts of a generated mini-KILT (``task_files[task][split]`` is a path)."""

    out_dir: str
    knowledge_source: str
    task_files: Dict[str, Dict[str, str]]
    counts: Dict[str, Any]
    seed: int
    scale: float
    reused: bool = False


def _tmp(path: str) -> str:
    """Per-process temporary name: files appear atomically (tmp + rename)."""
    return f"{path}.tmp{os.getpid()}"


# ------------------------------------------------------------------------- generation
def _from_manifest(out_dir: str, seed: int, scale: float) -> Optional[GeneratedBenchmark]:
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            man = json.load(f)
        if (man["version"], man["source"], man["seed"], man["scale"]) != (
                GENERATOR_VERSION, _source_digest(), seed, scale):
            return None
        if any(os.path.getsize(os.path.join(out_dir, p)) != s for p, s in man["sizes"].items()):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return _benchmark(out_dir, man["counts"], seed, scale, reused=True)


def _benchmark(out_dir: str, counts: Dict[str, Any], seed: int, scale: float,
               reused: bool = False) -> GeneratedBenchmark:
    files = {t.name: {s: os.path.join(out_dir, t.filename(s)) for s in SPLITS} for t in KILT_TASKS}
    return GeneratedBenchmark(out_dir, os.path.join(out_dir, KNOWLEDGE_SOURCE), files, counts,
                              seed, scale, reused)


def _write_jsonl(path: str, rows: Iterable[dict]) -> int:
    n = 0
    with open(_tmp(path), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    os.replace(_tmp(path), path)
    return n


def output_names() -> list:
    """The files ``generate`` writes (relative to its directory), manifest last."""
    return ([KNOWLEDGE_SOURCE] + [t.filename(s) for t in KILT_TASKS for s in SPLITS]
            + [MANIFEST])


def foreign_files(out_dir: str) -> list:
    """Files in ``out_dir`` that ``generate`` would replace and that an earlier mini-KILT
    did not write: absent from its manifest, or changed in size since."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            sizes = json.load(f).get("sizes", {})
        sizes = sizes if isinstance(sizes, dict) else {}
    except (OSError, ValueError, AttributeError):
        sizes = {}
    out = []
    for name in output_names()[:-1]:
        path = os.path.join(out_dir, name)
        if os.path.exists(path) and (name not in sizes or os.path.getsize(path) != sizes[name]):
            out.append(name)
    if not sizes and os.path.exists(os.path.join(out_dir, MANIFEST)):
        out.append(MANIFEST)
    return out


@gin.configurable
def generate(out_dir: str, *, scale: float = 1.0, seed: int = 0, force: bool = False,
             overwrite: bool = False) -> GeneratedBenchmark:
    """Generates mini-KILT into ``out_dir`` (or reuses it if its manifest matches).

    Args:
      out_dir: output directory (created).
      scale: size multiplier; pages and records grow linearly (1.0: ~1,800 pages).
      seed: the world and records are a deterministic function of (seed, scale).
      force: regenerate even if a matching manifest exists.
      overwrite: replace files in ``out_dir`` that an earlier mini-KILT did not write.
    Returns:
      A ``GeneratedBenchmark`` with the paths and counts.
    Raises:
      FileExistsError: ``out_dir`` holds such files and ``overwrite`` is False (nothing is
        written).
    """
    scale, seed = float(scale), int(seed)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    if not force and (done := _from_manifest(out_dir, seed, scale)) is not None:
        return done
    if not overwrite and (theirs := foreign_files(out_dir)):
        raise FileExistsError(
            f"{out_dir} holds files the mini-KILT generator would overwrite and did not write: "
            f"{', '.join(theirs)} (choose another directory, or pass --overwrite / "
            "overwrite=True to replace them)")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))
    w = W.World(seed, scale)
    stats = {"words": 0, "passages": 0}

    def pages():
        for i in range(w.n):
            page = w.render(i)
            stats["words"] += page.words
            stats["passages"] += max(1, math.ceil(page.words / 100))
            yield page.json

    _write_jsonl(os.path.join(out_dir, KNOWLEDGE_SOURCE), pages())
    q, records = R.Queries(w), {}
    for task in KILT_TASKS:
        records[task.name] = {s: _write_jsonl(os.path.join(out_dir, task.filename(s)), q.records(
            task.name, s, max(1, round(n * scale)))) for s, n in zip(
                SPLITS, RECORDS_PER_SCALE[task.name])}
    counts = {"pages": w.n, "words": stats["words"], "approx_passages_100w": stats["passages"],
              "records": records}
    names = output_names()[:-1]
    man = {"generator": "multiret_jax.data.minikilt", "version": GENERATOR_VERSION,
           "source": _source_digest(), "seed": seed, "scale": scale, "counts": counts,
           "sizes": {p: os.path.getsize(os.path.join(out_dir, p)) for p in names}}
    with open(_tmp(os.path.join(out_dir, MANIFEST)), "w", encoding="utf-8") as f:
        json.dump(man, f, indent=1)
    os.replace(_tmp(os.path.join(out_dir, MANIFEST)), os.path.join(out_dir, MANIFEST))
    return _benchmark(out_dir, counts, seed, scale)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> GeneratedBenchmark:
    """CLI: generate mini-KILT and print its counts."""
    ap = argparse.ArgumentParser(prog="minikilt", description=__doc__.split("\n")[0])
    ap.add_argument("--out_dir", default="data/minikilt")
    ap.add_argument("--scale", type=_positive_float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace files in --out_dir that a mini-KILT did not write")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        bench = generate(os.path.abspath(args.out_dir), scale=args.scale, seed=args.seed,
                         force=args.force, overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        ap.exit(2, f"minikilt: error: {cli.error_message(e)}\n")
    c = bench.counts
    print(f"mini-KILT seed={bench.seed} scale={bench.scale} in {bench.out_dir} "
          f"({'reused' if bench.reused else 'generated'} in {time.perf_counter() - t0:.1f}s)")
    print(f"pages {c['pages']}  words {c['words']}  ~100-word passages {c['approx_passages_100w']}")
    for task, n in c["records"].items():
        print(f"  {task:<20} train {n['train']:>7}  dev {n['dev']:>6}")
    return bench


if __name__ == "__main__":
    main()
