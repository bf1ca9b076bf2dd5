"""The study's search (spec section 1): per model and adapter (an arm), an optuna study over
the arm's space (``pipeline.study.search_space``), maximising VALID Recall@20.

- **Sampler**: TPE, seeded with ``search_seed``; its first trial is the arm's default
  configuration (enqueued), the next few its random start, the rest its suggestions.
- **Budget**: ``trial_budget``, the same for base and +BeFA. A suggestion whose resolved config
  an earlier trial of the arm already has is told that trial's result and not counted; after
  :data:`~pipeline.training.search.MAX_REPEATS` of them in a row, a seeded random point not yet tried is enqueued, so
  an arm always gets its budget. ``max_minutes`` stops an arm's new trials after that time.
- **Pruning**: each epoch's valid Recall@20 is reported to a median pruner
  (``search_space.make_pruner``); a pruned trial stops (``pipeline.training.search.RunPruned``)
  and its run is recorded ``pruned``, never a finished run of the cache. The pruner sees valid
  metrics only. A trial whose run the cache already holds (finished or pruned) is replayed:
  its recorded epochs go through the same pruner, so a study that reuses its runs makes the
  same decisions; on Ray, where the hook cannot reach the workers, the same replay prunes
  after the run (the decisions are the same, the time is not saved).
- **Selection**: the winner is :func:`pipeline.study.search.select_on_valid` over the complete
  trials' valid metrics (a pruned trial never wins). No test metric is read here.

The search core (the optuna study, repeats, pruning, selection) is
:class:`pipeline.training.search.SpaceSearch`, shared with ``befa run``'s fit; an arm here is
that core with the study's run specs and its run cache.

Without ``max_minutes`` the arms advance together: each round trains one trial of every arm as
one batch (``StudyRunner.run_many``, spread on Ray with ``cluster``); each arm's trials depend
on its own results only, so rounds do not change what an arm tries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import optuna

from pipeline.study.params import StudyParams
from pipeline.study.runner import RunSpec, StudyRunner
from pipeline.study.search import select_on_valid
from pipeline.study.search_space import arm_fixed, search_space, trial_budget
from pipeline.training.record import RunRecord
from pipeline.training.search import Candidate, SpaceSearch, TrialPruning


@dataclass
class Pending:
    """A trial of one arm that needs training."""

    arm: "ArmSearch"
    candidate: Candidate
    spec: RunSpec

    @property
    def pruning(self) -> TrialPruning:
        return self.candidate.pruning


class ArmSearch(SpaceSearch):
    """The search of one (model, adapter): the core search with the study's runs and run cache."""

    def __init__(self, params: StudyParams, model: str, adapter: str, split: str, modalities: list[str]) -> None:
        self.params, self.adapter, self.split, self.modalities = params, adapter, split, modalities
        super().__init__(
            model,
            arm_fixed(params, model, adapter),
            search_space(params, model, adapter),
            trial_budget(params, model),
            params.search_seed,
            params.prune_warmup,
        )

    def next_trial(self, runner: StudyRunner) -> Pending | None:
        """The arm's next trial to train; repeats and trials the run cache decides are told on the way."""
        while (candidate := self.ask()) is not None:
            spec = RunSpec(
                model=self.model,
                overrides=candidate.overrides,
                modalities=self.modalities,
                split=self.split,
                seed=self.params.seeds[0],
                experiment="search",
                setting=json.dumps(candidate.point) if candidate.point else "default",
            )
            record = runner.ended_record(spec)
            if record is not None and self.conclude(candidate, record):  # decided from the run cache
                runner.reused += 1
                continue
            return Pending(self, candidate, spec)
        return None

    def finish_pending(self, pending: Pending, record: RunRecord) -> None:
        """The trial's run was trained (or reused) in a batch: tell its result."""
        self.finish(pending.candidate, record)

    def result(self) -> dict[str, Any]:  # type: ignore[override]
        """The search record: the space, sampler and pruner, every trial's valid metrics, the winner."""
        return {**super().result(select_on_valid), "adapter": self.adapter}


def run_searches(
    runner: StudyRunner, keys: list[tuple[str, str]], split: str, modalities: list[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every arm's search: together, one trial of each per batch; with ``max_minutes``, one arm
    after another, its budget checked between its trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the runner logs every trial itself
    p = runner.params
    arms = {key: ArmSearch(p, *key, split, modalities) for key in keys}
    if p.max_minutes is None:
        _advance(runner, list(arms.values()), None)
    else:
        for arm in arms.values():
            _advance(runner, [arm], 60 * p.max_minutes)
    return {key: arm.result() for key, arm in arms.items()}


def _advance(runner: StudyRunner, arms: list[ArmSearch], budget_s: float | None) -> None:
    """Rounds of one trial per arm still searching, each round one batch, until every arm is done."""
    start, active = time.perf_counter(), list(arms)
    while active:
        if budget_s is not None and all(a.rows for a in active) and time.perf_counter() - start > budget_s:
            for arm in active:
                runner.log(
                    f"  search {arm.model} {arm.adapter}: time budget of {runner.params.max_minutes} min "
                    f"reached after {len(arm.rows)} trials"
                )
            break
        pending = [t for t in (arm.next_trial(runner) for arm in active) if t is not None]
        if pending:
            records = runner.run_many([t.spec for t in pending], [t.pruning.hook for t in pending])
            for t, record in zip(pending, records):
                t.arm.finish_pending(t, record)
        active = [arm for arm in active if not arm.done]
    for arm in arms:
        arm.seconds = time.perf_counter() - start  # with several arms, the batches' time: they ran together
