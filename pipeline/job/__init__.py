"""The main job: validated parameters, side-effect-free steps (ingest, extract, split,
train, evaluate, report), ``run_pipeline`` over injectable steps, and the catalog watch.

May import every floor below: data, evaluation, training, features, reporting.
"""
