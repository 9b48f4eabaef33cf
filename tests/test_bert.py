"""Flax BertEncoder: parity with transformers.BertModel (PyTorch) on real MiniLM weights,
HF export round trips, checkpoint errors, bf16 compute, logical axis annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from multiret_jax.models.bert import (BertConfig, BertEncoder, bert_base, bert_tiny,
                                      init_bert, logical_partition_spec, minilm_l6)
from multiret_jax.models.bert_hf import (export_bert, load_bert, params_from_hf,
                                         params_to_hf)
from multiret_jax.models.checkpoints import CheckpointError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4

SENTENCES = [
    "Who wrote the novel Nineteen Eighty-Four?",
    "a",
    "Meet Corliss Archer, a program from radio's Golden Age, ran from January 7, 1943 to "
    "September 30, 1956. Although it was CBS's answer to NBC's popular \"A Date with Judy\", "
    "it was also broadcast by NBC in 1948 as a summer replacement for \"The Bob Hope Show\".",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "fact check: the moon is made of cheese",
]


def _batch(directory: Path, texts=SENTENCES):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int32)
    mask = np.array([e.attention_mask for e in enc], np.int32)
    types = np.array([e.type_ids for e in enc], np.int32)
    return ids, mask, types


def _torch_hidden(model, ids, mask, types) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    token_type_ids=torch.tensor(types, dtype=torch.long))
    return out.last_hidden_state.float().numpy()


def _ours(config: BertConfig, params, ids, mask, types) -> np.ndarray:
    fn = jax.jit(lambda p, i, m, t: BertEncoder(config).apply({"params": p}, i, m, t))
    return np.asarray(fn(params, ids, mask, types).astype(jnp.float32))


def _mean(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (h * m).sum(1) / m.sum(1)


def _masked_max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) * mask[..., None]))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config, params = load_bert(minilm_dir)
    batch = _batch(minilm_dir)
    ours = _ours(config, params, *batch)
    return config, params, batch, ours


@pytest.fixture(scope="module")
def torch_minilm(minilm_dir):
    model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    return model


def test_minilm_config(minilm):
    config = minilm[0]
    assert (config.hidden_size, config.num_layers, config.num_heads, config.vocab_size) == (
        384, 6, 12, 30522)
    assert config == minilm_l6()


def test_minilm_parity_with_transformers(minilm, torch_minilm):
    config, params, (ids, mask, types), ours = minilm
    assert mask.sum(1).min() < ids.shape[1]  # the batch has padding
    ref = _torch_hidden(torch_minilm, ids, mask, types)
    assert ours.shape == ref.shape == (len(SENTENCES), ids.shape[1], 384)
    assert _masked_max_diff(ours, ref, mask) < TOL
    assert np.max(np.abs(ours[:, 0] - ref[:, 0])) < TOL  # [CLS]
    assert np.max(np.abs(_mean(ours, mask) - _mean(ref, mask))) < TOL
    from multiret_jax.models.pooling import cls_pool, mean_pool
    assert np.max(np.abs(np.asarray(mean_pool(jnp.asarray(ours), mask)) - _mean(ref, mask))) < TOL
    assert np.max(np.abs(np.asarray(cls_pool(jnp.asarray(ours), mask)) - ref[:, 0])) < TOL


def test_padding_does_not_change_states(minilm):
    config, params, (ids, mask, types), ours = minilm
    n = int(mask[0].sum())
    alone = _ours(config, params, ids[:1, :n], mask[:1, :n], types[:1, :n])
    assert np.max(np.abs(alone[0] - ours[0, :n])) < TOL


def test_all_padding_row_is_finite(minilm):
    config, params, (ids, mask, types), ours = minilm
    mask = mask.copy()
    mask[1] = 0  # e.g. a filler row of a partial batch
    out = _ours(config, params, ids, mask, types)
    assert np.isfinite(out).all()
    keep = np.arange(len(ids)) != 1
    assert _masked_max_diff(out[keep], ours[keep], mask[keep]) < TOL


def test_export_round_trip_minilm(minilm, tmp_path):
    config, params, (ids, mask, types), ours = minilm
    export_bert(params, config, tmp_path)
    model = transformers.BertModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
    ref = _torch_hidden(model, ids, mask, types)
    assert _masked_max_diff(ours, ref, mask) < TOL
    config2, params2 = load_bert(tmp_path)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_export_round_trip_random_tiny(tmp_path):
    config = bert_tiny(hidden_act="gelu_new")
    variables = init_bert(config, jax.random.PRNGKey(0))
    # Perturb every leaf (LayerNorm scales, all biases) so each mapping is exercised.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32),
        nn.unbox(variables))["params"]
    ids = rng.integers(1, config.vocab_size, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = np.zeros_like(ids)
    types[0, 6:] = 1
    ours = _ours(config, params, ids, mask, types)
    export_bert({"params": params}, config, tmp_path)
    model = transformers.BertModel.from_pretrained(str(tmp_path)).eval()  # pooler newly init
    ref = _torch_hidden(model, ids, mask, types)
    assert _masked_max_diff(ours, ref, mask) < TOL
    assert json.loads((tmp_path / "config.json").read_text())["hidden_act"] == "gelu_new"


def test_gradients_match_transformers(tmp_path):
    """Training path: d(loss)/d(params) equals torch's for a tiny random model."""
    config = bert_tiny(dropout_rate=0.0, attention_dropout_rate=0.0)
    params = nn.unbox(init_bert(config, jax.random.PRNGKey(3)))["params"]
    rng = np.random.default_rng(1)
    ids = rng.integers(1, config.vocab_size, (2, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    target = rng.standard_normal((2, 10, config.hidden_size)).astype(np.float32) * mask[..., None]

    def loss(p):
        h = BertEncoder(config).apply({"params": p}, ids, mask, deterministic=False)
        return jnp.sum(h * target)

    grads = params_to_hf(jax.jit(jax.grad(loss))(params), config)
    export_bert(params, config, tmp_path)
    model = transformers.BertModel.from_pretrained(str(tmp_path), add_pooling_layer=False)
    model.train()
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state
    (out * torch.from_numpy(target)).sum().backward()
    for name, param in model.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), atol=1e-4, err_msg=name)


