"""Tokenization from local directories: ids equal transformers' tokenizer; static shapes."""

import numpy as np
import pytest

from multiret_jax.data.tasks import QueryFormat, get_task
from multiret_jax.data.tokenization import Tokenization

TEXTS = ["Who wrote Hamlet?", "Fox 2000 Pictures released the film Soul Food.",
         "Cirith Ungol [SEP] genre", "a " * 300]


def test_bert_ids_match_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tok = Tokenization.from_dir(str(minilm_dir))
    ids, mask = tok.encode(TEXTS, max_len=64)
    want = ref(TEXTS, max_length=64, truncation=True, padding="max_length", return_tensors="np")
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    assert ids.dtype == np.int32 and ids.shape == (4, 64)
    assert ids[3, -1] == ref.sep_token_id  # truncation keeps the closing [SEP]


def test_vocab_txt_fallback_equals_tokenizer_json(minilm_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    a = Tokenization.from_dir(str(minilm_dir)).encode(TEXTS, 32)
    b = Tokenization.from_dir(str(tmp_path)).encode(TEXTS, 32)
    np.testing.assert_array_equal(a[0], b[0])


def test_query_formatting_uses_task_lengths(minilm_dir):
    tok = Tokenization.from_dir(str(minilm_dir))
    for name, length in (("nq", 32), ("fever", 64), ("aidayago2", 128), ("wow", 256)):
        ids, mask = tok.encode_queries(get_task(name), ["word " * 400])
        assert ids.shape == (1, length) and mask.sum() == length
    ids, _ = tok.encode_queries(get_task("nq"), ["who wrote hamlet"])
    assert tok.tokens("NQ [SEP] who wrote hamlet")[:4] == ["[CLS]", "n", "##q", "[SEP]"]
    sep = tok.tokenizer.token_to_id("[SEP]")
    assert ids[0, 3] == sep and ids[0, 7] == sep  # the marker's [SEP] is the special token
    assert tok.decode(ids[0]) == "nq who wrote hamlet"


def test_length_bucketing(minilm_dir):
    tok = Tokenization.from_dir(str(minilm_dir))
    ids, mask = tok.encode(["short one", "a bit longer sentence here"], 128, pad_to_multiple_of=16)
    assert ids.shape == (2, 16) and mask[1].sum() == 7


def test_missing_tokenizer_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        Tokenization.from_dir(str(tmp_path))


def test_wordlevel_vocabulary_is_deterministic_and_bert_shaped(tmp_path):
    texts = ["The river Tarvo flows north.", "NQ [SEP] where does the tarvo flow", "b a c a"] * 3
    a = Tokenization.train_wordlevel(texts, 40)
    b = Tokenization.train_wordlevel(list(reversed(texts)), 40)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert a.tokens("NQ [SEP] the Tarvo")[:4] == ["[CLS]", "nq", "[SEP]", "the"]
    assert a.tokens("zzz")[1] == "[UNK]"
    small = Tokenization.train_wordlevel(texts, 8)  # 5 specials + the 3 most frequent words
    assert small.vocab_size == 8 and small.tokens("the tarvo nq")[1:3] == ["the", "tarvo"]
    a.save(str(tmp_path))
    np.testing.assert_array_equal(Tokenization.from_dir(str(tmp_path)).encode(texts, 16)[0],
                                  a.encode(texts, 16)[0])


def test_marker_outside_the_query_length(minilm_dir):
    """TACO's Table 5 lengths count the query text alone (its public code cuts the text to
    32 tokens, then allows 36 with the prefix): with ``marker_in_len=False`` the marker's
    tokens (as this tokenizer splits them) come on top, and the text keeps its full
    length."""
    tok = Tokenization.from_dir(str(minilm_dir))
    nq = get_task("nq")
    inside = QueryFormat("prefix", "sep", marker_in_len=True)
    outside = QueryFormat("prefix", "sep", marker_in_len=False)
    # "NQ [SEP]" is "n", "##q", "[SEP]" for this uncased WordPiece vocabulary
    assert tok.marker_tokens(nq, outside) == 3
    assert tok.query_length(nq, inside) == 32 and tok.query_length(nq, outside) == 35
    assert tok.query_length(nq, outside, cap=33) == 33
    assert tok.query_length(nq, QueryFormat("none", marker_in_len=False)) == 32
    long_text = " ".join(f"w{i}" for i in range(100))
    text_only = tok.encode([long_text], 32)[1].sum()
    ids, mask = tok.encode_queries(nq, [long_text], outside)
    assert ids.shape == (1, 35) and mask.sum() == 35
    # the text after the marker is exactly what the unmarked query keeps
    assert tok.decode(ids[0]).startswith("nq ") and \
        tok.decode(ids[0])[3:] == tok.decode(tok.encode([long_text], 32)[0][0])
    assert text_only == 32
    ids, _ = tok.encode_queries(nq, [long_text], inside)
    assert ids.shape == (1, 32)
