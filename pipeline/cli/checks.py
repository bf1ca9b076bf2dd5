"""Checks every command runs on its parameters before it loads any data: numbers in range,
the device present, the model's config overrides valid, the encoder spec sound. Each
failure is one line naming the flag (exit 2), never a traceback and never after minutes
of work (a bad ``--set befa.t=abc`` used to surface only after extraction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from encoders import EncoderError, validate_specs
from encoders.spec import is_imported
from models import make_config
from models.base import ModelConfig, Recommender
from pipeline.cli.common import fail
from pipeline.data.versions import is_ingested
from pipeline.device import DeviceError, check_device
from pipeline.features.imported import refusal, stored_entries


def at_least(value: int | float | None, flag: str, minimum: int | float = 1) -> None:
    if value is not None and value < minimum:
        fail(f"{flag} must be at least {minimum}, got {value}")


def device_or_fail(device: str | None) -> None:
    try:
        check_device(device)
    except DeviceError as exc:
        fail(str(exc))


def _validation_lines(exc: ValidationError, overrides: Mapping[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        given = overrides.get(key, err.get("input"))
        parts.append(f"--set {key}={given}: {err['msg'].lower()}")
    return "; ".join(parts)


def config_or_fail(model_cls: type[Recommender], overrides: Mapping[str, Any]) -> ModelConfig:
    """The model's config with the ``--set`` overrides (and ``--adapter``) applied, or a message."""
    try:
        config = make_config(model_cls, overrides)
    except ValidationError as exc:
        fail(_validation_lines(exc, overrides))
    except (KeyError, ValueError) as exc:
        fail(f"--set: {exc.args[0] if exc.args else exc}")
    if config.adapter == "befa" and not model_cls.accepts_befa:
        why = "has no behaviour embedding" if model_cls.uses_content else "uses no content features"
        fail(f"--adapter befa: {model_cls.name} {why}, so BeFA has nothing to adapt")
    return config


def encoder_or_fail(spec: str, catalog_dir: Path | None = None, dataset: str | None = None) -> None:
    """The spec sound; ``imported``: the catalog in ``catalog_dir`` (when it is ingested) lists
    imported features (a catalog not ingested fails when it loads, saying so)."""
    if is_imported(spec):
        if catalog_dir is not None and is_ingested(catalog_dir) and not stored_entries(catalog_dir):
            fail(str(refusal(dataset or Path(catalog_dir).name)))
        return
    try:
        validate_specs(spec)
    except (EncoderError, ValueError, FileNotFoundError) as exc:
        fail(f"--encoder: {exc}")
