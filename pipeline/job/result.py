"""What one pipeline run returns: every step's typed summary, in one record.

``summary.json`` in the pipeline folder is :class:`PipelineResult` as JSON.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipeline.data.summary import IngestSummary, SplitSummary
from pipeline.features.summary import FeaturesSummary
from pipeline.job.params import PipelineParams
from pipeline.job.recommend_step import RecommendSummary
from pipeline.reporting.pipeline_report import ReportFiles
from pipeline.training.summary import TrainSummary


class PipelineResult(BaseModel):
    params: PipelineParams
    folder: str
    ingest: IngestSummary
    extract: FeaturesSummary
    split: SplitSummary
    runs: list[TrainSummary]
    report: ReportFiles
    timings: dict[str, float]
    skipped: list[str] = Field(default_factory=list)
    recommendations: RecommendSummary | None = None