def test_prefixed_state_dict_with_pooler(minilm):
    config, params = minilm[:2]
    sd = params_to_hf(params, config)
    prefixed = {"bert." + k: v for k, v in sd.items()}
    prefixed["bert.pooler.dense.weight"] = np.zeros((384, 384), np.float32)
    prefixed["bert.embeddings.position_ids"] = np.arange(512)[None]
    again = params_from_hf(prefixed, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_error_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_bert(tmp_path)


def test_error_missing_weights(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_bert(tmp_path)


def test_error_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(CheckpointError, match=r"model_type 't5'.*bert"):
        load_bert(tmp_path)


def test_error_config_shape_mismatch(minilm_dir):
    with pytest.raises(CheckpointError) as e:
        load_bert(minilm_dir, hidden_size=768)
    msg = str(e.value)
    assert "embeddings.word_embeddings.weight" in msg
    assert "(30522, 384)" in msg and "(30522, 768)" in msg


def test_error_tensor_shape_mismatch(tmp_path):
    config = bert_tiny()
    export_bert(init_bert(config, jax.random.PRNGKey(0)), config, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    name = "encoder.layer.1.intermediate.dense.weight"
    sd[name] = np.ascontiguousarray(sd[name][:100])
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_bert(tmp_path)
    msg = str(e.value)
    assert name in msg and "(100, 64)" in msg and "(128, 64)" in msg and str(tmp_path) in msg


def test_error_missing_tensor(tmp_path):
    config = bert_tiny()
    sd = params_to_hf(init_bert(config, jax.random.PRNGKey(0)), config)
    del sd["encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(CheckpointError, match="encoder.layer.0.attention.self.key.bias"):
        params_from_hf(sd, config, "somewhere")


def test_bf16_close_to_fp32(minilm_dir, minilm):
    _, _, (ids, mask, types), ours = minilm
    config16, params16 = load_bert(minilm_dir, dtype="bfloat16")
    assert config16.dtype == jnp.bfloat16 and config16.param_dtype == jnp.float32
    assert params16["layer_0"]["intermediate"]["kernel"].dtype == np.float32
    out = BertEncoder(config16).apply({"params": params16}, ids, mask, types)
    assert out.dtype == jnp.bfloat16
    a = np.asarray(out.astype(jnp.float32))[:, 0]
    b = ours[:, 0]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99, cos


def test_logical_axes():
    config = bert_tiny()
    spec = nn.get_partition_spec(init_bert(config, jax.random.PRNGKey(0)))["params"]
    P = jax.sharding.PartitionSpec
    assert spec["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
    assert spec["embeddings"]["position_embeddings"]["embedding"] == P(None, "embed")
    assert spec["embeddings"]["LayerNorm"]["scale"] == P("embed")
    att = spec["layer_0"]["attention"]
    assert att["query"]["kernel"] == P("embed", "heads", "kv")
    assert att["value"]["bias"] == P("heads", "kv")
    assert att["out"]["kernel"] == P("heads", "kv", "embed")
    assert spec["layer_1"]["intermediate"]["kernel"] == P("embed", "mlp")
    assert spec["layer_1"]["output"]["kernel"] == P("mlp", "embed")
    assert logical_partition_spec(config)["params"] == spec


def test_runs_under_mesh_with_logical_rules():
    config = bert_tiny()
    variables = init_bert(config, jax.random.PRNGKey(0))
    ids = jnp.ones((2, 8), jnp.int32)
    rules = (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("embed", None), ("length", None), ("kv", None))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with mesh, nn.logical_axis_rules(rules):
        out = jax.jit(lambda v: BertEncoder(config).apply(v, ids, jnp.ones_like(ids)))(variables)
    plain = jax.jit(lambda v: BertEncoder(config).apply(v, ids, jnp.ones_like(ids)))(variables)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-5)


def test_dropout_and_length_check():
    config = bert_tiny(max_position_embeddings=16)
    variables = init_bert(config, jax.random.PRNGKey(0))
    ids = jnp.ones((2, 8), jnp.int32)
    model = BertEncoder(config)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    det = apply(variables, ids, jnp.ones_like(ids))
    drop = apply(variables, ids, jnp.ones_like(ids), deterministic=False,
                 rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(np.asarray(det), np.asarray(drop))
    long = jnp.ones((1, 17), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings 16"):
        model.apply(variables, long, jnp.ones_like(long))


def test_config_hf_dict_round_trip():
    for config in (bert_base(), bert_tiny(), minilm_l6(hidden_act="relu")):
        assert BertConfig.from_hf_dict(config.to_hf_dict()) == config
        assert transformers.BertConfig(**config.to_hf_dict()).hidden_size == config.hidden_size
    with pytest.raises(ValueError, match="unknown BertConfig fields"):
        BertConfig.from_hf_dict(bert_tiny().to_hf_dict(), hiden_size=3)
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig.from_hf_dict({**bert_tiny().to_hf_dict(), "position_embedding_type": "relative_key"})
