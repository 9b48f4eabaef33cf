"""Flax linen T5 and the ST5-EncDec / ST5-Enc text embedders used by TACO.

ST5-EncDec (TACO, Zhang et al. 2023): the T5 encoder over the text, then ONE decoder step
from the start token (id 0) cross-attending to it; the embedding is the decoder's final
layer-norm output (no LM head, no ``d_model**-0.5`` rescale). ST5-Enc: masked mean of the
encoder outputs. As ``transformers``: RMS norm, no attention biases or 1/sqrt(d) scaling,
bucketed relative position bias owned by layer 0 and shared by its stack, pre-norm, FFN
relu (v1.0) or gated tanh-GELU (v1.1). t5x parameter names, with logical axis names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from multiret_jax.models.pooling import mean_pool
from multiret_jax.partitioning import with_logical_partitioning

Array = jax.Array
ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {  # HF names; gelu_new is the tanh approximation
    "relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False), "silu": nn.silu,
    "gelu_new": lambda x: nn.gelu(x, approximate=True)}
POOLINGS = ("encdec", "mean")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5 hyper-parameters (names as in HF ``config.json``) plus our compute settings.

    ``dtype`` is the compute dtype ("float32" or "bfloat16"); parameters stay in
    ``param_dtype`` (float32). ``tie_word_embeddings`` only records whether the original
    LM head was tied (v1.0) or not (v1.1); ST5 never uses the LM head.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None  # None: num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1
    dropout_rate: float = 0.1
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.activation  # noqa: B018 (validates feed_forward_proj)
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        for f in ("dtype", "param_dtype"):  # accept jnp.bfloat16 etc., store the name
            object.__setattr__(self, f, jnp.dtype(getattr(self, f)).name)

    @property
    def is_gated(self) -> bool:
        """Whether the FFN is gated (``wi_0``/``wi_1``, T5 v1.1)."""
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """Name of the FFN activation (HF's ``dense_act_fn``)."""
        parts = self.feed_forward_proj.split("-")
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in ACTIVATIONS:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} not supported "
                             f"(use 'relu', 'gated-gelu' or [gated-]{{{','.join(ACTIVATIONS)}}})")
        return act

    @classmethod
    def from_hf_dict(cls, d: Dict[str, Any], **overrides: Any) -> "T5Config":
        """Config from an HF T5 ``config.json`` dict.

        Args:
          d: the parsed ``config.json``.
          **overrides: fields to replace (e.g. ``dtype="bfloat16"``, ``dropout_rate=0.0``).
        Returns:
          The config. transformers>=5 always writes ``tie_word_embeddings: true`` and keeps
          the real value in ``scale_decoder_outputs``, which is preferred when present.
        """
        kw: Dict[str, Any] = {f.name: d[f.name] for f in dataclasses.fields(cls)
                              if d.get(f.name) is not None and not isinstance(d[f.name], list)
                              and f.name not in ("dtype", "param_dtype")}
        kw["tie_word_embeddings"] = bool(d.get("scale_decoder_outputs", d.get("tie_word_embeddings", True)))
        return cls(**{**kw, **overrides})

    def to_hf_dict(self, architecture: str = "T5Model") -> Dict[str, Any]:
        """HF ``config.json`` dict (loadable by ``transformers.T5Config``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("dtype", "param_dtype")}
        d.update(model_type="t5", architectures=[architecture], is_encoder_decoder=True,
                 dense_act_fn=self.activation, is_gated_act=self.is_gated,
                 scale_decoder_outputs=self.tie_word_embeddings)
        return d


def t5_base(**overrides: Any) -> T5Config:
    """t5-base (v1.0) dimensions, the size used in the TACO paper."""
    return T5Config(**{**dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12), **overrides})


def t5_tiny(**overrides: Any) -> T5Config:
    """A tiny T5 for CPU tests (vocab 32,128 so real T5 token ids fit)."""
    return T5Config(**{**dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                              relative_attention_num_buckets=8, relative_attention_max_distance=16,
                              dropout_rate=0.0), **overrides})


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bucket of ``key_position - query_position`` (as HF/Mesh-TF, float32 logs).

    Args:
      relative_position: integer array; bidirectional: encoder (True) or causal decoder;
      num_buckets: table size; max_distance: distances beyond it share the last bucket.
    Returns:
      int32 array of buckets in ``[0, num_buckets)``, same shape as the input.
    """
    rp = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).astype(np.int64) * num_buckets
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(rp.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact))
                  * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(rp < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(rp < max_exact, rp, large)).astype(np.int32)


