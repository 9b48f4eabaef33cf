"""Encoder registry: BERT ([CLS] or mean pooling) and T5 (ST5-EncDec or ST5-Enc), chosen
by name (gin: ``build_biencoder.encoder = "t5"``), plus ``build_biencoder``.

Each entry knows how to build the embedding module ``(input_ids, attention_mask,
deterministic) -> [B, D]`` for a config, how to load a checkpoint directory (HF; T5 also
T5X) into that module's parameters and how to export them back, and its named config
presets. ``build_biencoder.checkpoint_format`` picks the reader ("auto": by the files).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax

from multiret_jax.models import bert, bert_hf, t5, t5_hf, t5x_checkpoint
from multiret_jax.models.biencoder import BiEncoder
from multiret_jax.models.checkpoints import CheckpointError
from multiret_jax.models.pooling import get_pooler


class PooledBert(nn.Module):
    """BERT followed by [CLS] (DPR, MT-DPR) or masked-mean pooling."""

    config: bert.BertConfig
    pooling: str = "cls"

    @nn.compact
    def __call__(self, input_ids, attention_mask, deterministic: bool = True):
        hidden = bert.BertEncoder(self.config, name="bert")(input_ids, attention_mask,
                                                            deterministic=deterministic)
        return get_pooler(self.pooling)(hidden, attention_mask)


class PooledT5(nn.Module):
    """T5 as ST5-EncDec (``pooling="encdec"``, TACO) or ST5-Enc (``"mean"``)."""

    config: t5.T5Config
    pooling: str = "encdec"

    @nn.compact
    def __call__(self, input_ids, attention_mask, deterministic: bool = True):
        return t5.ST5EncDec(self.config, name="t5")(input_ids, attention_mask, deterministic,
                                                    pooling=self.pooling)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How to build, load and export one encoder family.

    Attributes:
      module: (config, pooling) -> embedding module.
      load: (directory, pooling, **config overrides) -> (config, module params), for HF
        checkpoint directories.
      export: (module params, config, directory) -> None (HF safetensors + config.json).
      presets: config preset name -> function returning a config.
      default_pooling: pooling used when none is given.
      load_t5x: as ``load``, for T5X checkpoints (None: the family has none).
    """

    module: Callable[[Any, str], nn.Module]
    load: Callable[..., Tuple[Any, Any]]
    export: Callable[[Any, Any, str], None]
    presets: Dict[str, Callable[..., Any]]
    default_pooling: str
    load_t5x: Optional[Callable[..., Tuple[Any, Any]]] = None


def _load_bert(directory, pooling, **overrides):
    del pooling
    config, params = bert_hf.load_bert(directory, **overrides)
    return config, {"bert": params}


def _load_t5(directory, pooling, **overrides):
    config, params = t5_hf.load_t5(directory, pooling=pooling, **overrides)
    return config, {"t5": params["params"]}  # PooledT5's submodule "t5", unwrapped


def _load_t5x(directory, pooling, **overrides):
    config, params = t5x_checkpoint.load_t5x_checkpoint(directory, pooling=pooling, **overrides)
    return config, {"t5": params["params"]}


ENCODERS: Dict[str, EncoderSpec] = {
    "bert": EncoderSpec(
        module=lambda c, p: PooledBert(c, p), load=_load_bert,
        export=lambda params, c, d: bert_hf.export_bert(params["bert"], c, d),
        presets={"bert_base": bert.bert_base, "bert_tiny": bert.bert_tiny,
                 "minilm_l6": bert.minilm_l6},
        default_pooling="cls"),
    "t5": EncoderSpec(
        module=lambda c, p: PooledT5(c, p), load=_load_t5,
        export=lambda params, c, d: t5_hf.export_t5(params["t5"], c, d),
        presets={"t5_base": t5.t5_base, "t5_tiny": t5.t5_tiny},
        default_pooling="encdec", load_t5x=_load_t5x),
}
CHECKPOINT_FORMATS = ("auto", "hf", "t5x")


