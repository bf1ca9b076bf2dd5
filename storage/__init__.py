"""Storage, the ground floor (numpy, pyarrow and fsspec; no torch): atomic file writes and the
Parquet feature store, with the store split by concern.

- ``feature_store``: the :class:`FeatureStore` facade and ``duckdb_snapshot_query``.
- ``keys``: :class:`FeatureSetKey` (dataset, encoder fingerprint, modality), the modalities,
  content hashes.
- ``columns``: validated id/hash columns and float32 matrices.
- ``parts``: immutable vector part files and the newest row of each key over them.
- ``index``: snapshot files, the ``CURRENT`` pointer and the commit.
- ``snapshots``: the :class:`Snapshot` record and its content-addressed id.
- ``reads``: aligned (zero-copy when possible) and whole-table reads, as numpy.
- ``maintenance``: ``compact`` and ``gc``.
- ``encoder_records``: what produced each encoder fingerprint.
- ``filesystem`` (one root, local or fsspec) and ``atomic`` (temporary file, then rename).
- ``faults``: named pause points (``BEFA_PAUSE_AT``) where crash tests kill a process.
- ``errors``: a damaged store file, a full disk (messages that name the file); ``check``: ``befa store
  check`` (every file read back, damaged ones moved aside with ``repair``).
"""
