"""The data path: raw files -> clean frame -> features -> the cache."""
