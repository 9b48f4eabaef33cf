"""ANCE episodes (Xiong et al. 2021; TACO's training schedule): after BM25 warm-up, each
episode re-encodes the training corpus with the current model, mines hard negatives with
``index.mine.mine_negatives`` (top-ranked passages that are not gold and not on a gold
page) and training continues on them. Mining searches exactly by default; ``index_spec``
(gin ``train.ance_index_spec``, e.g. "HNSW32") searches a FAISS index of the episode's
embeddings instead, for corpora where exact search is too slow.

The trainer mines through the shard format (``emb_dir``, ``index/distributed_search.py``):
each process encodes only its share of the corpus into ``<model_dir>/ance/episode_<e>_emb/``
(resumable: a run killed while encoding keeps the finished shards), searches its own
shards (exactly, or one FAISS index per process) and the partial rankings of all processes
are merged, so every process filters the same ranking with the same seeded RNG and mines
the same negatives; exact search gives exactly the negatives of one process. Process 0
saves them once; ``remove_episode_embeddings`` then deletes the directory (~110 GB at 36M
passages), only once the negatives file exists. Without ``emb_dir`` (or with
``passage_emb``) the whole corpus is encoded and searched in memory on each process.

``EpisodePlan`` says which step starts which episode; ``mine_episode`` does the mining for
all tasks; ``save_negatives`` / ``load_negatives`` keep each episode's negatives in
``<model_dir>/ance/episode_<e>.npz`` (numpy, no pickle) so a resumed run trains on the very
negatives it mined before the interruption.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any, Dict, Mapping, Optional

import numpy as np

from multiret_jax.data.batching import TaskData
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_passages_of, encode_queries_of
from multiret_jax.index.distributed_search import ShardSearcher, encode_share
from multiret_jax.index.shard_encoding import params_fingerprint, passage_encoder
from multiret_jax.index.faiss_index import build_index
from multiret_jax.index.mine import mine_negatives
from multiret_jax.models.biencoder import BiEncoder

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
    """``warmup_steps`` with BM25 negatives, then ``episodes`` x ``episode_steps``."""

    warmup_steps: int
    episodes: int = 0
    episode_steps: int = 0

    def __post_init__(self):
        if self.episodes < 0 or (self.episodes and self.episode_steps <= 0):
            raise ValueError(f"ANCE: episodes={self.episodes} needs episode_steps > 0, "
                             f"got {self.episode_steps}")

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.episodes * self.episode_steps

    def start(self, episode: int) -> int:
        """First step of ``episode`` (1-based)."""
        return self.warmup_steps + (episode - 1) * self.episode_steps

    def episode_at(self, step: int) -> int:
        """Episode that ``step`` belongs to (0 = BM25 warm-up)."""
        if step < self.warmup_steps or not self.episodes:
            return 0
        return min(self.episodes, 1 + (step - self.warmup_steps) // self.episode_steps)


def mine_episode(model: BiEncoder, params: Any, tokenizer: Tokenization, table: PassageTable,
                 data: Mapping[str, TaskData], *, num: int, depth: int = 100,
                 passage_len: int = 128, query_len: Optional[int] = None,
                 marker: str = "prefix", sample: bool = False, seed: int = 0,
                 batch_size: int = 64, passage_emb: Optional[np.ndarray] = None,
                 emb_dir: Optional[str] = None, shard_size: int = 100_000,
                 index_spec: Optional[str] = None, index_params: Optional[Dict[str, Any]] = None,
                 progress: bool = True) -> Dict[str, np.ndarray]:
    """Dense hard negatives for every task's training examples with ``params``.

    With ``emb_dir`` every process must call it (barriers and collectives); the result is
    the same on every process.

    Args:
      model, params, tokenizer: the current bi-encoder (``params`` fully on this process,
        ``distributed.host_local``).
      table: the training corpus (every passage is a candidate).
      data: ``{task: TaskData}``; the examples' positives and gold pages are excluded.
      num: negatives kept per query; depth: ranking depth searched.
      passage_len, query_len, marker: as in training.
      sample: sample ``num`` of the allowed top-``depth`` (ANCE) instead of the best.
      seed: RNG seed of the sampling.
      batch_size: texts per encoder call.
      passage_emb: precomputed [P, D] corpus embeddings of ``params`` (skips encoding).
      emb_dir: encode this process's share of the corpus into shards there (resumed;
        another model's shards there are removed) and search every process's shards,
        merged (``index/distributed_search.py``); None: encode and search in memory.
      shard_size: rows per shard in ``emb_dir``.
      index_spec: search a FAISS index of that ``faiss.index_factory`` spec ("HNSW32",
        "IVF4096,SQ8", ...) built over the embeddings (with ``emb_dir``: one per process,
        over its shards) instead of exact search ("Flat" gives the exact negatives);
        index_params: its search parameters (nprobe, efSearch; HNSW searches with
        efSearch >= depth anyway).
      progress: tqdm bars.
    Returns:
      ``{task: int64 [N_k, num]}`` passage rows, -1 padded.
    """
    if passage_emb is None and emb_dir is not None:
        searcher: Any = episode_searcher(model, params, tokenizer, table, emb_dir,
                                         passage_len=passage_len, batch_size=batch_size,
                                         shard_size=shard_size, index_spec=index_spec,
                                         index_params=index_params, seed=seed,
                                         progress=progress)
    else:
        if passage_emb is None:
            passage_emb = encode_passages_of(model, params, tokenizer, table, passage_len,
                                             batch_size, progress=progress)
        searcher = passage_emb
        if index_spec is not None:
            searcher = build_index(passage_emb, index_spec, passage_checksum=table.checksum,
                                   seed=seed, progress=progress
                                   ).set_params(**(index_params or {}))
    out = {}
    for i, (name, d) in enumerate(data.items()):
        q = encode_queries_of(model, params, tokenizer, d.task, [e.query for e in d.examples],
                              marker, query_len, batch_size, desc=f"{name} train queries",
                              progress=progress)
        out[name] = mine_negatives(q, searcher, [np.asarray(e.positives) for e in d.examples],
                                   table.page_ids, num, depth=depth,
                                   gold_pages=[list(e.gold_pages) for e in d.examples],
                                   sample=sample, rng=np.random.default_rng([seed, i]))
        found = float(np.mean(out[name] >= 0)) if out[name].size else 0.0
        log.info("ANCE: task %s: %d queries, %.1f%% of %d negative slots filled",
                 name, len(d.examples), 100 * found, num)
    return out


def episode_searcher(model: BiEncoder, params: Any, tokenizer: Tokenization,
                     table: PassageTable, emb_dir: str, *, passage_len: int = 128,
                     batch_size: int = 64, shard_size: int = 100_000,
                     index_spec: Optional[str] = None,
                     index_params: Optional[Dict[str, Any]] = None, seed: int = 0,
                     progress: bool = True) -> ShardSearcher:
    """Encodes this process's share of ``table`` into ``emb_dir`` and returns the searcher
    over every process's shards (``distributed_search``). Every process must call it.

    Args:
      model, params, tokenizer, table: the bi-encoder, its parameters and the corpus.
      emb_dir: the episode's shard directory (a scratch directory: shards of other
        parameters there are removed, finished shards of these parameters reused).
      passage_len, batch_size, shard_size: encoding settings.
      index_spec, index_params, seed: a FAISS index per process instead of exact search.
      progress: tqdm bars.
    Returns:
      A ``ShardSearcher``: ``searcher(queries, k) -> (rows, scores)``, merged over processes.
    """
    encode_share(passage_encoder(model, params), tokenizer, table, emb_dir,
                 fingerprint=params_fingerprint(params), scratch=True, shard_size=shard_size,
                 batch_size=batch_size, passage_len=passage_len, progress=progress)
    return ShardSearcher(emb_dir, table, index_spec=index_spec, index_params=index_params,
                         seed=seed, progress=progress)


def episode_emb_dir(model_dir: str, episode: int) -> str:
    """``<model_dir>/ance/episode_<episode>_emb``: the episode's corpus embeddings."""
    return os.path.join(model_dir, "ance", f"episode_{episode}_emb")


