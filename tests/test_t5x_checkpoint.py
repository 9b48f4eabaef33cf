"""T5X checkpoints through gin (``build_biencoder.checkpoint_format``), written by T5X's rules.

The checkpoints here are NOT derived from our HF<->ours mapping: the ``target`` tree is built
with the names and shapes T5X's model creates, and written the way T5X's checkpointers write
it, each rule stated with the T5X file it comes from (google-research/t5x):

* N1 ``t5x/examples/t5/network.py`` (Transformer/Encoder/Decoder/EncoderLayer/DecoderLayer):
  ``token_embedder``; ``encoder``/``decoder`` each with ONE ``relpos_bias`` module (shared by
  its ``layers_{i}``), ``encoder_norm`` / ``decoder_norm``; encoder layers
  ``pre_attention_layer_norm``, ``attention``, ``pre_mlp_layer_norm``, ``mlp``; decoder layers
  ``pre_self_attention_layer_norm``, ``self_attention``, ``pre_cross_attention_layer_norm``,
  ``encoder_decoder_attention``, ``pre_mlp_layer_norm``, ``mlp``; ``decoder/logits_dense``
  only when ``logits_via_embedding=False`` (T5 v1.1).
* L1 ``t5x/examples/t5/layers.py`` DenseGeneral: the kernel PARAMETER is 2-D
  ``(prod(input axes), prod(features))`` = ``[in, out]`` (``x @ kernel``), reshaped to
  ``input axes + features`` row-major when used; so q/k/v are ``[emb, heads*head_dim]``
  (heads-major) and ``out`` (``axis=(-2, -1)``) is ``[heads*head_dim, emb]``.
* L2 layers.py MultiHeadDotProductAttention: "T5 does not explicitly rescale the attention
  logits by 1/sqrt(depth_kq)": the 1/sqrt(head_dim) is in ``query_init`` only, and
  ``dot_product_attention`` does not scale; the stored query kernel is used as it is (as
  HF's, which does not scale either).
* L3 layers.py MlpBlock: ``wi`` for one activation, ``wi_0``/``wi_1`` for two (v1.1
  ``("gelu", "linear")``: ``getattr(flax.linen, "gelu")``, the tanh approximation); ``wo``
  ``[mlp, emb]``.
* L4 layers.py RelativePositionBiases: ``rel_embedding`` is ``[heads, buckets]`` (HF's
  ``relative_attention_bias.weight`` is its transpose ``[buckets, heads]``).
* L5 layers.py Embed ``embedding`` ``[vocab, emb]``; LayerNorm ``scale`` ``[emb]``.
* C1 ``t5x/checkpoints.py`` Checkpointer.save: ``checkpoint_<step>/checkpoint`` holds
  ``serialization.to_bytes({"version": 3, "optimizer": written_state_dict})``, where the
  state dict is ``train_state.state_dict()`` = ``{"target": params, "state": {...}}``.
* C2 checkpoints.py ``_get_parameter_infos``: a partitioned array is written to TensorStore
  with spec ``{"driver": "zarr", "dtype", "kvstore": {"driver": "file", "path":
  name.replace("/", ".")}, "metadata": {"compressor": {"id": "gzip"}, "shape", "chunks"}}``,
  ``name = "/".join(keys)`` (``gs://`` dirs: ``kvstore {"driver": "gcs", "bucket":
  "t5x-dummy-bucket"}`` and a top-level ``path``); chunks from ``_choose_chunk_shape`` of
  the host's write shape (one chunk per model-parallel slice when under 64 MiB).
* C3 ``_write_state_to_tensorstore``: the msgpack gets the RELATIVE spec (``ts.Spec``, stored
  as its JSON by ``register_ts_spec_for_serialization``), the array is written at the
  absolute path through a ``cast`` driver to ``save_dtype`` (target only); unpartitioned
  leaves (``state/step``, mesh axes None) go into the msgpack as arrays.
* C4 ``OrbaxCheckpointManagerInterface``: ``ocp.CheckpointManager`` with item ``"state"``,
  ``PyTreeCheckpointHandler(use_ocdbt=False)``, ``step_prefix="checkpoint"``, saving
  ``train_state.state_dict()`` -> ``checkpoint_<step>/state``; ``_construct_save_args`` tests
  ``name.split(".")[0] != "target"`` on a "/"-joined name, so no save dtype is applied.

Not verified against T5X source (no T5X in this environment to run): the Adafactor
``param_states`` names below (the reader never reads the optimizer state), and the old
(2022) orbax layout with a ``checkpoint`` aggregate msgpack of placeholders (read through
orbax; not written here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Tuple

import jax
import numpy as np
import pytest

from multiret_jax.gin_utils import parse_gin
from multiret_jax.models.checkpoints import CheckpointError
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.models.t5x_checkpoint import load_t5x_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ts = pytest.importorskip("tensorstore")
ml_dtypes = pytest.importorskip("ml_dtypes")

pytestmark = pytest.mark.usefixtures("clean_gin")

VOCAB, EMB, HEADS, HEAD_DIM, MLP, LAYERS, BUCKETS, MAX_DISTANCE = 96, 32, 4, 8, 48, 2, 16, 20
LENGTHS = (40, 23, 4)  # 40 tokens reach every bucket of max_distance 20


def _t5x_target(gated: bool, seed: int) -> Dict[str, Any]:
    """A T5X ``target`` tree with the names and shapes of N1, L1, L3-L5 (values bf16-exact)."""
    rng = np.random.default_rng(seed)

    def arr(shape: Tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
        x = (mean + std * rng.standard_normal(shape)).astype(ml_dtypes.bfloat16)
        return x.astype(np.float32)

    kernel = lambda n_in, n_out: {"kernel": arr((n_in, n_out), n_in ** -0.5)}  # noqa: E731 L1
    scale = lambda: {"scale": arr((EMB,), 0.2, 1.0)}  # noqa: E731 L5
    inner = HEADS * HEAD_DIM

    def attention() -> Dict[str, Any]:  # L1: q/k/v [emb, heads*head_dim], out [heads*head_dim, emb]
        return {"query": kernel(EMB, inner), "key": kernel(EMB, inner),
                "value": kernel(EMB, inner), "out": kernel(inner, EMB)}

    def mlp() -> Dict[str, Any]:  # L3
        wi = {"wi_0": kernel(EMB, MLP), "wi_1": kernel(EMB, MLP)} if gated else {"wi": kernel(EMB, MLP)}
        return {**wi, "wo": kernel(MLP, EMB)}

    relpos = lambda: {"rel_embedding": arr((HEADS, BUCKETS), 1.0)}  # noqa: E731 L4
    encoder: Dict[str, Any] = {"relpos_bias": relpos(), "encoder_norm": scale()}
    decoder: Dict[str, Any] = {"relpos_bias": relpos(), "decoder_norm": scale()}
    for i in range(LAYERS):  # N1
        encoder[f"layers_{i}"] = {"pre_attention_layer_norm": scale(), "attention": attention(),
                                  "pre_mlp_layer_norm": scale(), "mlp": mlp()}
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": scale(), "self_attention": attention(),
            "pre_cross_attention_layer_norm": scale(), "encoder_decoder_attention": attention(),
            "pre_mlp_layer_norm": scale(), "mlp": mlp()}
    if gated:  # N1: v1.1 does not tie the output layer
        decoder["logits_dense"] = kernel(EMB, VOCAB)
    return {"token_embedder": {"embedding": arr((VOCAB, EMB), 1.0)},  # L5
            "encoder": encoder, "decoder": decoder}


def _train_state(target: Dict[str, Any], step: int) -> Dict[str, Any]:
    """``train_state.state_dict()`` (C1), with an Adafactor-like factored optimizer state."""
    states = {"token_embedder": {"embedding": {"v_row": np.ones(VOCAB, np.float32),
                                               "v_col": np.ones(EMB, np.float32)}}}
    return {"target": target, "state": {"step": np.int32(step), "param_states": states}}


def _save_legacy(step_dir: Path, state: Dict[str, Any], save_dtype: str, gcs: bool) -> None:
    """Writes ``state`` as t5x ``Checkpointer.save`` does (C1-C3)."""
    from flax import serialization
    # C3: t5x checkpoints.register_ts_spec_for_serialization: a ts.Spec leaf is stored as
    # its to_json() dict (lists kept as msgpack arrays)
    serialization.register_serialization_state(
        ts.Spec, ty_to_state_dict=lambda t: t.to_json(),
        ty_from_state_dict=lambda t, s: ts.Spec(s) if isinstance(s, dict) else s, override=True)
    step_dir.mkdir(parents=True)

    def write(path: Tuple[Any, ...], arr: np.ndarray) -> Any:
        name = "/".join(k.key for k in path)
        if name == "state/step":  # C3: mesh axes None -> stored in the msgpack
            return np.asarray(arr)
        dtype = save_dtype if name.startswith("target/") else arr.dtype.name  # C3
        chunks = list(arr.shape)
        if name == "target/token_embedder/embedding":  # C2: vocab split over 2 model-parallel hosts
            chunks[0] //= 2
        metadata = {"compressor": {"id": "gzip"}, "shape": list(arr.shape), "chunks": chunks}
        if gcs:  # C2, checkpoints_dir on gs://
            spec = {"driver": "zarr", "dtype": dtype, "path": name.replace("/", "."),
                    "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}, "metadata": metadata}
        else:
            spec = {"driver": "zarr", "dtype": dtype, "metadata": metadata,
                    "kvstore": {"driver": "file", "path": name.replace("/", ".")}}
        local = {"driver": "zarr", "dtype": dtype, "metadata": metadata,  # C3: made absolute
                 "kvstore": {"driver": "file", "path": str(step_dir / name.replace("/", "."))}}
        store = ts.open({"base": local, "driver": "cast", "dtype": arr.dtype.name},
                        create=True, open=True).result()
        store.write(arr).result()
        return ts.Spec(spec)  # C3: the relative spec goes into the msgpack

    written = jax.tree_util.tree_map_with_path(write, state)
    (step_dir / "checkpoint").write_bytes(
        serialization.to_bytes({"version": 3, "optimizer": written}))  # C1


def _save_orbax(model_dir: Path, state: Dict[str, Any]) -> None:
    """Writes ``state`` as t5x ``OrbaxCheckpointManagerInterface.save`` does (C4)."""
    import orbax.checkpoint as ocp
    step = int(state["state"]["step"])
    manager = ocp.CheckpointManager(
        model_dir, item_names=("state",),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=False)},
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    manager.wait_until_finished()
    manager.close()


def _hf_state(target: Dict[str, Any]) -> Dict[str, Any]:
    """The same weights under HF names, by transformers' own T5X conversion
    (models/t5/convert_t5x_checkpoint_to_flax.py: kernels as they are into Flax T5, whose
    ``kernel`` is torch's ``weight.T``; ``rel_embedding.T``; embedding as it is)."""
    t = lambda x: torch.tensor(np.ascontiguousarray(x.T))  # noqa: E731
    sd = {"shared.weight": torch.tensor(target["token_embedder"]["embedding"])}
    for stack in ("encoder", "decoder"):
        dec = stack == "decoder"
        for i in range(LAYERS):
            layer, pre = target[stack][f"layers_{i}"], f"{stack}.block.{i}.layer"
            blocks = [("0", "SelfAttention", "self_attention" if dec else "attention",
                       "pre_self_attention_layer_norm" if dec else "pre_attention_layer_norm")]
            if dec:
                blocks.append(("1", "EncDecAttention", "encoder_decoder_attention",
                               "pre_cross_attention_layer_norm"))
            for n, hf, t5x, norm in blocks:
                for a, b in zip("qkvo", ("query", "key", "value", "out")):
                    sd[f"{pre}.{n}.{hf}.{a}.weight"] = t(layer[t5x][b]["kernel"])
                sd[f"{pre}.{n}.layer_norm.weight"] = torch.tensor(layer[norm]["scale"])
            ff = f"{pre}.{len(blocks)}"
            for w, v in layer["mlp"].items():
                sd[f"{ff}.DenseReluDense.{w}.weight"] = t(v["kernel"])
            sd[f"{ff}.layer_norm.weight"] = torch.tensor(layer["pre_mlp_layer_norm"]["scale"])
        sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = t(
            target[stack]["relpos_bias"]["rel_embedding"])
        sd[f"{stack}.final_layer_norm.weight"] = torch.tensor(
            target[stack][f"{stack}_norm"]["scale"])
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        sd[tied] = sd["shared.weight"]  # one tensor under three names in torch T5
    return sd  # no lm_head (from logits_dense): T5Model, ST5 does not use it


def _hf_model(target: Dict[str, Any], gated: bool, directory: Path) -> Any:
    """The torch T5 holding the HF-named weights (every one used), saved to ``directory``."""
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=EMB, d_kv=HEAD_DIM, d_ff=MLP, num_layers=LAYERS,
        num_decoder_layers=LAYERS, num_heads=HEADS, relative_attention_num_buckets=BUCKETS,
        relative_attention_max_distance=MAX_DISTANCE,
        feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated)
    model = transformers.T5Model(cfg).eval()  # transformers 5 ties an lm_head to `shared`
    state = _hf_state(target)
    model.load_state_dict(state, strict=True)  # every HF name given, none unknown
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    model.save_pretrained(directory)
    return model


