"""The one interface every frozen encoder implements.

An encoder turns PIL images and/or strings into L2-normalised float32 vectors
of a fixed dimension. It is frozen: eval mode, ``requires_grad=False`` on every
parameter, forward passes under ``torch.inference_mode``.

Its *fingerprint* names the exact function it computes, so features from
different weights never mix in the feature store. It hashes

- the architecture (family, arch name and the full model config),
- the weights identity: the sha256 of the checkpoint file, a pretrained tag, or
  ``random-init:seed=N``,
- the preprocessing (image transform, tokenizer, context length, pooling) and, for
  encoders that embed images, :data:`IMAGE_DECODING` (what every image goes through
  before the transform: its EXIF orientation applied, see :func:`upright`),

and reads ``<family>-<arch>[-random]-<12 hex>`` (lower-case, ``[a-z0-9-]``
only), e.g. ``clip-vit-b-32-3f2a9c0d1e4b``: short, readable and safe as a path
component. Device and precision (fp32 on CPU, bf16/fp16 autocast on CUDA) are
not part of it: they change results only at rounding level (cosine ~0.9999).

Two ways in:

- ``encode_images(list[PIL.Image])`` / ``encode_texts(list[str])``: convenience,
  returns CPU float32 tensors.
- ``image_transform`` (a picklable PIL -> tensor callable, run in decoding threads
  or DataLoader worker processes) + ``embed_pixels(batch)``: what batch extraction
  uses, so decoding overlaps with the forward pass.

An encoder that can run on ONNX Runtime (:mod:`encoders.onnx_backend`) gives its graph
per modality (``onnx_graph``) and the graph's inputs for a batch (``onnx_feed``); the
others return None and always run on torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import nn

from encoders.onnx_backend import OnnxGraph
from encoders.spec import EncoderSpec, EncoderSpecError
from storage.keys import ENCODED_MODALITIES, sha256_file

RANDOM_INIT_LABEL = "random init"
# What every image goes through before an encoder's own transform, part of the fingerprint of
# every encoder that embeds images: the EXIF orientation applied (:func:`upright`; extraction
# then makes it 8-bit RGB, ``pipeline.data.image_modes.to_rgb``). A phone photo stored sideways
# with Orientation=6 is embedded upright, as a viewer shows it. Changing this changes the
# fingerprints, so a store re-extracts its images instead of mixing the two definitions.
IMAGE_DECODING = "exif-orientation-applied"


def upright(image: Image.Image) -> Image.Image:
    """``image`` as a viewer shows it: its EXIF orientation (2-8: flips and quarter turns) applied
    to the pixels (a new image, orientation tag removed), else ``image`` itself."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation not in range(2, 9):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF (PIL raises several types): the pixels as stored
        return image


class EncoderError(ValueError):
    """An encoder that cannot be built from what the user gave: missing or mismatched checkpoint,
    weights not available offline. A ValueError, like a bad spec: callers report it as bad input."""


def slug(text: str) -> str:
    """Lower-case ``[a-z0-9-]`` form of a name, for fingerprints."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def make_fingerprint(readable: str, payload: dict[str, Any]) -> str:
    """``<slug(readable)>-<first 12 hex of sha256(canonical json(payload))>``."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return f"{slug(readable)[:48].strip('-')}-{digest[:12]}"


_CHECKSUMS: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, memoised per (real path, size, mtime) for this process.

    Hashing reads the whole file (about 2 s per GB here); the memo avoids paying
    it twice when the same checkpoint is opened again in one process.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _CHECKSUMS:
        _CHECKSUMS[key] = sha256_file(p)
    return _CHECKSUMS[key]


