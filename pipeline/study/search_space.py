"""What one arm of the study's search explores, and the optuna sampler and pruner that explore it.

An arm is a (model, adapter). Its space is a set of config keys, each with a list of values
that optuna draws as a categorical, so TPE stays on the documented grid and never proposes
a value between two of its points:

- ``lr``: ``StudyParams.lr_grid`` (the authors' {1e-4, 5e-4, 1e-3, 5e-3}), in both arms,
  unless the model's grid names lr itself;
- the model's grid (``StudyParams.grid``: its documented ``GRID``, or a custom one);
- +BeFA only: ``befa_grid`` (its t and dropout).

A key's values also hold the arm's default value (the model's config under the study's fixed
overrides) where the grid lacks it, so the first trial, the default configuration, is a point
of the space that TPE learns from like any other.

Both arms of a model get the same budget (:func:`trial_budget`): ``max_trials``, or the size of
the base arm's space where that is smaller (+BeFA's space is the base one times ``befa_grid``).

The search core (space, sampler, pruner, trials, selection) is ``pipeline.training.search``,
shared with ``befa run``'s fit; this module holds what the study's parameters decide.
"""

from __future__ import annotations

from typing import Any

import optuna

from pipeline.study.params import StudyParams, model_grid
from pipeline.training import search as core
from pipeline.training.search import space_size


def arm_grid(params: StudyParams, model: str, adapter: str) -> dict[str, list[Any]]:
    """The arm's grid as given: the model's (lr included), then +BeFA's own keys."""
    grid = model_grid(params, model)
    return grid if adapter == "none" else {**grid, **params.befa_grid}


def arm_fixed(params: StudyParams, model: str, adapter: str) -> dict[str, Any]:
    """The overrides every trial of the arm has: the study's fixed ones and the adapter."""
    return {**params.fixed_overrides(model), "adapter": adapter}


def arm_defaults(params: StudyParams, model: str, adapter: str, keys: list[str]) -> dict[str, Any]:
    """The arm's default value of each key: the model's config under the study's fixed overrides."""
    return core.defaults_of(model, arm_fixed(params, model, adapter), keys)


def search_space(params: StudyParams, model: str, adapter: str) -> dict[str, list[Any]]:
    """Config key -> the values the arm's trials draw from (the grid's, plus the default where it lacks it)."""
    return core.space_with_defaults(model, arm_fixed(params, model, adapter), arm_grid(params, model, adapter))


def trial_budget(params: StudyParams, model: str) -> int:
    """Trials of each arm of ``model``, the same for base and +BeFA."""
    return max(1, min(params.max_trials, space_size(search_space(params, model, "none"))))


def make_sampler(params: StudyParams, budget: int) -> optuna.samplers.TPESampler:
    """The arm's seeded TPE sampler: the same trials for the same ``search_seed`` and results."""
    return core.make_sampler(params.search_seed, budget)


def make_pruner(params: StudyParams) -> optuna.pruners.BasePruner:
    """The median pruner on valid Recall@20 per epoch, after ``prune_warmup`` epochs (none without it)."""
    return core.make_pruner(params.prune_warmup)


def search_settings(params: StudyParams, budget: int) -> dict[str, Any]:
    """The sampler and pruner as the search record states them."""
    return core.search_settings(params.search_seed, params.prune_warmup, budget)
