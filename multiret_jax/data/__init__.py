"""Data layer: KILT IO, passages, provenance mapping, task registry, tokenization, mixing,
mini-KILT, BM25 and the hard-negative filter."""