def _batch() -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.zeros((len(LENGTHS), max(LENGTHS)), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = rng.integers(2, VOCAB, n)
        ids[i, n - 1] = 1
        mask[i, :n] = 1
    return ids, mask


def _gin_embeddings(checkpoint: Path, *bindings: str) -> Tuple[np.ndarray, Any]:
    """ST5-EncDec embeddings of the model ``models/t5_tiny.gin`` builds from ``checkpoint``."""
    import gin
    gin.clear_config()
    parse_gin(["models/t5_tiny.gin"], [
        f"build_biencoder.checkpoint_dir = '{checkpoint}'",
        f"build_biencoder.config_overrides = {{'relative_attention_max_distance': {MAX_DISTANCE}}}",
        *bindings])
    model, params, cfg = build_biencoder()
    ids, mask = _batch()
    return np.asarray(model.encode_passages(params, ids, mask)), cfg


def _torch_embeddings(model: Any) -> np.ndarray:
    ids, mask = (torch.tensor(x, dtype=torch.long) for x in _batch())
    with torch.no_grad():
        enc = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        dec = model.decoder(input_ids=torch.zeros((ids.shape[0], 1), dtype=torch.long),
                            encoder_hidden_states=enc, encoder_attention_mask=mask)
    return dec.last_hidden_state[:, 0].numpy()


CASES = {  # writer, v1.1 (gated) or v1.0, save dtype, what gin points at, checkpoint_format
    "legacy": ("legacy", True, "float32", "step_dir", "t5x"),
    "legacy_gcs_bf16": ("legacy_gcs", False, "bfloat16", "index_file", "auto"),
    "orbax": ("orbax", True, "float32", "model_dir", "auto"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_t5x_checkpoint_through_gin_matches_hf(case, tmp_path):
    writer, gated, save_dtype, point, fmt = CASES[case]
    target = _t5x_target(gated, seed=1)
    model_dir = tmp_path / "t5x"
    if writer == "orbax":  # two steps: the model directory resolves to the latest
        _save_orbax(model_dir, _train_state(_t5x_target(gated, seed=2), step=3))
        _save_orbax(model_dir, _train_state(target, step=7))
    else:
        _save_legacy(model_dir / "checkpoint_7", _train_state(target, 7), save_dtype,
                     gcs=writer == "legacy_gcs")
    where = {"step_dir": model_dir / "checkpoint_7", "model_dir": model_dir,
             "index_file": model_dir / "checkpoint_7" / "checkpoint"}[point]
    torch_model = _hf_model(target, gated, tmp_path / "hf")

    from_t5x, cfg = _gin_embeddings(where, f"build_biencoder.checkpoint_format = '{fmt}'")
    from_hf, hf_cfg = _gin_embeddings(tmp_path / "hf")
    assert cfg == hf_cfg  # shapes, v1.0/v1.1 and tying inferred as the HF config.json says
    np.testing.assert_allclose(from_t5x, from_hf, rtol=0, atol=1e-5)
    np.testing.assert_allclose(from_t5x, _torch_embeddings(torch_model), rtol=0, atol=1e-4)
    assert np.abs(from_t5x).max() > 0.1  # not a degenerate embedding

    if writer == "legacy":
        from flax import serialization
        # tensorstore < 0.1.14 specs hold the path at the top level (t5x checkpoints
        # _update_ts_path_from_relative_to_absolute)
        index = model_dir / "checkpoint_7" / "checkpoint"
        contents = serialization.msgpack_restore(index.read_bytes())
        spec = contents["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"]
        spec["path"] = spec["kvstore"].pop("path")
        index.write_bytes(serialization.msgpack_serialize(contents))
        norm = load_t5x_checkpoint(str(where))[1]["params"]["encoder"]["encoder_norm"]["scale"]
        np.testing.assert_array_equal(norm, target["encoder"]["encoder_norm"]["scale"])
        # errors name the parameter, the shapes and the path
        with pytest.raises(CheckpointError, match=r"mlp/wi_0/kernel.*\(32, 48\).*\(32, 100\)"):
            load_t5x_checkpoint(str(where), config=cfg, d_ff=100)
        wo = model_dir / "checkpoint_7" / "target.encoder.layers_1.mlp.wo.kernel"
        for f in wo.iterdir():
            f.unlink()
        wo.rmdir()
        with pytest.raises(CheckpointError, match="target/encoder/layers_1/mlp/wo/kernel"):
            load_t5x_checkpoint(str(where))


def test_checkpoint_dir_of_neither_format(tmp_path):
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "notes.txt").write_text("not a checkpoint")
    path = re.escape(str(neither))
    parse_gin(["models/t5_tiny.gin"], [f"build_biencoder.checkpoint_dir = '{neither}'"])
    with pytest.raises(CheckpointError, match=f"{path}: not a checkpoint directory.*neither"):
        build_biencoder()
    with pytest.raises(CheckpointError, match=f"{path}: not a T5X checkpoint directory"):
        build_biencoder(checkpoint_format="t5x")
    with pytest.raises(CheckpointError, match=f"{path}: no config.json"):
        build_biencoder(checkpoint_format="hf")
    with pytest.raises(ValueError, match="checkpoint_format 'tf' is not one of"):
        build_biencoder(checkpoint_format="tf")
    gone = tmp_path / "gone"
    with pytest.raises(CheckpointError, match=f"{re.escape(str(gone))}: .*does not exist"):
        build_biencoder(checkpoint_dir=str(gone))
    (neither / "checkpoint").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(CheckpointError, match="not a msgpack T5X index"):
        build_biencoder()
    with pytest.raises(CheckpointError, match=r"a t5x checkpoint; only \['t5'\] encoders"):
        build_biencoder(encoder="bert", checkpoint_format="t5x")
