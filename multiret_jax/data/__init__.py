"""Data layer: KILT IO, passages, provenance mapping, task registry, mixing, mini-KILT, BM25."""
