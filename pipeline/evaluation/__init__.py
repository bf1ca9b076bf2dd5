"""The full-ranking protocol: per-user metrics (``metrics``) and the batched evaluator
that masks seen items and takes the exact top-K (``evaluator``).

May import: ``models``, ``pipeline.settings``, ``pipeline.data``.
"""
