"""Encoders: Flax BERT and T5 (ST5-EncDec), the bi-encoder, checkpoint IO."""
