"""tradelib: train deep models on market OHLCV data with the GPU doing the work.

The data takes one path: raw frame -> clean frame -> features -> device tensors -> batches -> model -> metrics.
"""

__version__ = "0.1.0"
