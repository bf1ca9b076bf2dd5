"""Catalogs in: the catalog record, known datasets (download, verify), importers, ingest,
splits, catalog statistics and the MMRec export.

May import: ``storage``, ``pipeline.settings``. Nothing above (no features, training,
job or study): a catalog knows nothing about what is trained on it.
"""
