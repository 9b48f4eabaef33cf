"""A finished training run, loaded back: its gin config, model, parameters, tokenizer,
passage table, and the query / passage settings it trained with.

    parse_run_config("runs/taco_tiny")     # <model_dir>/config.gin (+ extra files / bindings)
    run = load_run("runs/taco_tiny")       # model, params, tokenizer, marker, lengths
    table, data_dir = run_table(run.model_dir)      # the corpus, chunked as in training
    q = encode_queries_of(run.model, run.params, run.tokenizer, get_task("nq"), texts,
                          run.marker, run.query_len)   # exactly as validation does

``train.py`` writes ``<model_dir>/config.gin`` (``gin.config_str()``: the run's full
configuration), ``final_params.safetensors`` and ``tokenizer/``. A run without
``config.gin`` (trained before it was written) needs the gin files it was trained with.
``train.*`` settings the config leaves unbound take ``train()``'s own defaults, and lengths
are capped by the model's positions as ``train()`` caps them, so a tool loading the run
(``index/encode.py``, ``retrieve.py``) sees exactly what training and validation saw.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import os
from typing import Any, Optional, Sequence, Tuple

import gin

from multiret_jax.checksums import file_sha256
from multiret_jax.data.passage_store import knowledge_source_table
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import QueryFormat
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.gin_utils import parse_gin
from multiret_jax.models.params_io import PARAMS_FILE, load_params_into

log = logging.getLogger(__name__)

CONFIG_FILE = "config.gin"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def _train_module():
    # The one upward reference of this layer-2 module (tests/test_layers.py names it): a
    # run's settings are train()'s gin parameters and their defaults. By name and only
    # when called, so importing run_dir (index/encode.py does) does not import the trainer.
    return importlib.import_module("multiret_jax.train")  # also registers train.* for gin


def parse_run_config(model_dir: str, gin_files: Sequence[str] = (),
                     gin_params: Sequence[str] = (), clear: bool = True) -> Optional[str]:
    """Parses a run's ``config.gin``, then ``gin_files`` and ``gin_params`` (overrides).

    Args:
      model_dir: the training run directory.
      gin_files: more gin files (resolved from ``gin_configs/``); required when the run
        has no ``config.gin``.
      gin_params: bindings applied last, e.g. ``"train.marker='type'"``.
      clear: clear the gin config first.
    Returns:
      The ``config.gin`` path parsed, or None when only ``gin_files`` were.
    Raises:
      FileNotFoundError: ``model_dir`` does not exist, or has no ``config.gin`` and no
        ``gin_files`` were given (the message says what to pass).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r}: no such directory")
    _train_module()
    config = os.path.join(model_dir, CONFIG_FILE)
    have = os.path.isfile(config)
    if not have and not gin_files:
        raise FileNotFoundError(
            f"{config}: missing (a run trained before config.gin was written, or not a "
            "training model_dir); pass the gin files it was trained with (--gin_file=..., "
            "--gin_param=...)")
    if not have:
        log.warning("%s: missing; using the given gin files %s", config, list(gin_files))
    if clear:
        gin.clear_config()
    parse_gin(([config] if have else []) + list(gin_files), list(gin_params))
    return config if have else None


def train_setting(name: str) -> Any:
    """``train.<name>`` as the parsed config binds it (macros resolved), else ``train()``'s
    default."""
    bound = gin.get_bindings("train")
    if name in bound:
        return bound[name]
    param = inspect.signature(_train_module().train).parameters[name]
    return None if param.default is gin.REQUIRED else param.default


def run_query_format() -> QueryFormat:
    """The parsed run's ``QueryFormat`` (``train.marker``, ``train.marker_format``,
    ``train.marker_in_query_len``)."""
    return QueryFormat(train_setting("marker"), train_setting("marker_format"),
                       train_setting("marker_in_query_len"))


@dataclasses.dataclass
class TrainedRun:
    """A trained bi-encoder with the settings it trained with.

    Attributes:
      model_dir, params_path: the run and its parameter file.
      model, params, cfg: ``build_biencoder()``'s model and config, the run's parameters.
      tokenizer: the run's tokenization.
      fingerprint: identity of model + parameters (``encode_corpus``'s ``fingerprint``).
      marker, query_len: the run's ``QueryFormat`` (marker, its format, whether the
        task lengths count it) and the cap on every query's length.
      passage_len: passage length in validation / mining (``train.eval_passage_len``).
      batch_size: ``train.eval_batch_size``.
    """

    model_dir: str
    params_path: str
    model: Any
    params: Any
    cfg: Any
    tokenizer: Tokenization
    fingerprint: str
    marker: QueryFormat
    query_len: Optional[int]
    passage_len: int
    batch_size: int


