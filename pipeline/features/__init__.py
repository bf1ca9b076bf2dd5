"""Content features: incremental, resumable extraction with frozen encoders into the
feature store (locally or on Ray Data), and loading a feature set aligned to a catalog.

May import: ``storage``, ``encoders``, ``pipeline.settings``, ``pipeline.data``,
``pipeline.training`` (device and thread handling).
"""
