"""The pipeline's last step: top-K recommendations from one of its runs.

The run served is the one with the best VALID Recall@20 (never test: choosing on test
would report the test score of a choice made on it), or the run the user named with
``recommend_run`` ('<model>-<adapter>'). The file and its manifest go into the pipeline
folder (``recommendations.parquet``, ``recommendations.json``), so a nightly run, or a
retrain after a catalog change, refreshes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field

from pipeline.job.params import PipelineError, PipelineParams
from pipeline.serving.ranked_lists import RankedRow, RecommendRequest, write_recommendations
from pipeline.serving.servable import load_servable
from pipeline.settings import Settings
from pipeline.summary import StepSummary
from pipeline.training.summary import TrainSummary
from storage.feature_store import FeatureStore

RECOMMENDATIONS = "recommendations.parquet"
HEAD_ROWS = 20


class RecommendSummary(StepSummary):
    """The recommend step: which run was served, why, and the file it wrote."""

    model: str
    adapter: str
    run_dir: str
    chosen_by: str  # "valid recall@20" or "recommend_run"
    valid_recall: float | None
    path: str
    manifest: str
    rows: int
    users: int
    head: list[RankedRow] = Field(default_factory=list)  # the first rows, for the artifact and the log


def choose_run(params: PipelineParams, runs: list[TrainSummary]) -> tuple[TrainSummary, str]:
    """(run, why): the named run, else the best by valid Recall@20 (ties: the earlier run)."""
    if params.recommend_run is not None:
        for run in runs:
            if f"{run.model}-{run.adapter}" == params.recommend_run:
                return run, "recommend_run"
        raise PipelineError(f"recommend_run {params.recommend_run!r}: no such run in this pipeline")
    scored = [r for r in runs if r.valid.get("recall@20") is not None]
    if not scored:
        raise PipelineError("no run has a valid Recall@20 to choose the run to serve by")
    return max(scored, key=lambda r: r.valid["recall@20"]), "valid recall@20"


def recommend_step(
    params: PipelineParams, settings: Settings, folder: str, runs: list[TrainSummary]
) -> RecommendSummary:
    """Write ``<folder>/recommendations.parquet`` (top ``recommend_k`` per user) and its manifest."""
    start = time.perf_counter()
    run, why = choose_run(params, runs)
    served = load_servable(run.run_dir, FeatureStore(settings.feature_store), device=params.device)
    written = write_recommendations(served, RecommendRequest(k=params.recommend_k), Path(folder) / RECOMMENDATIONS)
    head = next(pq.ParquetFile(written.path).iter_batches(batch_size=HEAD_ROWS), None)
    return RecommendSummary(
        model=run.model,
        adapter=run.adapter,
        run_dir=run.run_dir,
        chosen_by=why,
        valid_recall=run.valid.get("recall@20"),
        path=str(written.path),
        manifest=str(written.manifest),
        rows=written.rows,
        users=written.users,
        head=[RankedRow(**row) for row in head.to_pylist()] if head is not None else [],
        seconds=round(time.perf_counter() - start, 3),
    )