def find_tokenizer(model_dir: str, tokenizer_dir: Optional[str] = None,
                   checkpoint_dir: Optional[str] = None) -> str:
    """The first directory holding ``tokenizer.json`` or ``vocab.txt`` of: ``tokenizer_dir``,
    then as in training ``train.tokenizer_dir``, the checkpoint's, ``<model_dir>/tokenizer``
    (built by training), then ``model_dir``."""
    for d in (tokenizer_dir, train_setting("tokenizer_dir"), checkpoint_dir,
              os.path.join(model_dir, "tokenizer"), model_dir):
        if d and any(os.path.isfile(os.path.join(d, f)) for f in _TOKENIZER_FILES):
            return d
    raise FileNotFoundError(f"{model_dir}: no tokenizer (tokenizer/tokenizer.json, vocab.txt); "
                            "give the tokenizer directory")


def load_run(model_dir: str, params_path: Optional[str] = None,
             tokenizer_dir: Optional[str] = None,
             passage_len: Optional[int] = None) -> TrainedRun:
    """Builds the run's model with the parsed gin config (``parse_run_config`` first, or
    the run's gin files) and loads its parameters.

    Args:
      model_dir: the run directory.
      params_path: default ``<model_dir>/final_params.safetensors``.
      tokenizer_dir: see ``find_tokenizer``.
      passage_len: override of ``train.eval_passage_len`` / ``train.passage_len``.
    Raises:
      FileNotFoundError: no parameter file / tokenizer; ValueError: parameters of
      another architecture (naming the parameter).
    """
    from multiret_jax.models.encoders import build_biencoder
    params_path = params_path or os.path.join(model_dir, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise FileNotFoundError(f"{params_path}: missing (training not finished?); give the "
                                "parameter file")
    model, params, cfg = build_biencoder()
    params = load_params_into(params_path, params)
    tokenizer = Tokenization.from_dir(find_tokenizer(model_dir, tokenizer_dir, model.source_dir))
    passage_len = (passage_len or train_setting("eval_passage_len")
                   or train_setting("passage_len"))
    query_len = train_setting("query_len")
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None:  # as train() caps them (absolute positions)
        passage_len, query_len = min(passage_len, max_pos), min(query_len or max_pos, max_pos)
    model_cfg = json.dumps(gin.get_bindings("build_biencoder"), sort_keys=True, default=str)
    fingerprint = f"params_sha256={file_sha256(params_path)} build_biencoder={model_cfg}"
    return TrainedRun(model_dir, params_path, model, params, cfg, tokenizer, fingerprint,
                      run_query_format(), query_len, passage_len,
                      train_setting("eval_batch_size"))


def run_data_dir(model_dir: str, data_dir: Optional[str] = None) -> str:
    """The run's data directory: ``data_dir``, else ``train.data_dir`` of the parsed run
    config, else ``<model_dir>/minikilt`` (where the trainer generates one)."""
    return data_dir or train_setting("data_dir") or os.path.join(model_dir, "minikilt")


def run_table(model_dir: str, data_dir: Optional[str] = None,
              chunk_mode: Optional[str] = None) -> Tuple[PassageTable, str]:
    """The run's passage table and its directory.

    Args:
      model_dir: the run directory.
      data_dir: KILT directory (``knowledge_source.jsonl``) or a saved ``PassageTable``
        (``passages.jsonl``); default ``train.data_dir``, else ``<model_dir>/minikilt``.
      chunk_mode: default ``train.chunk_mode``.
    Raises:
      FileNotFoundError: naming the directory when it holds neither.
    """
    data_dir = run_data_dir(model_dir, data_dir)
    if os.path.isfile(os.path.join(data_dir, "passages.jsonl")):
        return PassageTable.load(data_dir), data_dir
    ks = os.path.join(data_dir, "knowledge_source.jsonl")
    if not os.path.isfile(ks):
        raise FileNotFoundError(f"{ks}: missing (data_dir must be a KILT directory or a saved "
                                "PassageTable)")
    return knowledge_source_table(ks, chunk_mode or train_setting("chunk_mode"),
                                  cache_dir=train_setting("cache_dir")), data_dir