def get_encoder(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None


def checkpoint_format_of(directory: str) -> str:
    """"hf" (``config.json``) or "t5x" (see :func:`.t5x_checkpoint.find_t5x_step`).

    Raises:
      CheckpointError: naming ``directory``, when it is neither.
    """
    if os.path.isfile(os.path.join(directory, "config.json")):
        return "hf"
    if t5x_checkpoint.find_t5x_step(directory):
        return "t5x"
    what = "does not exist" if not os.path.exists(directory) else "is neither format"
    raise CheckpointError(
        f"{directory}: not a checkpoint directory ({what}): an HF checkpoint holds config.json "
        "(+ model.safetensors); a T5X one a 'checkpoint' msgpack index or an orbax _METADATA "
        "(in it, in its state/, or in its latest checkpoint_<step>/)")


def load_checkpoint(spec: EncoderSpec, directory: str, checkpoint_format: str, pooling: str,
                    **overrides: Any) -> Tuple[Any, Any]:
    """``(config, module params)`` of a checkpoint directory in the given or detected format."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format {checkpoint_format!r} is not one of {CHECKPOINT_FORMATS}")
    fmt = checkpoint_format_of(directory) if checkpoint_format == "auto" else checkpoint_format
    load = spec.load if fmt == "hf" else spec.load_t5x
    if load is None:
        families = sorted(n for n, s in ENCODERS.items() if s.load_t5x)
        raise CheckpointError(f"{directory}: a {fmt} checkpoint; only {families} encoders load "
                              "that format")
    return load(directory, pooling, **overrides)


@gin.configurable
def build_biencoder(encoder: str = "bert", config: Optional[str] = None,
                    checkpoint_dir: Optional[str] = None, checkpoint_format: str = "auto",
                    pooling: Optional[str] = None,
                    shared: bool = False, query_towers: Optional[Sequence[str]] = None,
                    tower_by: str = "task", normalize: bool = False, dtype: str = "float32",
                    seed: int = 0,
                    config_overrides: Optional[Dict[str, Any]] = None,
                    ) -> Tuple[BiEncoder, Dict[str, Any], Any]:
    """A bi-encoder and its parameters, from a checkpoint or a named preset.

    Args:
      encoder: registry name ("bert", "t5").
      config: preset name (e.g. "bert_base", "t5_tiny"); ignored with ``checkpoint_dir``.
      checkpoint_dir: checkpoint directory to initialise every tower from.
      checkpoint_format: "hf" (``config.json`` + safetensors), "t5x" (a T5X step or model
        directory, legacy msgpack + TensorStore or orbax; T5 only; the config is inferred
        from the shapes, ``relative_attention_max_distance`` 128 unless
        ``config_overrides`` names it) or "auto" (by the files present).
      pooling: "cls"/"mean" (BERT) or "encdec"/"mean" (T5); default per encoder.
      shared: one tower for queries and passages (TACO) or separate (MT-DPR).
      query_towers: task names (or task types with ``tower_by="type"``) for task-specific
        query encoders.
      tower_by: "task" or "type".
      normalize: L2-normalise embeddings (cosine similarity).
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
      seed: PRNG seed for random initialisation.
      config_overrides: extra config fields (e.g. ``{"dropout_rate": 0.0}``).
    Returns:
      (BiEncoder, params, config).
    """
    spec = get_encoder(encoder)
    pooling = pooling or spec.default_pooling
    overrides = dict(config_overrides or {}, dtype=dtype)
    if checkpoint_dir:
        cfg, enc_params = load_checkpoint(spec, checkpoint_dir, checkpoint_format, pooling,
                                          **overrides)
        model = BiEncoder(spec.module(cfg, pooling), shared=shared, query_towers=query_towers,
                          tower_by=tower_by, normalize=normalize, source_dir=checkpoint_dir)
        return model, model.layout(enc_params), cfg
    if config not in spec.presets:
        raise KeyError(f"unknown {encoder} config {config!r}; presets: {sorted(spec.presets)} "
                       "(or give checkpoint_dir)")
    cfg = spec.presets[config](**overrides)
    model = BiEncoder(spec.module(cfg, pooling), shared=shared, query_towers=query_towers,
                      tower_by=tower_by, normalize=normalize)
    return model, model.init(jax.random.PRNGKey(seed)), cfg
