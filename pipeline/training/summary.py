"""What a training step did, as typed records: :class:`TrainJob` in, :class:`TrainSummary` out.

The full story of a run is its record (:class:`pipeline.training.record.RunRecord`, in the
run folder); these summaries carry what the job, the flow and the reports need without
reading it back.
"""

from __future__ import annotations

from pydantic import BaseModel

from pipeline.summary import StepSummary
from pipeline.training.fit_record import FitRecord


class TrainJob(BaseModel):
    """One (model, adapter) run of a pipeline, as the train role receives a batch of them."""

    model: str
    adapter: str
    run_dir: str


class TrainSummary(StepSummary):
    """One trained (and, when asked, re-evaluated) run."""

    model: str
    adapter: str
    run_dir: str
    status: str
    best_epoch: int | None
    epochs_run: int
    test: dict[str, float]
    valid: dict[str, float]
    verified: bool | None = None
    max_abs_diff: float | None = None
    verify_seconds: float | None = None  # the checkpoint re-evaluation alone (``seconds`` counts training and it)
    floor_note: str | None = None  # set when the run ended below the MostPop floor: by how much and the likely cause
    fit: FitRecord | None = None  # befa run's fit: the search on valid the run won (None: not fitted)

    @property
    def label(self) -> str:
        return f"{self.model}{'+befa' if self.adapter == 'befa' else ''}"
