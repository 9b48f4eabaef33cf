"""Flax T5 / ST5-EncDec vs the PyTorch ``transformers`` T5 (test-only oracle), HF IO, errors."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multiret_jax.models.checkpoints import CheckpointError
from multiret_jax.models.t5 import (ST5EncDec, T5Config, T5EncoderModule, relative_position_bucket,
                                    t5_base, t5_tiny)
from multiret_jax.models.t5_hf import export_t5, load_t5, params_from_hf, params_to_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=300, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
             num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=20)
VARIANTS = {"v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
            "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}
LENGTHS = (60, 37, 5)  # 60 tokens reach every bucket of max_distance 20


def _batch(lengths: Tuple[int, ...] = LENGTHS, vocab: int = 300, pad_to: int = 64,
           seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), pad_to), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(2, vocab, n)
        ids[i, n - 1] = 1  # </s>
        mask[i, :n] = 1
    return ids, mask


def _hf_model(kind: str, cls: Any = None, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.T5Config(**SMALL, **VARIANTS[kind], dropout_rate=0.1)
    model = (cls or transformers.T5Model)(cfg).eval()
    with torch.no_grad():  # non-trivial norms and a strong position bias
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    return model


def _torch_outputs(model: Any, ids: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    decoder_input_ids=torch.zeros((ids.shape[0], 1), dtype=torch.long))
    return out.encoder_last_hidden_state.numpy(), out.last_hidden_state[:, 0].numpy()


def _ours(config: T5Config, params: Dict[str, Any], ids: np.ndarray, mask: np.ndarray,
          pooling: str = "encdec") -> np.ndarray:
    return np.asarray(_embed_fn(config, pooling)(params, ids, mask), np.float32)


@functools.lru_cache(maxsize=None)
def _embed_fn(config: T5Config, pooling: str) -> Any:
    """One jitted embedder per (config, pooling), so tests share compilations."""
    return jax.jit(lambda p, i, m: ST5EncDec(config).apply(p, i, m, pooling=pooling))


def _random_params(config: T5Config, seed: int = 0) -> Dict[str, Any]:
    """Random float32 params of ST5EncDec's shapes (numpy: no init compilation)."""
    ids = jnp.ones((1, 4), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: ST5EncDec(config).init(jax.random.PRNGKey(0), ids, ids)))
    rng = np.random.default_rng(seed)

    def fill(path: Any, x: Any) -> np.ndarray:
        if jax.tree_util.keystr(path).endswith("['scale']"):  # layer norms around 1
            return (1.0 + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
        return (rng.standard_normal(x.shape) * (0.5 if len(x.shape) == 2 else 0.2)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _encoder(config: T5Config, params: Dict[str, Any], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(T5EncoderModule(config).apply)(params, ids, mask))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_dir(request, tmp_path_factory) -> Tuple[str, Path, Any]:
    model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(f"t5_{request.param}")
    model.save_pretrained(path, safe_serialization=True)
    return request.param, path, model


def test_relative_position_bucket_matches_hf():
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    rel = np.arange(-700, 700)
    for nb, md in ((32, 128), (16, 20), (8, 16), (32, 64)):
        for bidi in (True, False):
            want = bucket(torch.tensor(rel), bidirectional=bidi, num_buckets=nb, max_distance=md).numpy()
            np.testing.assert_array_equal(relative_position_bucket(rel, bidi, nb, md), want)


def test_parity_with_transformers(hf_dir):
    kind, path, model = hf_dir
    config, params = load_t5(str(path), dropout_rate=0.0)
    assert config.is_gated == (kind == "v1_1") and config.tie_word_embeddings == (kind == "v1_0")
    ids, mask = _batch()
    enc_t, dec_t = _torch_outputs(model, ids, mask)
    enc = np.asarray(jax.jit(lambda p, i, m: ST5EncDec(config).apply(p, i, m, method=ST5EncDec.encode))(
        params, ids, mask))
    enc_err = max(np.abs(enc[b, :n] - enc_t[b, :n]).max() for b, n in enumerate(LENGTHS))
    dec_err = np.abs(_ours(config, params, ids, mask) - dec_t).max()
    print(f"{kind}: encoder max abs err {enc_err:.2e}, ST5-EncDec max abs err {dec_err:.2e}")
    assert enc_err < 1e-4 and dec_err < 1e-4
    # the encoder-only module on the same params, and ST5-Enc mean pooling
    np.testing.assert_allclose(_encoder(config, params, ids, mask), enc, atol=1e-6)
    m = mask[..., None]
    np.testing.assert_allclose(_ours(config, params, ids, mask, "mean"),
                               (enc_t * m).sum(1) / m.sum(1), atol=1e-4)


def test_export_round_trip(tmp_path):
    config = T5Config(**SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    ids, mask = _batch()
    params = _random_params(config)
    export_t5(params, config, str(tmp_path))
    hf = transformers.T5Model.from_pretrained(str(tmp_path)).eval()
    enc_t, dec_t = _torch_outputs(hf, ids, mask)
    np.testing.assert_allclose(_ours(config, params, ids, mask), dec_t, atol=1e-4)
    config2, params2 = load_t5(str(tmp_path))
    assert config2 == config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert T5Config.from_hf_dict(config.to_hf_dict()) == config


def test_real_t5_tokenizer_feeds_tiny_t5(t5_tokenizer_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(t5_tokenizer_dir) / "tokenizer.json"))
    assert tok.get_vocab_size() == 32100
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="<pad>")  # pad to the longest in the batch
    texts = ["What is dense passage retrieval?", "T5 embeds text."]
    enc = tok.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], np.int32)
    n1 = int(mask[1].sum())
    assert ids[0, int(mask[0].sum()) - 1] == 1 and ids[1, n1 - 1] == 1  # ends with </s>
    assert n1 < ids.shape[1] and (ids[1, n1:] == 0).all()  # padded with id 0
    config = t5_tiny()
    assert config.vocab_size == 32128 and ids.max() < config.vocab_size
    params = _random_params(config, seed=1)
    emb = _ours(config, params, ids, mask)
    assert emb.shape == (2, config.d_model) and np.isfinite(emb).all()
    alone = _ours(config, params, ids[1:, :n1], mask[1:, :n1])  # padding changes nothing
    np.testing.assert_allclose(emb[1:], alone, atol=1e-5)


