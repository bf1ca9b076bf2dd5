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
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna

from models import get_model_class, make_config
from pipeline.study.params import StudyParams, model_grid

PRIMITIVE = (type(None), bool, int, float, str)  # what optuna keeps as a categorical choice as it is
# the median pruner: complete trials before it may prune, and trials that must have reached an epoch
# for it to compare there (the pruned trial's best valid Recall@20 so far against their median)
PRUNER_STARTUP, PRUNER_MIN_TRIALS = 2, 2


def arm_grid(params: StudyParams, model: str, adapter: str) -> dict[str, list[Any]]:
    """The arm's grid as given: the model's (lr included), then +BeFA's own keys."""
    grid = model_grid(params, model)
    return grid if adapter == "none" else {**grid, **params.befa_grid}


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key (``befa.t``) in a dumped config."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def arm_defaults(params: StudyParams, model: str, adapter: str, keys: list[str]) -> dict[str, Any]:
    """The arm's default value of each key: the model's config under the study's fixed overrides."""
    overrides = {**params.fixed_overrides(model), "adapter": adapter}
    config = make_config(get_model_class(model), overrides).model_dump(mode="json")
    return {key: config_value(config, key) for key in keys}


def search_space(params: StudyParams, model: str, adapter: str) -> dict[str, list[Any]]:
    """Config key -> the values the arm's trials draw from (the grid's, plus the default where it lacks it)."""
    grid = arm_grid(params, model, adapter)
    defaults = arm_defaults(params, model, adapter, list(grid))
    return {key: list(values) if defaults[key] in values else [*values, defaults[key]] for key, values in grid.items()}


def space_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in space.values())


def trial_budget(params: StudyParams, model: str) -> int:
    """Trials of each arm of ``model``, the same for base and +BeFA."""
    return max(1, min(params.max_trials, space_size(search_space(params, model, "none"))))


def choice(value: Any) -> Any:
    """A grid value as optuna's categorical choice (a list or a mapping as its JSON text)."""
    return value if isinstance(value, PRIMITIVE) else json.dumps(value, sort_keys=True)


def from_choice(drawn: Any, values: list[Any]) -> Any:
    """The grid value a drawn choice stands for."""
    return {json.dumps(choice(v)): v for v in values}[json.dumps(drawn)]


def tpe_startup(budget: int) -> int:
    """TPE's random start (the default trial among them): half the budget, 2 to 10 trials."""
    return min(10, max(2, budget // 2))


def make_sampler(params: StudyParams, budget: int) -> optuna.samplers.TPESampler:
    """The arm's seeded TPE sampler: the same trials for the same ``search_seed`` and results."""
    return optuna.samplers.TPESampler(seed=params.search_seed, n_startup_trials=tpe_startup(budget))


def make_pruner(params: StudyParams) -> optuna.pruners.BasePruner:
    """The median pruner on valid Recall@20 per epoch, after ``prune_warmup`` epochs (none without it)."""
    if params.prune_warmup is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP, n_warmup_steps=params.prune_warmup, n_min_trials=PRUNER_MIN_TRIALS
    )


def search_settings(params: StudyParams, budget: int) -> dict[str, Any]:
    """The sampler and pruner as the search record states them."""
    pruner = (
        None
        if params.prune_warmup is None
        else {
            "name": "MedianPruner",
            "metric": "valid recall@20",
            "n_startup_trials": PRUNER_STARTUP,
            "n_warmup_steps": params.prune_warmup,
            "n_min_trials": PRUNER_MIN_TRIALS,
        }
    )
    sampler = {"name": "TPESampler", "seed": params.search_seed, "n_startup_trials": tpe_startup(budget)}
    return {"sampler": sampler, "pruner": pruner, "budget": budget}
