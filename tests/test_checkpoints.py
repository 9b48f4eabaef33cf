"""Checkpoint IO shared by all architectures: safetensors and pytorch_model.bin (read with
torch.load(weights_only=True)) give the same tensors; clear errors."""

import json

import numpy as np
import pytest

from multiret_jax.models.checkpoints import (CheckpointError, read_config, read_state_dict,
                                             take, write_hf_dir)


def test_pytorch_bin_equals_safetensors(tmp_path, minilm_dir):
    torch = pytest.importorskip("torch")
    st = read_state_dict(str(minilm_dir))
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in st.items()},
               tmp_path / "pytorch_model.bin")
    binary = read_state_dict(str(tmp_path))
    assert set(binary) == set(st)
    for k in st:
        np.testing.assert_array_equal(binary[k], st[k])
    from multiret_jax.models.bert_hf import load_bert
    _, a = load_bert(str(minilm_dir))
    _, b = load_bert(str(tmp_path))
    np.testing.assert_array_equal(a["embeddings"]["word_embeddings"]["embedding"],
                                  b["embeddings"]["word_embeddings"]["embedding"])


def test_round_trip_and_errors(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    write_hf_dir(str(tmp_path), state, {"model_type": "bert"})
    assert read_config(str(tmp_path)) == {"model_type": "bert"}
    np.testing.assert_array_equal(read_state_dict(str(tmp_path))["w"], state["w"])
    with pytest.raises(CheckpointError, match=r"'w' has shape \(2, 3\), model expects \(3, 2\)"):
        take(state, "w", (3, 2), str(tmp_path))
    with pytest.raises(CheckpointError, match="'v' missing"):
        take(state, "v", (1,), str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_config(str(empty))
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        read_state_dict(str(empty))
    (empty / "config.json").write_text("{\n  bad json")
    with pytest.raises(CheckpointError, match=r"config.json:2: invalid JSON"):
        read_config(str(empty))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
