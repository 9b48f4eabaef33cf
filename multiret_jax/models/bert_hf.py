"""HF BERT checkpoints <-> ``BertEncoder`` parameter trees.

``load_bert(dir)`` reads an HF directory (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``) into ``(BertConfig, params)``; ``export_bert`` writes one that
``transformers.BertModel.from_pretrained`` loads. Every tensor is shape-checked, so a
mismatch names the HF parameter and both shapes.

Torch ``nn.Linear`` weights are ``[out, in]``; our kernels are ``[in, out]`` with the
attention projections split per head (``[E, H, D]`` / ``[H, D, E]``).

The pooler: ``BertEncoder`` has none (DPR-style retrieval pools the [CLS] hidden state,
or a masked mean, never the tanh pooler), so ``params_from_hf`` ignores ``pooler.*`` and
``export_bert`` writes no pooler. ``BertModel.from_pretrained`` on an exported directory
then reports the pooler weights as newly (randomly) initialised; ``last_hidden_state`` is
unaffected. Load with ``add_pooling_layer=False`` to avoid the warning.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import numpy as np

from multiret_jax.models.bert import BertConfig
from multiret_jax.models.checkpoints import (CheckpointError, StateDict, check_architecture,
                                             read_config, read_state_dict, take, write_hf_dir)

log = logging.getLogger(__name__)

_ANCHOR = "embeddings.word_embeddings.weight"
_IGNORED = ("embeddings.position_ids", "pooler.")


def _prefix(state: Mapping[str, Any], directory: str) -> str:
    """The prefix before ``embeddings.word_embeddings.weight`` ("", "bert.", ...)."""
    found = sorted(k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR))
    if not found:
        raise CheckpointError(f"{directory}: parameter {_ANCHOR!r} missing from the checkpoint "
                              "(not a BERT state dict?)")
    if len(found) > 1:
        raise CheckpointError(f"{directory}: several BERT encoders in one checkpoint "
                              f"(prefixes {found}); extract one first")
    return found[0]


def _hf_shapes(c: BertConfig) -> Dict[str, Tuple[int, ...]]:
    """HF (torch) parameter names and shapes, without prefix."""
    E, I = c.hidden_size, c.intermediate_size
    s = {"embeddings.word_embeddings.weight": (c.vocab_size, E),
         "embeddings.position_embeddings.weight": (c.max_position_embeddings, E),
         "embeddings.token_type_embeddings.weight": (c.type_vocab_size, E),
         "embeddings.LayerNorm.weight": (E,), "embeddings.LayerNorm.bias": (E,)}
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            s[f"{p}attention.self.{n}.weight"] = (E, E)
            s[f"{p}attention.self.{n}.bias"] = (E,)
        s.update({f"{p}attention.output.dense.weight": (E, E),
                  f"{p}attention.output.dense.bias": (E,),
                  f"{p}attention.output.LayerNorm.weight": (E,),
                  f"{p}attention.output.LayerNorm.bias": (E,),
                  f"{p}intermediate.dense.weight": (I, E), f"{p}intermediate.dense.bias": (I,),
                  f"{p}output.dense.weight": (E, I), f"{p}output.dense.bias": (E,),
                  f"{p}output.LayerNorm.weight": (E,), f"{p}output.LayerNorm.bias": (E,)})
    return s


def params_from_hf(state_dict: Mapping[str, Any], config: BertConfig,
                   directory: str = "") -> Dict[str, Any]:
    """Converts an HF BERT state dict to ``BertEncoder`` params.

    Args:
      state_dict: ``{name: array}`` (numpy or anything ``np.asarray`` takes), names with or
        without a prefix such as ``"bert."``; ``embeddings.position_ids`` and ``pooler.*``
        are ignored.
      config: the model config the params must fit.
      directory: where the weights came from, for error messages.

    Returns:
      The params tree (the value under ``"params"``; apply with
      ``BertEncoder(config).apply({"params": params}, ...)``), in ``config.param_dtype``.

    Raises:
      CheckpointError: a parameter is missing or has the wrong shape (both shapes named).
    """
    pre = _prefix(state_dict, directory)
    shapes = _hf_shapes(config)
    dt = np.dtype(config.param_dtype)

    def get(name: str) -> np.ndarray:
        return take(state_dict, pre + name, shapes[name], directory).astype(dt)

    H, D, E = config.num_heads, config.head_dim, config.hidden_size
    ln = lambda p: {"scale": get(p + ".weight"), "bias": get(p + ".bias")}  # noqa: E731
    params: Dict[str, Any] = {"embeddings": {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "LayerNorm": ln("embeddings.LayerNorm")}}
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."
        att = {n: {"kernel": get(f"{p}attention.self.{n}.weight").T.reshape(E, H, D),
                   "bias": get(f"{p}attention.self.{n}.bias").reshape(H, D)}
               for n in ("query", "key", "value")}
        att["out"] = {"kernel": get(f"{p}attention.output.dense.weight").T.reshape(H, D, E),
                      "bias": get(f"{p}attention.output.dense.bias")}
        params[f"layer_{i}"] = {
            "attention": att,
            "attention_norm": ln(f"{p}attention.output.LayerNorm"),
            "intermediate": {"kernel": get(f"{p}intermediate.dense.weight").T,
                             "bias": get(f"{p}intermediate.dense.bias")},
            "output": {"kernel": get(f"{p}output.dense.weight").T,
                       "bias": get(f"{p}output.dense.bias")},
            "output_norm": ln(f"{p}output.LayerNorm")}
    used = {pre + n for n in shapes}
    unused = [k for k in state_dict if k not in used
              and not any(k[len(pre):].startswith(ig) for ig in _IGNORED)]
    if unused:
        log.warning("%s: %d checkpoint tensors not used by BertEncoder, e.g. %s",
                    directory or "state dict", len(unused), sorted(unused)[:5])
    return params


def params_to_hf(params: Mapping[str, Any], config: BertConfig) -> StateDict:
    """Converts ``BertEncoder`` params to an HF ``BertModel`` state dict (no pooler).

    Args:
      params: the params tree, or the variables ``{"params": ...}``; boxed
        (``nn.Partitioned``) or plain leaves.
      config: the model config.

    Returns:
      ``{hf_name: float32 numpy array}`` in torch layout (Linear weight ``[out, in]``).
    """
    params = nn.unbox(params)
    if "params" in params:
        params = params["params"]
    f = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    E = config.hidden_size
    emb = params["embeddings"]
    sd: StateDict = {
        "embeddings.word_embeddings.weight": f(emb["word_embeddings"]["embedding"]),
        "embeddings.position_embeddings.weight": f(emb["position_embeddings"]["embedding"]),
        "embeddings.token_type_embeddings.weight": f(emb["token_type_embeddings"]["embedding"]),
        "embeddings.LayerNorm.weight": f(emb["LayerNorm"]["scale"]),
        "embeddings.LayerNorm.bias": f(emb["LayerNorm"]["bias"])}
    for i in range(config.num_layers):
        lp, p = params[f"layer_{i}"], f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            sd[f"{p}attention.self.{n}.weight"] = f(lp["attention"][n]["kernel"]).reshape(E, E).T
            sd[f"{p}attention.self.{n}.bias"] = f(lp["attention"][n]["bias"]).reshape(E)
        sd[f"{p}attention.output.dense.weight"] = f(lp["attention"]["out"]["kernel"]).reshape(E, E).T
        sd[f"{p}attention.output.dense.bias"] = f(lp["attention"]["out"]["bias"])
        sd[f"{p}attention.output.LayerNorm.weight"] = f(lp["attention_norm"]["scale"])
        sd[f"{p}attention.output.LayerNorm.bias"] = f(lp["attention_norm"]["bias"])
        sd[f"{p}intermediate.dense.weight"] = f(lp["intermediate"]["kernel"]).T
        sd[f"{p}intermediate.dense.bias"] = f(lp["intermediate"]["bias"])
        sd[f"{p}output.dense.weight"] = f(lp["output"]["kernel"]).T
        sd[f"{p}output.dense.bias"] = f(lp["output"]["bias"])
        sd[f"{p}output.LayerNorm.weight"] = f(lp["output_norm"]["scale"])
        sd[f"{p}output.LayerNorm.bias"] = f(lp["output_norm"]["bias"])
    shapes = _hf_shapes(config)
    for k, v in sd.items():
        if v.shape != shapes[k]:
            raise CheckpointError(f"parameter {k!r} has shape {v.shape}, config expects {shapes[k]}")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def load_bert(directory: str, **config_overrides: Any) -> Tuple[BertConfig, Dict[str, Any]]:
    """Loads an HF BERT checkpoint directory.

    Args:
      directory: holds ``config.json`` (``model_type`` "bert") and ``model.safetensors``
        (or ``pytorch_model.bin``).
      **config_overrides: ``BertConfig`` fields to override, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      ``(config, params)``; apply with ``BertEncoder(config).apply({"params": params}, ...)``.

    Raises:
      CheckpointError: missing config/weights, not a BERT, or a shape mismatch.
    """
    directory = str(directory)
    hf = read_config(directory)
    check_architecture(hf, ("bert",), directory)
    try:
        config = BertConfig.from_hf_dict(hf, **config_overrides)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None
    params = params_from_hf(read_state_dict(directory), config, directory)
    return config, params


def export_bert(params: Mapping[str, Any], config: BertConfig, directory: str) -> None:
    """Writes ``model.safetensors`` + ``config.json`` loadable by ``transformers.BertModel``.

    No pooler is written (see the module docstring).

    Args:
      params: params tree or ``{"params": ...}`` variables (boxed or plain).
      config: the model config.
      directory: output directory (created if needed).
    """
    write_hf_dir(str(directory), params_to_hf(params, config), config.to_hf_dict())
