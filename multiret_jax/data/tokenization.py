"""Fast tokenizers loaded from a local directory, padded to static shapes for jit.

``Tokenization.from_dir`` reads ``tokenizer.json`` (any HF fast tokenizer: BERT WordPiece,
T5 Unigram) or, for BERT-style directories without it, ``vocab.txt``. Nothing is fetched
from a hub. Query lengths come from the task registry (32 most tasks, 64 FEVER, 128 AIDA,
256 WoW as in TACO); ``pad_to_multiple_of`` buckets lengths so jit compiles few shapes.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer

from multiret_jax.data.tasks import Task, query_format

_ENCODE_BLOCK = 1024  # texts per tokenizer call in ``Tokenization.encode``


class Tokenization:
    """A ``tokenizers.Tokenizer`` with the padding/truncation the encoders need.

    Args:
      tokenizer: the fast tokenizer (its post-processor adds [CLS]/[SEP] or </s>).
      pad_id: padding id (0 for BERT and T5).
    """

    def __init__(self, tokenizer: Tokenizer, pad_id: int = 0):
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @classmethod
    def from_dir(cls, directory: str) -> "Tokenization":
        """Loads ``tokenizer.json`` (or ``vocab.txt`` for BERT) from ``directory``."""
        tj = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(tj):
            tok = Tokenizer.from_file(tj)
        elif os.path.isfile(os.path.join(directory, "vocab.txt")):
            from tokenizers.implementations import BertWordPieceTokenizer
            lower = True
            cfg = os.path.join(directory, "tokenizer_config.json")
            if os.path.isfile(cfg):
                with open(cfg) as f:
                    lower = json.load(f).get("do_lower_case", True)
            tok = BertWordPieceTokenizer(os.path.join(directory, "vocab.txt"), lowercase=lower)._tokenizer
        else:
            raise FileNotFoundError(f"{directory}: no tokenizer.json or vocab.txt")
        pad_id = 0
        for name in ("[PAD]", "<pad>"):
            tid = tok.token_to_id(name)
            if tid is not None:
                pad_id = tid
                break
        return cls(tok, pad_id)

    @classmethod
    def train_wordlevel(cls, texts: Sequence[str], vocab_size: int) -> "Tokenization":
        """A deterministic BERT-style (uncased, [CLS] ... [SEP]) word-level vocabulary of the
        ``vocab_size`` most frequent words of ``texts`` (ties by word), for tiny random-init
        models on a machine without a pretrained vocabulary (e.g. the mini-KILT).
        (``tokenizers``' WordPiece trainer breaks ties differently from run to run, so a
        resumed run could get another vocabulary; this one cannot.)"""
        from collections import Counter

        from tokenizers import models, normalizers, pre_tokenizers, processors
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        norm = normalizers.BertNormalizer(lowercase=True)
        pre = pre_tokenizers.BertPreTokenizer()
        counts: Counter = Counter()
        for t in texts:
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
        words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = {w: i for i, w in enumerate(specials)}
        for w, _ in words[:max(0, vocab_size - len(specials))]:
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer = norm, pre
        tok.add_special_tokens(specials)  # "[SEP]" in "NQ [SEP] query" is the special token
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return cls(tok, vocab["[PAD]"])

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save(os.path.join(directory, "tokenizer.json"))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str], max_len: int,
               pad_to_multiple_of: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, int32 [B, L].

        Args:
          texts: strings to encode.
          max_len: truncation length in tokens, special tokens included (the closing
            [SEP] / </s> is kept).
          pad_to_multiple_of: pad to the longest sequence rounded up to this multiple
            (capped at ``max_len``); None pads to ``max_len`` (one static shape).
        Returns:
          (input_ids, attention_mask).
        """
        texts = list(texts)
        ids = np.full((len(texts), max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), np.int32)
        longest = 1
        self.tokenizer.enable_truncation(max_len)
        try:
            # in blocks: the tokenizer's Encoding objects (tokens, offsets, the truncated
            # overflow) take far more memory than the ids; a shard of passages at once
            # made them most of the corpus encoder's peak memory
            for start in range(0, len(texts), _ENCODE_BLOCK):
                encs = self.tokenizer.encode_batch(texts[start:start + _ENCODE_BLOCK])
                for i, e in enumerate(encs, start):
                    n = len(e.ids)
                    ids[i, :n] = e.ids
                    mask[i, :n] = 1
                    longest = max(longest, n)
                del encs
        finally:
            self.tokenizer.no_truncation()
        if pad_to_multiple_of:
            length = min(max_len, -(-longest // pad_to_multiple_of) * pad_to_multiple_of)
            if length < max_len:
                ids, mask = ids[:, :length].copy(), mask[:, :length].copy()
        return ids, mask

    def encode_queries(self, task: Task, texts: Sequence[str], marker="prefix",
                       pad_to_multiple_of: Optional[int] = None,
                       cap: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Formats queries for ``task`` (``marker``: a ``QueryFormat`` or a marker name)
        and encodes them with the task's query length (``query_length``)."""
        fmt = query_format(marker)
        return self.encode([fmt.text(task, t) for t in texts],
                           self.query_length(task, fmt, cap), pad_to_multiple_of)

    def marker_tokens(self, task: Task, marker) -> int:
        """Tokens that ``marker`` (a ``QueryFormat`` or a marker name) adds to a query of
        ``task``: measured on a one-word query, so the count is the tokenizer's own."""
        fmt = query_format(marker)
        key = (task.name, fmt)
        cache = self.__dict__.setdefault("_marker_tokens", {})
        if key not in cache:
            count = lambda text: len(self.tokenizer.encode(text).ids)
            cache[key] = max(0, count(fmt.text(task, "query")) - count("query"))
        return cache[key]

    def query_length(self, task: Task, marker, cap: Optional[int] = None) -> int:
        """Token length of ``task``'s queries under ``marker`` (``QueryFormat.length``, the
        marker's tokens counted by this tokenizer), at most ``cap``."""
        fmt = query_format(marker)
        return fmt.length(task, self.marker_tokens(task, fmt), cap)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if i != self.pad_id])

    def tokens(self, text: str) -> List[str]:
        return self.tokenizer.encode(text).tokens
