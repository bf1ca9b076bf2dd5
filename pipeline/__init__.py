"""befa's core: from a raw catalog to metrics, reports and studies, as plain functions.

Sub-packages, lowest floor first; each may import only the floors below it (and
``storage``, ``encoders``, ``models``), never one above. ``tests/test_architecture.py``
holds this line::

    settings  data  evaluation  training  features  reporting  job  study  cli

Nothing here imports Prefect; only ``pipeline.cli``'s Prefect commands import ``flows``.
"""
