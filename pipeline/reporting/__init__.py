"""What a person reads: the pipeline report and the study report (markdown, HTML,
Parquet/JSON tables and PNG plots), from run folders and small records.

May import: ``storage``, ``pipeline.settings``, ``pipeline.evaluation``,
``pipeline.training.record`` and below. Never ``job`` or ``study``: those call it.
"""