def _init(scale: float, names: Tuple[Optional[str], ...]) -> Callable:
    """Fan-in normal initialiser (std = sqrt(scale / fan_in)) with logical axis names."""
    return with_logical_partitioning(
        nn.initializers.variance_scaling(scale, "fan_in", "normal"), names)


class RMSNorm(nn.Module):
    """T5 layer norm: ``x / rms(x) * scale`` (no mean, no bias; statistics in float32)."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = self.param("scale", with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.dtype(cfg.param_dtype))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.layer_norm_epsilon)
        return (scale.astype(jnp.float32) * y).astype(cfg.dtype)


class RelativePositionBias(nn.Module):
    """Bucketed relative position bias ``[1, heads, q_len, k_len]`` (float32)."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Array:
        cfg = self.config
        table = self.param("rel_embedding", _init(1.0, ("relpos_buckets", "heads")),
                           (cfg.relative_attention_num_buckets, cfg.num_heads),
                           jnp.dtype(cfg.param_dtype))
        buckets = relative_position_bucket(np.arange(k_len)[None, :] - np.arange(q_len)[:, None],
                                           self.bidirectional, cfg.relative_attention_num_buckets,
                                           cfg.relative_attention_max_distance)
        bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [q, k, H]
        return jnp.transpose(bias, (2, 0, 1))[None]


class MultiHeadAttention(nn.Module):
    """T5 attention: no biases, no 1/sqrt(d_kv) scaling; softmax in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, kv: Array, mask: Array, bias: Optional[Array],
                 deterministic: bool) -> Array:
        cfg = self.config
        pdt = jnp.dtype(cfg.param_dtype)
        proj = lambda name, scale: nn.DenseGeneral(  # noqa: E731
            (cfg.num_heads, cfg.d_kv), axis=-1, use_bias=False, dtype=cfg.dtype, param_dtype=pdt,
            kernel_init=_init(scale, ("embed", "heads", "kv")), name=name)
        q, k, v = proj("query", 1.0 / cfg.d_kv)(x), proj("key", 1.0)(kv), proj("value", 1.0)(kv)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores if bias is None else scores + bias, axis=-1)
        probs = nn.Dropout(cfg.dropout_rate)(probs, deterministic=deterministic).astype(cfg.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.dtype,
                               param_dtype=pdt, kernel_init=_init(1.0, ("heads", "kv", "embed")),
                               name="out")(out)


class MlpBlock(nn.Module):
    """T5 FFN: ``wo(act(wi x))`` or gated ``wo(act(wi_0 x) * wi_1 x)``."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        dense = lambda feats, names, name: nn.DenseGeneral(  # noqa: E731
            feats, use_bias=False, dtype=cfg.dtype, param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_init(1.0, names), name=name)
        act = ACTIVATIONS[cfg.activation]
        if cfg.is_gated:
            h = act(dense(cfg.d_ff, ("embed", "mlp"), "wi_0")(x))
            h = h * dense(cfg.d_ff, ("embed", "mlp"), "wi_1")(x)
        else:
            h = act(dense(cfg.d_ff, ("embed", "mlp"), "wi")(x))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense(cfg.d_model, ("mlp", "embed"), "wo")(h)


class T5Block(nn.Module):
    """One pre-norm T5 layer; layer 0 owns the stack's relative position bias table."""

    config: T5Config
    decoder: bool
    has_relpos: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Optional[Array], enc: Optional[Array],
                 enc_mask: Optional[Array], deterministic: bool) -> Tuple[Array, Array]:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        if self.has_relpos:
            bias = RelativePositionBias(cfg, bidirectional=not self.decoder, name="relpos_bias")(
                x.shape[1], x.shape[1])
        h = RMSNorm(cfg, name=f"pre_{'self_' if self.decoder else ''}attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="self_attention" if self.decoder else "attention")(
            h, h, mask, bias, deterministic)
        x = x + drop(h, deterministic=deterministic)
        if self.decoder:
            h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
            h = MultiHeadAttention(cfg, name="encoder_decoder_attention")(
                h, enc, enc_mask, None, deterministic)
            x = x + drop(h, deterministic=deterministic)
        h = MlpBlock(cfg, name="mlp")(RMSNorm(cfg, name="pre_mlp_layer_norm")(x), deterministic)
        x = x + drop(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), bias


