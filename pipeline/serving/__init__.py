"""Serving: recommendations and similar items out of a trained run.

Floor: above ``pipeline.features`` (it loads a run's feature snapshots) and below
``pipeline.reporting`` (the reports show its files). It may import storage, settings,
encoders, models, data, evaluation, training and features.
"""
