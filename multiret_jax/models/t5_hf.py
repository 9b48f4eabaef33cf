"""HF T5 checkpoints (v1.0 and v1.1 names) <-> the Flax params of :mod:`.t5`.

Accepts ``T5Model``, ``T5ForConditionalGeneration`` and ``T5EncoderModel`` directories
(``lm_head.weight`` is ignored: ST5 never uses the LM head). torch ``nn.Linear`` weights
are ``[out, in]``; our kernels are ``[in, out]`` with the head axes split out
(q/k/v ``[D, H, Dkv]``, o ``[H, Dkv, D]``). T5X checkpoints: :mod:`.t5x_checkpoint`.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterator, Tuple

import flax.linen as nn
import numpy as np

from .checkpoints import (CheckpointError, StateDict, check_architecture, read_config,
                          read_state_dict, take, write_hf_dir)
from .t5 import POOLINGS, T5Config

Path = Tuple[str, ...]
# (hf name, path in our params, hf shape, kind); kind says how the array is transposed
Entry = Tuple[str, Path, Tuple[int, ...], str]
IGNORED = ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
           "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def _attention(hf: str, ours: Path, cfg: T5Config) -> Iterator[Entry]:
    inner = cfg.num_heads * cfg.d_kv
    for a, b in (("q", "query"), ("k", "key"), ("v", "value")):
        yield f"{hf}.{a}.weight", ours + (b, "kernel"), (inner, cfg.d_model), "qkv"
    yield f"{hf}.o.weight", ours + ("out", "kernel"), (cfg.d_model, inner), "o"


def hf_entries(cfg: T5Config, stack: str) -> Iterator[Entry]:
    """Every HF tensor of one stack ("encoder" or "decoder") and where it goes."""
    dec = stack == "decoder"
    n = cfg.num_decoder_layers if dec else cfg.num_layers
    for i in range(n):
        hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
        attn = "self_attention" if dec else "attention"
        yield from _attention(f"{hf}.0.SelfAttention", ours + (attn,), cfg)
        if i == 0:
            yield (f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                   ours + ("relpos_bias", "rel_embedding"),
                   (cfg.relative_attention_num_buckets, cfg.num_heads), "id")
        pre = "pre_self_attention_layer_norm" if dec else "pre_attention_layer_norm"
        yield f"{hf}.0.layer_norm.weight", ours + (pre, "scale"), (cfg.d_model,), "id"
        if dec:
            yield from _attention(f"{hf}.1.EncDecAttention", ours + ("encoder_decoder_attention",), cfg)
            yield (f"{hf}.1.layer_norm.weight", ours + ("pre_cross_attention_layer_norm", "scale"),
                   (cfg.d_model,), "id")
        ff = f"{hf}.{2 if dec else 1}"
        for w in (("wi_0", "wi_1") if cfg.is_gated else ("wi",)):
            yield f"{ff}.DenseReluDense.{w}.weight", ours + ("mlp", w, "kernel"), (cfg.d_ff, cfg.d_model), "T"
        yield f"{ff}.DenseReluDense.wo.weight", ours + ("mlp", "wo", "kernel"), (cfg.d_model, cfg.d_ff), "T"
        yield f"{ff}.layer_norm.weight", ours + ("pre_mlp_layer_norm", "scale"), (cfg.d_model,), "id"
    norm = "decoder_norm" if dec else "encoder_norm"
    yield f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), (cfg.d_model,), "id"


def _to_ours(arr: np.ndarray, kind: str, cfg: T5Config) -> np.ndarray:
    if kind == "qkv":
        return arr.T.reshape(cfg.d_model, cfg.num_heads, cfg.d_kv)
    if kind == "o":
        return arr.T.reshape(cfg.num_heads, cfg.d_kv, cfg.d_model)
    return arr.T if kind == "T" else arr


def set_path(tree: Dict[str, Any], path: Path, value: np.ndarray) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: Dict[str, Any], path: Path) -> np.ndarray:
    for k in path:
        tree = tree[k]
    return np.asarray(tree, np.float32)


def _strip_prefix(state: StateDict) -> StateDict:
    """Drops the ``transformer.`` prefix of T5For{Sequence,Token}Classification checkpoints."""
    if not any(k.startswith(("encoder.", "shared.")) for k in state):
        return {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    return state


def has_decoder(state: StateDict) -> bool:
    """Whether an HF T5 state dict holds decoder weights (False for ``T5EncoderModel``)."""
    return any(k.startswith("decoder.block.") for k in _strip_prefix(state))


def params_from_hf(state: StateDict, config: T5Config, directory: str = "") -> Dict[str, Any]:
    """Flax params ``{"params": ...}`` from an HF T5 state dict.

    Args:
      state: ``{hf_name: array}``; ``shared.weight`` (or ``encoder.embed_tokens.weight``)
        and the encoder are required, the decoder is loaded when present.
      config: the model config the shapes are checked against.
      directory: named in error messages.
    Returns:
      ``{"params": tree}`` of float32 numpy arrays; no ``decoder`` key for encoder-only
      checkpoints.
    Raises:
      CheckpointError: a missing tensor, or one whose shape differs (names both shapes).
    """
    state = _strip_prefix(state)
    emb = "shared.weight" if "shared.weight" in state else "encoder.embed_tokens.weight"
    tree: Dict[str, Any] = {}
    set_path(tree, ("token_embedder", "embedding"),
         take(state, emb, (config.vocab_size, config.d_model), directory).astype(np.float32))
    used = {emb}
    for stack in ("encoder", "decoder") if has_decoder(state) else ("encoder",):
        for hf, path, shape, kind in hf_entries(config, stack):
            set_path(tree, path, _to_ours(take(state, hf, shape, directory).astype(np.float32), kind, config))
            used.add(hf)
    unused = sorted(k for k in state if k not in used and k not in IGNORED)
    if unused:
        warnings.warn(f"{directory}: {len(unused)} checkpoint tensors not used by T5: {unused[:5]}")
    return {"params": tree}


def params_to_hf(params: Dict[str, Any], config: T5Config) -> StateDict:
    """HF ``T5Model`` (or ``T5EncoderModel`` without a decoder) state dict from our params.

    Args:
      params: ``{"params": tree}`` or the tree itself; boxed (logically partitioned)
        values are unboxed.
      config: the model config.
    Returns:
      ``{hf_name: float32 array}`` with ``shared.weight`` (the embeddings' canonical name).
    """
    tree = nn.meta.unbox(params)
    tree = tree.get("params", tree)
    out: StateDict = {"shared.weight": _get(tree, ("token_embedder", "embedding"))}
    for stack in ("encoder", "decoder") if "decoder" in tree else ("encoder",):
        for hf, path, shape, kind in hf_entries(config, stack):
            arr = _get(tree, path)
            if kind == "qkv":
                arr = arr.reshape(config.d_model, -1)
            elif kind == "o":
                arr = arr.reshape(-1, config.d_model)
            out[hf] = np.ascontiguousarray(arr if kind == "id" else arr.T)
            if out[hf].shape != shape:
                raise CheckpointError(f"param {path} gives {hf!r} shape {out[hf].shape}, "
                                      f"config expects {shape}")
    return out


def load_t5(directory: str, pooling: str = "encdec", **overrides: Any) -> Tuple[T5Config, Dict[str, Any]]:
    """Config and Flax params of an HF T5 checkpoint directory.

    Args:
      directory: holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``).
      pooling: the ST5 pooling the params are for; "encdec" needs decoder weights.
      **overrides: config fields to replace (``dtype="bfloat16"``, ``dropout_rate=0.0`` ...).
    Returns:
      ``(config, {"params": tree})`` for :class:`.t5.ST5EncDec` / :class:`.t5.T5EncoderModule`.
    Raises:
      CheckpointError: not a T5 checkpoint, a shape mismatch, or an encoder-only
        checkpoint when ``pooling="encdec"``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    hf_config = read_config(directory)
    check_architecture(hf_config, ("t5",), directory)
    config = T5Config.from_hf_dict(hf_config, **overrides)
    state = read_state_dict(directory)
    if pooling == "encdec" and not has_decoder(state):
        raise CheckpointError(
            f"{directory}: encoder-only T5 checkpoint (architectures "
            f"{hf_config.get('architectures')}, no decoder.* weights); ST5-EncDec pooling "
            "'encdec' needs the decoder: load a T5Model/T5ForConditionalGeneration checkpoint "
            "or use pooling='mean' (ST5-Enc)")
    return config, params_from_hf(state, config, directory)


def export_t5(params: Dict[str, Any], config: T5Config, directory: str) -> None:
    """Writes ``model.safetensors`` + ``config.json`` for ``transformers.T5Model.from_pretrained``.

    Args:
      params: our params (``{"params": tree}`` or the tree; boxed or not).
      config: the model config.
      directory: created if needed.
    """
    state = params_to_hf(params, config)
    arch = "T5Model" if any(k.startswith("decoder.") for k in state) else "T5EncoderModel"
    write_hf_dir(directory, state, config.to_hf_dict(arch))