def require_file(path: str | os.PathLike, what: str) -> Path:
    """A checkpoint path that must exist, with an error that says so plainly."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EncoderError(f"{what}: checkpoint file not found: {p}")
    if not p.is_file():
        raise EncoderError(f"{what}: checkpoint path is not a file: {p}")
    return p


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for a block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, fp16 on older CUDA devices, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Encoder(nn.Module):
    """Base class of all frozen encoders.

    Subclasses set, in ``__init__``: ``self.modalities`` (subset of
    ``supported_modalities``), ``self.dim``, ``self.arch``, ``self.weights``
    (identity string), ``self.random_init``, ``self.preprocessing`` (dict),
    ``self.architecture`` (dict), ``self.source`` (where the code/weights come
    from), then call ``self._freeze()``; and implement ``embed_pixels`` and/or
    ``embed_texts``.
    """

    family: ClassVar[str]
    supported_modalities: ClassVar[tuple[str, ...]]

    @classmethod
    def check_spec(cls, spec: EncoderSpec) -> None:
        """Raise ``EncoderSpecError``/``EncoderError`` for a spec this family cannot build,
        without building anything (so a pipeline fails before minutes of other work).
        Subclasses extend it; ``__init__`` runs it first."""
        w = spec.weights
        if w is not None and w.kind == "path" and not Path(w.value).expanduser().exists():
            raise EncoderError(f"encoder spec {str(spec)!r}: checkpoint {Path(w.value).expanduser()} does not exist")

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.check_spec(spec)
        self.spec = spec
        self.modalities: tuple[str, ...] = self.supported_modalities
        self.dim: int = 0
        self.arch: str = spec.arch or ""
        self.weights: str = ""
        self.random_init: bool = False
        self.preprocessing: dict[str, Any] = {}
        self.architecture: dict[str, Any] = {}
        self.source: str = ""
        # None = autocast dtype chosen from the device; torch.float32 = never autocast.
        self.precision: torch.dtype | None = None

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.family}:{self.arch}" if self.arch else self.family

    @property
    def fingerprint(self) -> str:
        readable = f"{self.family}-{self.arch}" if self.arch else self.family
        if self.random_init:
            readable += "-random"
        payload = {
            "family": self.family,
            "architecture": self.architecture,
            "weights": self.weights,
            "preprocessing": self.preprocessing,
        }
        if "image" in self.supported_modalities:
            payload["image_decoding"] = IMAGE_DECODING
        return make_fingerprint(readable, payload)

    @property
    def weights_label(self) -> str:
        """Human-readable weights line for summaries ("weights: random init" when random)."""
        if self.random_init:
            return f"{RANDOM_INIT_LABEL} (seed {self.spec.weights.seed if self.spec.weights else 0})"
        return self.weights

    def info(self) -> dict[str, Any]:
        """What the feature store records about this encoder under its fingerprint."""
        return {
            "spec": str(self.spec),
            "name": self.name,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "modalities": list(self.modalities),
            "weights": self.weights,
            "weights_label": self.weights_label,
            "random_init": self.random_init,
            "preprocessing": self.preprocessing,
            **({"image_decoding": IMAGE_DECODING} if "image" in self.supported_modalities else {}),
            "architecture": self.architecture,
            "source": self.source,
        }

    # -- frozen -------------------------------------------------------------
    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Encoder":
        # A frozen encoder has no training mode: dropout and friends stay off.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def _forward_context(self) -> Iterator[None]:
        dtype = self.precision if self.precision is not None else autocast_dtype(self.device)
        with torch.inference_mode():
            if dtype is None or dtype == torch.float32:
                yield
            else:
                with torch.autocast(device_type=self.device.type, dtype=dtype):
                    yield

    @staticmethod
    def _finish(out: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: a bf16 norm is only accurate to ~1e-2.
        return F.normalize(out.float(), dim=-1)

    # -- images ---------------------------------------------------------------
    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        raise EncoderError(f"{self.name} does not embed images (modalities: {list(self.modalities)})")

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, dim) float32 unit vectors, on the encoder's device."""
        raise EncoderError(f"{self.name} does not embed images (modalities: {list(self.modalities)})")

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if "image" not in self.modalities:
            raise EncoderError(f"{self.name} does not embed images (modalities: {list(self.modalities)})")
        if len(images) == 0:
            return torch.empty(0, self.dim, dtype=torch.float32)
        tf = self.image_transform
        pixels = torch.stack([tf(upright(im)) for im in images]).to(self.device)
        return self.embed_pixels(pixels).cpu()

    # -- texts ----------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """list of strings -> (B, dim) float32 unit vectors, on the encoder's device."""
        raise EncoderError(f"{self.name} does not embed texts (modalities: {list(self.modalities)})")

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if "text" not in self.modalities:
            raise EncoderError(f"{self.name} does not embed texts (modalities: {list(self.modalities)})")
        if len(texts) == 0:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return self.embed_texts(list(texts)).cpu()

    # -- ONNX Runtime ---------------------------------------------------------
    def onnx_graph(self, modality: str) -> OnnxGraph | None:
        """The graph to export for ``modality`` (embeddings before normalisation), or None: torch only."""
        return None

    def onnx_feed(self, modality: str, batch: Any) -> dict[str, np.ndarray]:
        """The exported graph's inputs for a batch: preprocessed pixels as they are (texts: see subclasses)."""
        if modality != "image":
            raise EncoderError(f"{self.name} has no ONNX inputs for {modality}")
        return {"pixels": batch.detach().float().cpu().contiguous().numpy()}

    def set_channels_last(self, on: bool) -> None:
        """Run convolutions in channels-last memory format (conv nets; a no-op for the others)."""

    def default_batch_size(self, device: torch.device) -> int:
        """Batch size for ``device``: 32 on CPU (larger batches do not speed up CPU matmuls
        and delay the first part); on CUDA, scaled to the card's memory and the model's size."""
        if device.type != "cuda":
            return 32
        total = torch.cuda.get_device_properties(device).total_memory
        n_params = sum(p.numel() for p in self.parameters())
        base = 512 if total >= 40 * 2**30 else 256 if total >= 16 * 2**30 else 64
        if n_params > 500_000_000:  # ImageBind huge and friends
            base //= 4
        return base

    def extra_repr(self) -> str:
        return f"fingerprint={self.fingerprint}, dim={self.dim}, weights={self.weights_label}"


def check_modalities(family: str, requested: Sequence[str], supported: Sequence[str]) -> tuple[str, ...]:
    bad = [m for m in requested if m not in ENCODED_MODALITIES]
    if bad:
        raise EncoderSpecError(
            f"unknown modality {bad[0]!r} for an encoder: encoders embed {list(ENCODED_MODALITIES)} from raw content; "
            "other modalities (audio, video, ...) come as imported feature matrices (MMRec <name>_feat.npy)"
        )
    missing = [m for m in requested if m not in supported]
    if missing:
        raise EncoderSpecError(
            f"encoder family {family!r} does not embed {missing[0]!r} (it embeds {list(supported)}); "
            f"use a per-modality spec such as 'image=clip:ViT-B-32@/path/ckpt.safetensors,text=minilm'"
        )
    return tuple(requested)
