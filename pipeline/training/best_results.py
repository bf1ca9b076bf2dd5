"""What a run keeps of its best valid epoch's evaluation: the item groups, the cold-items
settings (``pipeline.evaluation.settings``) and the per-user table, recorded together."""

from __future__ import annotations

from pathlib import Path

from models.base import Recommender
from pipeline.evaluation.evaluator import EvalResult, Evaluator
from pipeline.evaluation.settings import evaluate_settings, merge_per_user
from pipeline.training.checkpoints import save_per_user
from pipeline.training.record import PER_USER, RunRecord, item_group_metrics, setting_metrics


def keep_best_results(
    record: RunRecord, model: Recommender, evaluator: Evaluator, results: dict[str, EvalResult], run_dir: Path
) -> None:
    """Fill the record's item-group and setting metrics and write ``per_user.parquet`` (the
    hybrid results' per-user columns plus each setting's, NaN where a setting skips a user)."""
    settings = evaluate_settings(model, evaluator, tuple(results))
    merge_per_user(results, settings)
    record.item_groups = item_group_metrics(results)
    record.settings = setting_metrics(settings)
    save_per_user(Path(run_dir) / PER_USER, results)