def remove_episode_embeddings(model_dir: str, episode: int) -> bool:
    """Deletes the episode's embedding directory once its negatives file exists.

    Returns:
      Whether a directory was removed (False: none there, or no negatives file yet, when
      the embeddings are kept for a resumed run).
    """
    emb_dir = episode_emb_dir(model_dir, episode)
    if not os.path.isdir(emb_dir) or not os.path.isfile(negatives_path(model_dir, episode)):
        return False
    shutil.rmtree(emb_dir)
    return True


def negatives_path(model_dir: str, episode: int) -> str:
    return os.path.join(model_dir, "ance", f"episode_{episode}.npz")


def save_negatives(path: str, negatives: Mapping[str, np.ndarray]) -> None:
    """Writes ``{task: rows}`` atomically (tmp file + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v, np.int64) for k, v in negatives.items()})
    os.replace(tmp, path)


def load_negatives(path: str, data: Mapping[str, TaskData]) -> Dict[str, np.ndarray]:
    """Reads an episode's negatives; errors name the file when tasks or sizes differ."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for name, d in data.items():
        if name not in out:
            raise ValueError(f"{path}: no negatives for task {name!r} (has {sorted(out)})")
        if out[name].shape[0] != len(d.examples):
            raise ValueError(f"{path}: task {name!r} has {out[name].shape[0]} rows of negatives "
                             f"for {len(d.examples)} training examples (another data set?)")
    return out
