"""The pipeline's last step: top-K recommendations from one of its runs.

The run served is the one with the best VALID Recall@20 (never test: choosing on test
would report the test score of a choice made on it), or the run the user named with
``recommend_run`` ('<model>-<adapter>'). A run below the MostPop floor on valid (it learned
less than counting clicks) or without a valid Recall@20 is left out of the choice, each with
its reason (``RecommendSummary.left_out``, in the log and the report); MostPop itself always
qualifies, so there is always a run to serve. A run the user names is served as named, with
the reason beside it when it is below the floor. The file and its manifest go into the
pipeline folder (``recommendations.parquet``, ``recommendations.json``), so a nightly run,
or a retrain after a catalog change, refreshes them.
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
from pipeline.training.floor_check import FLOOR_MODEL
from pipeline.training.summary import TrainSummary
from storage.feature_store import FeatureStore

RECOMMENDATIONS = "recommendations.parquet"
HEAD_ROWS = 20
METRIC = "recall@20"  # the selection metric, on valid


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
    left_out: list[str] = Field(default_factory=list)  # runs not eligible to serve, each with why


def serving_candidates(runs: list[TrainSummary], named: str | None = None) -> tuple[list[TrainSummary], list[str]]:
    """(the runs eligible to serve, a reason for each run left out): a run needs a valid
    Recall@20 at or above MostPop's (the floor, when the runs have it). ``named``: the
    ``recommend_run`` the user gave, served as named (its reason says so)."""
    floor = next((r.valid.get(METRIC) for r in runs if r.model == FLOOR_MODEL), None)
    keep, left_out = [], []
    for run in runs:
        value = run.valid.get(METRIC)
        if value is None:
            why = f"no valid {METRIC} (status {run.status})"
        elif floor is not None and run.model != FLOOR_MODEL and value < floor:
            why = f"below the MostPop floor on valid ({METRIC} {value:.4f} < {floor:.4f})"
        else:
            keep.append(run)
            continue
        served = "; served all the same: --recommend-run names it" if named == f"{run.model}-{run.adapter}" else ""
        left_out.append(f"{run.label}: {why}{served}")
    return keep, left_out


def choose_run(params: PipelineParams, runs: list[TrainSummary]) -> tuple[TrainSummary, str]:
    """(run, why): the named run, else the best eligible run by valid Recall@20 (ties: the earlier run)."""
    if params.recommend_run is not None:
        for run in runs:
            if f"{run.model}-{run.adapter}" == params.recommend_run:
                return run, "recommend_run"
        raise PipelineError(f"recommend_run {params.recommend_run!r}: no such run in this pipeline")
    scored, _ = serving_candidates(runs)
    if not scored:
        raise PipelineError("no run has a valid Recall@20 to choose the run to serve by")
    return max(scored, key=lambda r: r.valid[METRIC]), f"valid {METRIC}"


def recommend_step(
    params: PipelineParams, settings: Settings, folder: str, runs: list[TrainSummary]
) -> RecommendSummary:
    """Write ``<folder>/recommendations.parquet`` (top ``recommend_k`` per user) and its manifest."""
    start = time.perf_counter()
    run, why = choose_run(params, runs)
    left_out = serving_candidates(runs, params.recommend_run)[1]
    served = load_servable(run.run_dir, FeatureStore(settings.feature_store), device=params.device)
    written = write_recommendations(served, RecommendRequest(k=params.recommend_k), Path(folder) / RECOMMENDATIONS)
    head = next(pq.ParquetFile(written.path).iter_batches(batch_size=HEAD_ROWS), None)
    return RecommendSummary(
        model=run.model,
        adapter=run.adapter,
        run_dir=run.run_dir,
        chosen_by=why,
        valid_recall=run.valid.get(METRIC),
        path=str(written.path),
        manifest=str(written.manifest),
        rows=written.rows,
        users=written.users,
        head=[RankedRow(**row) for row in head.to_pylist()] if head is not None else [],
        left_out=left_out,
        seconds=round(time.perf_counter() - start, 3),
    )
