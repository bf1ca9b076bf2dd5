"""The record of ``befa run``'s fit (``pipeline.training.catalog_fit``), and when it runs.

**When.** ``fit`` is ``on``, ``off`` or ``auto``. ``auto`` fits on a *small, sparse* catalog:
fewer than :data:`AUTO_MAX_TRAIN` train interactions **and** a density (interactions /
(users x items)) below :data:`AUTO_MAX_DENSITY`. That is the regime where the protocol's
defaults, tuned on denser catalogs, missed the popularity floor (a fashion shop: 8,457
interactions, density 0.20%; TikTok: 59,541 train interactions, 0.11%), and where a search is cheap. The protocol's
catalogs stay as they were: movielens-100k is dense (3.5%), amazon-baby large (119,674 train
interactions: a search there is hours on CPU; ``--fit on`` asks for it).

**What is recorded** (``RunRecord.fit``, ``TrainSummary.fit``): why it ran, the space, the
budget, the sampler and pruner, every trial (its point: the values that differ from the
defaults; its valid Recall@20 at its best epoch; complete or pruned), the winner and its
valid Recall@20 against the default configuration's (the first trial, same seed and budget).

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

AUTO_MAX_TRAIN = 100_000
AUTO_MAX_DENSITY = 0.01
FitMode = Literal["auto", "on", "off"]


class FitDecision(BaseModel):
    """Whether the fit runs for this catalog, and why (one sentence)."""

    on: bool
    reason: str


def fit_decision(mode: str, train_interactions: int, interactions: int, users: int, items: int) -> FitDecision:
    """``fit`` resolved for a catalog of these sizes (see the module)."""
    density = interactions / max(users * items, 1)
    sizes = f"{train_interactions:,} train interactions, density {density:.2%}"
    if mode == "on":
        return FitDecision(on=True, reason=f"asked (--fit on); {sizes}")
    if mode == "off":
        return FitDecision(on=False, reason=f"off (--fit off); {sizes}")
    small = train_interactions < AUTO_MAX_TRAIN and density < AUTO_MAX_DENSITY
    limits = f"auto: on below {AUTO_MAX_TRAIN:,} train interactions and {AUTO_MAX_DENSITY:.0%} density"
    return FitDecision(on=small, reason=f"{limits}; this catalog: {sizes}")


class FitTrial(BaseModel):
    """One configuration the fit trained."""

    number: int
    point: dict[str, Any] = Field(default_factory=dict)  # the values that differ from the defaults
    state: Literal["complete", "pruned"]
    valid: float | None  # valid Recall@20 at the trial's best epoch (pruned: up to where it stopped)
    best_epoch: int | None
    epochs: int
    run_dir: str


class FitRecord(BaseModel):
    """The fit of one run: a short seeded search on VALID Recall@20; the run is its winner."""

    reason: str
    space: dict[str, list[Any]]
    space_size: int
    budget: int
    minutes: float | None = None
    seed: int
    sampler: dict[str, Any] = Field(default_factory=dict)
    pruner: dict[str, Any] | None = None
    trials: list[FitTrial] = Field(default_factory=list)
    winner: int
    stopped_by: Literal["budget", "space", "minutes"]
    seconds: float

    @property
    def default_valid(self) -> float | None:
        """The default configuration's valid Recall@20 (the first trial)."""
        return self.trials[0].valid if self.trials else None

    @property
    def winner_trial(self) -> FitTrial:
        return self.trials[self.winner]

    @property
    def winner_valid(self) -> float | None:
        return self.winner_trial.valid

    @property
    def gain(self) -> float | None:
        """Relative change of valid Recall@20, winner over defaults (None when the defaults scored 0)."""
        d, w = self.default_valid, self.winner_valid
        return None if not d or w is None else w / d - 1

    @property
    def exhausted(self) -> bool:
        return len(self.trials) >= self.space_size

    def winner_text(self) -> str:
        point = self.winner_trial.point
        return "the defaults" if not point else ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())

    def tried(self) -> str:
        """What was tried, as the floor check's line says it."""
        return (
            f"a search on valid ({len(self.trials)} of {self.space_size} configurations of "
            f"{', '.join(self.space)}, seed {self.seed}): the winner ({self.winner_text()}) "
            f"valid R@20 {_num(self.winner_valid)} vs {_num(self.default_valid)} at the defaults"
        )

    def line(self, label: str) -> str:
        """One console line: the search, default vs winner on valid."""
        gain = "" if self.gain is None else f" ({self.gain:+.1%})"
        pruned = sum(t.state == "pruned" for t in self.trials)
        return (
            f"fit {label}: {len(self.trials)} trials on valid ({pruned} pruned, {self.seconds:.0f} s, "
            f"stopped by {self.stopped_by}): valid R@20 {_num(self.default_valid)} at the defaults -> "
            f"{_num(self.winner_valid)}{gain} with {self.winner_text()}"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt(value: Any) -> str:
    return (
        f"{value:g}"
        if isinstance(value, float)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )
