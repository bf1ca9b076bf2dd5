"""Content features: incremental, resumable extraction with frozen encoders into the
feature store (locally or on Ray Data), and loading a feature set aligned to a catalog.

- ``extract``: ``extract_features`` (local) and ``extract_command`` (``befa extract``),
  with the steps both backends share (encoder registration, what to encode, the commit).
- ``ray_extract``: ``extract_features_ray``, the same extraction on a Ray cluster.
- ``images``: the image Dataset (read, hash check, decode, preprocess), collate and loader.
- ``writer``: ``PartWriter``, buffered embeddings -> feature store parts.
- ``summary``: ``ModalitySummary`` / ``ExtractSummary``, what an extraction did.
- ``load``: ``load_features`` and friends, store rows -> float32 torch tensors by item_idx.

May import: ``storage``, ``encoders``, ``pipeline.settings``, ``pipeline.data``,
``pipeline.training`` (device and thread handling).
"""