class T5Stack(nn.Module):
    """Encoder or decoder stack over already-embedded inputs, with final layer norm."""

    config: T5Config
    decoder: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array, enc: Optional[Array] = None,
                 enc_mask: Optional[Array] = None, deterministic: bool = True) -> Array:
        cfg = self.config
        n = cfg.num_decoder_layers if self.decoder else cfg.num_layers
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        bias = None
        for i in range(n):
            x, bias = T5Block(cfg, self.decoder, has_relpos=(i == 0), name=f"layers_{i}")(
                x, mask, bias, enc, enc_mask, deterministic)
        x = RMSNorm(cfg, name="decoder_norm" if self.decoder else "encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _embedder(cfg: T5Config) -> nn.Embed:
    init = with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
    return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.dtype(cfg.param_dtype),
                    embedding_init=init, name="token_embedder")


class T5EncoderModule(nn.Module):
    """T5 encoder: ``(input_ids [B,L], attention_mask [B,L]) -> hidden [B,L,D]``."""

    config: T5Config

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        return T5Stack(self.config, decoder=False, name="encoder")(
            _embedder(self.config)(input_ids), attention_mask.astype(bool)[:, None, None, :],
            deterministic=deterministic)


class ST5EncDec(nn.Module):
    """Sentence-T5 embedder: ``pooling="encdec"`` (one decoder step) or ``"mean"`` (ST5-Enc).

    Its parameters are those of :class:`T5EncoderModule` plus ``decoder``; initialise with
    the default ``pooling="encdec"`` to create all of them. Use ``method=ST5EncDec.encode``
    / ``ST5EncDec.decode`` in ``apply`` to get the encoder / decoder hidden states.
    """

    config: T5Config

    def setup(self) -> None:
        self.token_embedder = _embedder(self.config)
        self.encoder = T5Stack(self.config, decoder=False)
        self.decoder = T5Stack(self.config, decoder=True)

    def encode(self, input_ids: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        """Encoder hidden states ``[B, L, D]`` (after the final layer norm)."""
        mask = attention_mask.astype(bool)[:, None, None, :]
        return self.encoder(self.token_embedder(input_ids), mask, deterministic=deterministic)

    def decode(self, encoded: Array, attention_mask: Array, decoder_input_ids: Optional[Array] = None,
               deterministic: bool = True) -> Array:
        """Decoder hidden states ``[B, T, D]`` (causal; default: one start-token step).

        Args:
          encoded: encoder states ``[B, L, D]``; attention_mask: their mask ``[B, L]``;
          decoder_input_ids: ``[B, T]``, default ``[[decoder_start_token_id]] * B``.
        Returns:
          The decoder's final-layer-norm outputs, before any LM head or rescaling.
        """
        if not self.is_initializing() and not self.has_variable("params", "decoder"):
            raise ValueError("ST5EncDec pooling 'encdec' needs the T5 decoder, but the parameters "
                             "have no 'decoder' (an encoder-only checkpoint?); use pooling='mean'")
        if decoder_input_ids is None:
            decoder_input_ids = jnp.full((encoded.shape[0], 1), self.config.decoder_start_token_id)
        t = decoder_input_ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        return self.decoder(self.token_embedder(decoder_input_ids), causal, encoded,
                            attention_mask.astype(bool)[:, None, None, :], deterministic=deterministic)

    def __call__(self, input_ids: Array, attention_mask: Array, deterministic: bool = True,
                 pooling: str = "encdec") -> Array:
        """Text embeddings ``[B, D]`` in the compute dtype.

        Args:
          input_ids: token ids ``[B, L]`` (pad id 0); attention_mask: ``[B, L]``, 1 = token.
          deterministic: no dropout when True (else needs a "dropout" rng).
          pooling: "encdec" (ST5-EncDec, one decoder step) or "mean" (ST5-Enc).
        Returns:
          One embedding per text.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        encoded = self.encode(input_ids, attention_mask, deterministic)
        if pooling == "mean":
            return mean_pool(encoded, attention_mask)
        return self.decode(encoded, attention_mask, deterministic=deterministic)[:, 0]
