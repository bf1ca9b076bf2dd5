"""The encoder registry (family name -> class) and the factories that read spec strings."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from encoders.base import Encoder, check_modalities
from encoders.clip import ClipEncoder
from encoders.effnet import EffNetEncoder
from encoders.imagebind import ImageBindEncoder
from encoders.minilm import MiniLMEncoder
from encoders.spec import EncoderSpec, EncoderSpecError, is_per_modality, parse_modality_specs, parse_spec
from storage.keys import ENCODED_MODALITIES

ENCODERS: dict[str, type[Encoder]] = {
    "clip": ClipEncoder,
    "effnet": EffNetEncoder,
    "imagebind": ImageBindEncoder,
    "minilm": MiniLMEncoder,
}


def _to_device(encoder: Encoder, device: str | torch.device | None) -> Encoder:
    return encoder.to(torch.device(device)) if device is not None else encoder


def create_encoder(spec: str | EncoderSpec, device: str | torch.device | None = None) -> Encoder:
    """Build one frozen encoder from a spec such as ``clip:ViT-B-32@random`` or ``minilm``."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    cls = ENCODERS.get(parsed.family)
    if cls is None:
        raise EncoderSpecError(
            f"unknown encoder {parsed.family!r} in spec {str(spec)!r}; known encoders: {sorted(ENCODERS)}"
        )
    return _to_device(cls(parsed), device)


def resolve_specs(
    spec: str | EncoderSpec | Mapping[str, str | EncoderSpec], modalities: Sequence[str] | None = None
) -> dict[str, EncoderSpec]:
    """``{modality: EncoderSpec}`` for a single spec (every modality its family embeds,
    or those asked for) or a per-modality spec (``image=...,text=...``)."""
    if isinstance(spec, Mapping):
        mapping = {m: parse_spec(s) if isinstance(s, str) else s for m, s in spec.items()}
    elif isinstance(spec, str) and is_per_modality(spec):
        mapping = parse_modality_specs(spec)
    else:
        parsed = parse_spec(spec) if isinstance(spec, str) else spec
        cls = ENCODERS.get(parsed.family)
        if cls is None:
            raise EncoderSpecError(
                f"unknown encoder {parsed.family!r} in spec {str(spec)!r}; known encoders: {sorted(ENCODERS)}"
            )
        wanted = list(modalities) if modalities is not None else list(cls.supported_modalities)
        check_modalities(parsed.family, wanted, cls.supported_modalities)
        return {m: parsed for m in wanted}
    for m, s in mapping.items():
        cls = ENCODERS.get(s.family)
        if cls is None:
            raise EncoderSpecError(f"unknown encoder {s.family!r} for {m}; known encoders: {sorted(ENCODERS)}")
        check_modalities(s.family, [m], cls.supported_modalities)
    if modalities is not None:
        missing = [m for m in modalities if m not in mapping]
        if missing:
            raise EncoderSpecError(f"no encoder given for modality {missing[0]!r} in spec {spec!r}")
        mapping = {m: mapping[m] for m in modalities}
    return {m: mapping[m] for m in ENCODED_MODALITIES if m in mapping}


def validate_specs(
    spec: str | EncoderSpec | Mapping[str, str | EncoderSpec], modalities: Sequence[str] | None = None
) -> dict[str, EncoderSpec]:
    """``resolve_specs`` plus each family's ``check_spec``: every error a build would raise
    about the spec itself (unknown architecture, missing weights, a checkpoint that does not
    exist), without loading any model."""
    specs = resolve_specs(spec, modalities)
    for s in specs.values():
        ENCODERS[s.family].check_spec(s)
    return specs


def create_encoders(
    spec: str | EncoderSpec | Mapping[str, str | EncoderSpec],
    modalities: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Encoder]:
    """``{modality: Encoder}``; modalities that share a spec share one encoder instance."""
    specs = resolve_specs(spec, modalities)
    built: dict[str, Encoder] = {}
    out: dict[str, Encoder] = {}
    for modality, s in specs.items():
        key = str(s)
        if key not in built:
            built[key] = create_encoder(s, device)
        out[modality] = built[key]
    return out
