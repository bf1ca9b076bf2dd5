"""Storage: the Parquet feature store, atomic file writes and run artifacts."""
