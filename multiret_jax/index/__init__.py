"""Dense indexing and hard-negative mining (exact inner-product search, ANCE negatives)."""
