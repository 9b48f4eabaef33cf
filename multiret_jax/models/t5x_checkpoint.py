"""T5X checkpoints -> the Flax params of :mod:`.t5` (legacy msgpack + TensorStore, and orbax).

What is read, as T5X writes it (``t5x/checkpoints.py``):

* legacy (``Checkpointer.save``): ``checkpoint_<step>/checkpoint`` is a msgpack of
  ``{"version": 3, "optimizer": train_state.state_dict()}`` (version 0: the state dict
  itself); a partitioned array's leaf is the JSON of its TensorStore zarr spec, whose
  ``kvstore.path`` (or top-level ``path``) is relative to the step directory and named
  ``"target/encoder/...".replace("/", ".")``; specs written to ``gs://`` name the ``gcs``
  driver and a dummy bucket, and are read here from the same relative path on disk.
  Unpartitioned leaves are stored in the msgpack itself.
* orbax (``OrbaxCheckpointManagerInterface``): an orbax PyTree of ``train_state.state_dict()``
  in ``checkpoint_<step>/state``; older T5X wrote ``{"version", "optimizer"}`` into the step
  directory.

Only ``target`` (the parameters) is read, never the optimizer state. Parameter names and
shapes (``t5x/examples/t5/network.py``, ``layers.py``): ``token_embedder/embedding``
``[vocab, D]``; 2-D ``[in, out]`` kernels, attention ``query|key|value`` ``[D, H*Dkv]`` and
``out`` ``[H*Dkv, D]`` (heads-major); one ``relpos_bias/rel_embedding`` ``[H, buckets]`` per
stack; no 1/sqrt(Dkv) in the attention (folded into the query initialiser), as HF.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
from flax import serialization, traverse_util

from .checkpoints import CheckpointError, StateDict, take
from .t5 import T5Config
from .t5_hf import Entry, hf_entries, set_path

INDEX = "checkpoint"  # the legacy msgpack file (t5x checkpoints._FLAX_CHECKPOINT_FILE)
ORBAX_METADATA = "_METADATA"
_STEP = re.compile(r"checkpoint_(\d+)$")


class _OrbaxAggregate(Exception):
    """A ``checkpoint`` msgpack written by (old) orbax: placeholders, not TensorStore specs."""


def _step_dir_kind(path: str) -> Optional[Tuple[str, str]]:
    """``(directory, "legacy" | "orbax")`` when ``path`` is one T5X step, else None."""
    if os.path.isfile(os.path.join(path, "state", ORBAX_METADATA)):
        return os.path.join(path, "state"), "orbax"
    if os.path.isfile(os.path.join(path, ORBAX_METADATA)):
        return path, "orbax"
    if os.path.isfile(os.path.join(path, INDEX)):
        return path, "legacy"
    return None


def find_t5x_step(path: str) -> Optional[Tuple[str, str]]:
    """Where a T5X checkpoint is, or None.

    Args:
      path: a step directory (``.../checkpoint_1000000``), its orbax ``state`` directory,
        its legacy ``checkpoint`` msgpack file, or a model directory holding
        ``checkpoint_<step>`` directories (the latest step is taken, as t5x ``latest_step``).
    Returns:
      ``(directory, kind)``: the directory holding the index (``checkpoint`` msgpack or orbax
      ``_METADATA``) and ``"legacy"`` or ``"orbax"``.
    """
    if os.path.isfile(path) and os.path.basename(path) == INDEX:
        return os.path.dirname(path) or ".", "legacy"
    if not os.path.isdir(path):
        return None
    found = _step_dir_kind(path)
    if found:
        return found
    steps = sorted((int(m.group(1)), name) for name in os.listdir(path)
                   if (m := _STEP.fullmatch(name)) and _step_dir_kind(os.path.join(path, name)))
    return _step_dir_kind(os.path.join(path, steps[-1][1])) if steps else None


def _is_spec(x: Any) -> bool:  # t5x checkpoints._maybe_update_ts_from_gcs_to_file's _is_leaf
    return isinstance(x, dict) and {"driver", "kvstore", "metadata"} <= set(x)


def _read_tensorstore(spec: Dict[str, Any], step_dir: str, name: str) -> np.ndarray:
    """One array from its (relative, file or gcs) TensorStore spec, as t5x ``_read_ts``."""
    import tensorstore as ts
    spec = copy.deepcopy(spec)
    kvstore = spec.get("kvstore") if isinstance(spec.get("kvstore"), dict) else {}
    top_level = spec.pop("path", None)  # tensorstore < 0.1.14 wrote the path here
    rel = kvstore.get("path", top_level)  # file or gcs (t5x-dummy-bucket): same relative path
    if rel is None:
        raise CheckpointError(f"{step_dir}: TensorStore spec of {name!r} has no path: {spec}")
    spec["kvstore"] = {"driver": "file", "path": os.path.join(step_dir, rel)}
    metadata = {k: v for k, v in spec.get("metadata", {}).items() if k not in ("chunks", "compressor")}
    spec["metadata"] = metadata
    if spec.get("dtype") == "uint16" or metadata.get("dtype") == "<u2":
        raise CheckpointError(f"{step_dir}: {name!r} is stored as uint16 (T5X checkpoint version "
                              "< 3 bfloat16); T5X itself refuses it: re-save it with bfloat16")
    try:
        return np.asarray(ts.open(spec, open=True).result().read().result())
    except ValueError as e:
        raise CheckpointError(f"{step_dir}: cannot read {name!r} from "
                              f"{spec['kvstore']['path']}: {e}") from None


def _read_legacy(step_dir: str) -> Dict[str, Any]:
    with open(os.path.join(step_dir, INDEX), "rb") as f:
        try:
            contents = serialization.msgpack_restore(f.read())
        except Exception as e:  # noqa: BLE001 (msgpack raises several types)
            raise CheckpointError(f"{os.path.join(step_dir, INDEX)}: not a msgpack T5X index "
                                  f"({type(e).__name__}: {e})") from None
    if not isinstance(contents, dict):
        raise CheckpointError(f"{os.path.join(step_dir, INDEX)}: not a T5X state dict")
    # t5x checkpoints._get_optimizer_state_dict: version 0 is the state dict itself
    state = contents.get("optimizer", contents) if contents.get("version", 0) else contents
    if "target" not in state:
        raise CheckpointError(f"{step_dir}: T5X checkpoint without a 'target' tree "
                              f"(keys {sorted(state)})")

    def read(x: Any, name: str) -> Any:
        if _is_spec(x):
            return _read_tensorstore(x, step_dir, name)
        if isinstance(x, dict):
            return {k: read(v, f"{name}/{k}") for k, v in x.items()}
        if isinstance(x, str):
            raise _OrbaxAggregate(x)
        return np.asarray(x)
    return read(state["target"], "target")


def _read_orbax(directory: str) -> Dict[str, Any]:
    import jax
    import orbax.checkpoint as ocp
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(os.path.abspath(directory))
    tree = getattr(meta, "item_metadata", meta)
    tree = dict(getattr(tree, "tree", tree))
    if "target" in tree:  # t5x: train_state.state_dict() in checkpoint_<step>/state
        prefix: Tuple[str, ...] = ("target",)
    elif isinstance(tree.get("optimizer"), dict) and "target" in tree["optimizer"]:
        prefix = ("optimizer", "target")  # older t5x: {"version", "optimizer"}
    else:
        raise CheckpointError(f"{directory}: orbax checkpoint without a 'target' tree "
                              f"(keys {sorted(tree)})")

    def wanted(path: Tuple[Any, ...]) -> bool:
        return tuple(getattr(k, "key", k) for k in path[:len(prefix)]) == prefix

    # numpy on the host (the saved sharding may name devices this machine lacks); the
    # optimizer state is skipped
    item = jax.tree_util.tree_map_with_path(
        lambda p, m: 0 if wanted(p) else ocp.PLACEHOLDER, tree)
    args = jax.tree_util.tree_map_with_path(
        lambda p, m: ocp.RestoreArgs(restore_type=np.ndarray) if wanted(p) else ocp.PLACEHOLDER, tree)
    restored = ckptr.restore(os.path.abspath(directory),
                             args=ocp.args.PyTreeRestore(item=item, restore_args=args))
    for k in prefix:
        restored = restored[k]
    return jax.tree_util.tree_map(np.asarray, restored)


def read_t5x_target(path: str) -> Dict[str, Any]:
    """The ``target`` (parameter) tree of a T5X checkpoint as nested numpy arrays.

    Args:
      path: see :func:`find_t5x_step`.
    Raises:
      CheckpointError: not a T5X checkpoint (names the path), no ``target``, or an array
        that cannot be read.
    """
    found = find_t5x_step(path)
    if found is None:
        raise CheckpointError(
            f"{path}: not a T5X checkpoint directory (no 'checkpoint' msgpack index, no orbax "
            f"'{ORBAX_METADATA}' here or in 'state/', no checkpoint_<step> directory holding one)")
    directory, kind = found
    if kind == "legacy":
        try:
            return _read_legacy(directory)
        except _OrbaxAggregate:  # an orbax aggregate file (placeholders) in old T5X
            pass
    return _read_orbax(directory)


def _t5x_entries(cfg: T5Config, stack: str) -> Iterator[Entry]:
    """T5X names (``target/...``; q/k/v/o kernels stored 2-D) of one stack and where they go."""
    inner = cfg.num_heads * cfg.d_kv
    for _, path, shape, kind in hf_entries(cfg, stack):
        name = "target/" + "/".join(path)
        if path[-1] == "rel_embedding":  # one table per stack in T5X, [heads, buckets]
            yield f"target/{stack}/relpos_bias/rel_embedding", path, shape[::-1], "T"
        elif kind in ("qkv", "o"):
            yield name, path, (cfg.d_model, inner) if kind == "qkv" else (inner, cfg.d_model), kind
        else:  # mlp kernels are already [in, out]; norms as they are
            yield name, path, shape[::-1] if kind == "T" else shape, "id"


def infer_t5x_config(target: Dict[str, Any], path: str, **overrides: Any) -> T5Config:
    """T5Config from the shapes of a T5X ``target`` tree (max_distance/eps: T5 defaults)."""
    try:
        enc, dec = target["encoder"], target.get("decoder", {})
        heads, buckets = np.shape(enc["relpos_bias"]["rel_embedding"])
        mlp = enc["layers_0"]["mlp"]
        kw: Dict[str, Any] = dict(
            vocab_size=np.shape(target["token_embedder"]["embedding"])[0],
            d_model=np.shape(target["token_embedder"]["embedding"])[1], num_heads=heads,
            relative_attention_num_buckets=buckets, d_ff=np.shape(mlp["wo"]["kernel"])[0],
            d_kv=int(np.prod(np.shape(enc["layers_0"]["attention"]["query"]["kernel"])[1:])) // heads,
            # t5x layers.MlpBlock: ("gelu", "linear") -> wi_0/wi_1, flax nn.gelu = tanh approx.
            feed_forward_proj="gated-gelu" if "wi_0" in mlp else "relu",
            num_layers=sum(k.startswith("layers_") for k in enc),
            num_decoder_layers=sum(k.startswith("layers_") for k in dec) or None)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot infer a T5 config from the T5X target tree ({e!r}); "
                              "pass config=") from None
    kw = {k: v if v is None or isinstance(v, str) else int(v) for k, v in kw.items()}
    return T5Config(**{**kw, "tie_word_embeddings": "logits_dense" not in dec, **overrides})


def params_from_t5x(target: Dict[str, Any], config: T5Config, path: str = "") -> Dict[str, Any]:
    """``{"params": tree}`` (float32 numpy) of :class:`.t5.ST5EncDec` from a T5X target tree."""
    flat: StateDict = {"target/" + "/".join(k): np.asarray(v)
                       for k, v in traverse_util.flatten_dict(target).items()}
    tree: Dict[str, Any] = {}
    emb = take(flat, "target/token_embedder/embedding", (config.vocab_size, config.d_model), path)
    set_path(tree, ("token_embedder", "embedding"), emb.astype(np.float32))
    for stack in ("encoder", "decoder") if "decoder" in target else ("encoder",):
        for name, p, shape, kind in _t5x_entries(config, stack):
            arr = take(flat, name, shape, path).astype(np.float32)
            if kind == "qkv":
                arr = arr.reshape(config.d_model, config.num_heads, config.d_kv)
            elif kind == "o":
                arr = arr.reshape(config.num_heads, config.d_kv, config.d_model)
            set_path(tree, p, arr.T if kind == "T" else arr)
    return {"params": tree}


def load_t5x_checkpoint(path: str, config: Optional[T5Config] = None, pooling: str = "encdec",
                        **overrides: Any) -> Tuple[T5Config, Dict[str, Any]]:
    """Config and Flax params of a T5X checkpoint (``.../checkpoint_1000000``).

    Args:
      path: a T5X step directory, legacy or orbax, or a model directory (latest step); see
        :func:`find_t5x_step`.
      config: the architecture; default: inferred from the shapes (T5X directories carry
        no config; ``relative_attention_max_distance`` then defaults to 128).
      pooling: "encdec" needs decoder weights.
      **overrides: config fields to replace.
    Returns:
      ``(config, {"params": tree})``.
    Raises:
      CheckpointError: not a T5X checkpoint, a missing tensor or a shape mismatch.
    """
    target = read_t5x_target(path)
    config = (infer_t5x_config(target, path, **overrides) if config is None
              else dataclasses.replace(config, **overrides))
    if pooling == "encdec" and "decoder" not in target:
        raise CheckpointError(f"{path}: encoder-only T5X checkpoint; ST5-EncDec pooling 'encdec' "
                              "needs the decoder (use pooling='mean')")
    return config, params_from_t5x(target, config, path)
