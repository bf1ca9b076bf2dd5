"""Does BeFA help on this catalog: the study's parameters, the cached run runner, the
hyper-parameter search judged on VALID, sweeps and ablations, paired statistics, and the
inspection of trained adapters.

May import every floor below, ``pipeline.job`` included (its steps prepare the data).
"""