def test_wrong_model_type(hf_dir, tmp_path):
    _, path, _ = hf_dir
    shutil.copytree(path, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_t5(str(tmp_path / "m"))


def test_shape_mismatch_names_parameter_and_shapes(hf_dir):
    kind, path, _ = hf_dir
    wi = "wi_0" if kind == "v1_1" else "wi"
    with pytest.raises(CheckpointError) as e:
        load_t5(str(path), d_ff=100)
    msg = str(e.value)
    assert f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight" in msg
    assert "(128, 64)" in msg and "(100, 64)" in msg


def test_encoder_only_checkpoint(tmp_path):
    model = _hf_model("v1_0", cls=transformers.T5EncoderModel)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="encoder-only.*pooling='mean'"):
        load_t5(str(tmp_path))
    config, params = load_t5(str(tmp_path), pooling="mean")
    assert "decoder" not in params["params"]
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    m = mask[..., None]
    np.testing.assert_allclose(_ours(config, params, ids, mask, "mean"), (want * m).sum(1) / m.sum(1),
                               atol=1e-4)
    with pytest.raises(ValueError, match="needs the T5 decoder"):
        ST5EncDec(config).apply(params, ids, mask, pooling="encdec")
    assert sorted(params_to_hf(params, config)) == sorted(
        k for k in model.state_dict() if k != "encoder.embed_tokens.weight")


def test_bf16_compute_close_to_fp32(hf_dir):
    _, path, _ = hf_dir
    config, params = load_t5(str(path), dropout_rate=0.0)
    config16, params16 = load_t5(str(path), dtype="bfloat16", dropout_rate=0.0)
    assert config16.dtype == "bfloat16" and config16.param_dtype == "float32"
    ids, mask = _batch()
    ref = _ours(config, params, ids, mask)
    got = _ours(config16, params16, ids, mask)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 1e-2
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.999


def test_params_logically_partitioned_and_presets():
    config = t5_tiny(feed_forward_proj="gated-gelu")
    ids = jnp.ones((1, 4), jnp.int32)
    variables = jax.eval_shape(lambda: ST5EncDec(config).init(jax.random.PRNGKey(0), ids, ids))
    leaves = jax.tree_util.tree_leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    allowed = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", None}
    assert all(len(x.names) == x.value.ndim and set(x.names) <= allowed for x in leaves)
    base = t5_base()
    assert (base.d_model, base.num_layers, base.num_heads, base.d_ff) == (768, 12, 12, 3072)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-foo")
    # dropout is active only when not deterministic
    cfg = t5_tiny(dropout_rate=0.5, vocab_size=300, num_layers=1, num_decoder_layers=1)
    variables = jax.jit(ST5EncDec(cfg).init)(jax.random.PRNGKey(0), ids, ids)  # a real (boxed) init
    params = nn.meta.unbox(variables)
    a = jax.jit(lambda v, i: ST5EncDec(cfg).apply(v, i, i, deterministic=False, rngs={
        "dropout": jax.random.PRNGKey(1)}))(variables, ids)
    b = ST5EncDec(cfg).apply(params, ids, ids)
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(np.asarray(a), np.asarray(b))
    # the HF round trip of the param tree is exact
    p2 = params_from_hf(params_to_hf(params, cfg), cfg)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(p2)
    for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(np.asarray(x), y)


