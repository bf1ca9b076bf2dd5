"""The full-ranking protocol: per-user metrics (``metrics``) and the batched evaluator
that masks seen items and takes the exact top-K (``evaluator``), with metrics per item
group: warm, cold, long tail (``groups``).

May import: ``models``, ``pipeline.settings``, ``pipeline.data``.
"""
