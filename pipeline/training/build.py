"""The one constructor of a model for a run: training, evaluation and serving all call it.

:func:`build_model` seeds torch with the run's seed, builds the model through the
registry's factory (``models.create_model``) on the run's data, and puts it on the data's
device. Seeding before construction is what makes a rebuilt model's freshly initialised
parts (BeFA's gates, projections) the same as at training time, before weights load. Being
every run's way in, it also silences the known third-party notices (:mod:`pipeline.quiet`:
PyTorch's sparse-CSR beta note on the models' graphs), for a script, a flow run or a Ray
worker as for the CLI.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from models import ModelConfig, Recommender, TrainData, create_model
from pipeline.quiet import quiet_known_warnings


def build_model(
    model: str | type[Recommender], data: TrainData, config: ModelConfig | Mapping[str, Any] | None, seed: int
) -> Recommender:
    """``model`` (a registry name or class) with ``config`` (validated, or overrides), seeded, on ``data.device``."""
    quiet_known_warnings()
    torch.manual_seed(seed)
    return create_model(model, data, config).to(data.device)
