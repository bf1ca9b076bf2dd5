"""ImageBind vision and text towers, from the ``imagebind-unofficial`` package's model code.

    x_img = normalize(head_v(trunk_v(patchify(pad_to_2_frames(preprocess(image))))))
    x_txt = normalize(head_t(trunk_t(embed(bpe(text)) + pos; causal mask))[eos])

``preprocess`` = RGB, resize 224 (bicubic), centre crop 224, CLIP mean/std;
``bpe`` = the package's CLIP BPE tokenizer (``bpe/bpe_simple_vocab_16e6.txt.gz``),
77 tokens. The text postprocessor's logit scale is dropped by the final
normalisation, so both outputs are unit vectors in one ``out_embed_dim`` space.

Only the vision and text parts are built: the model class is instantiated with
0 blocks for audio, depth, thermal and IMU and those entries are then removed.
A checkpoint of the full model is filtered to the vision/text keys and loaded
strictly into what was built, memory-mapped (``torch.load(mmap=True,
weights_only=True)``) into a model built on the meta device and then
``load_state_dict(assign=True)``: the weights are never held twice.

Licence: ImageBind's code is CC-BY-NC-SA 4.0 and its weights are for
non-commercial use (the package metadata's "MIT" is wrong). The package is
installed with ``pip install --no-deps imagebind-unofficial==0.1.1``: its
declared audio/video dependencies are not needed here, and ``import imagebind``
itself fails (its ``__init__`` imports them and ``pkg_resources``), so the
package is registered without running its ``__init__`` (``_imagebind_model``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from encoders.base import Encoder, EncoderError, checkpoint_sha256, require_file, seeded
from encoders.spec import EncoderSpec, EncoderSpecError
from encoders.text_budget import fit_texts

BUILT = ("vision", "text")  # ImageBind's modality keys that this encoder builds
_OTHER = ("audio", "depth", "thermal", "imu")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
CONTEXT_LENGTH = 77
INSTALL_HINT = "pip install --no-deps imagebind-unofficial==0.1.1"


class ImageBindConfig(BaseModel):
    """Widths and depths of the two towers built (see ``imagebind_model.ImageBindModel``)."""

    model_config = ConfigDict(frozen=True)

    vision_embed_dim: int
    vision_num_blocks: int
    vision_num_heads: int
    text_embed_dim: int
    text_num_blocks: int
    text_num_heads: int
    out_embed_dim: int


IMAGEBIND_CONFIGS: dict[str, ImageBindConfig] = {
    # the released model (imagebind_huge.pth): 633 M vision + 354 M text parameters
    "huge": ImageBindConfig(
        vision_embed_dim=1280,
        vision_num_blocks=32,
        vision_num_heads=16,
        text_embed_dim=1024,
        text_num_blocks=24,
        text_num_heads=16,
        out_embed_dim=1024,
    ),
    # same classes, toy sizes: runs the real code path in tests in well under a second
    "tiny": ImageBindConfig(
        vision_embed_dim=32,
        vision_num_blocks=2,
        vision_num_heads=2,
        text_embed_dim=32,
        text_num_blocks=2,
        text_num_heads=2,
        out_embed_dim=16,
    ),
}


def _package_dir() -> Path:
    loaded = sys.modules.get("imagebind")
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(list(loaded.__path__)[0])
    spec = importlib.util.find_spec("imagebind")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"ImageBind model code is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _imagebind_model() -> types.ModuleType:
    """``imagebind.models.imagebind_model``, imported under a bare parent package.

    The package ``__init__`` imports torchaudio/pytorchvideo/pkg_resources, none of
    which the vision/text model code needs; registering a module object whose
    ``__path__`` is the package folder lets the submodules import normally.
    """
    name = "imagebind.models.imagebind_model"
    if name in sys.modules:
        return sys.modules[name]
    if "imagebind" not in sys.modules:
        folder = _package_dir()
        pkg = types.ModuleType("imagebind")
        pkg.__path__ = [str(folder)]
        pkg.__file__ = str(folder / "__init__.py")
        pkg.__spec__ = importlib.machinery.ModuleSpec("imagebind", None, is_package=True)
        pkg.__spec__.submodule_search_locations = [str(folder)]
        sys.modules["imagebind"] = pkg
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EncoderError(f"cannot import ImageBind model code ({exc}); install it with: {INSTALL_HINT}") from exc


class _MetaInit(TorchFunctionMode):
    """Create every new tensor on the meta device (no memory, no random init), except
    ``torch.linspace``: the model reads drop-path rates from it with ``.item()``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _device_constructors() and func is not torch.linspace and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_imagebind(cfg: ImageBindConfig, on_meta: bool = False) -> torch.nn.Module:
    """An ``ImageBindModel`` with only the vision and text towers."""
    ib = _imagebind_model()
    kwargs: dict[str, Any] = cfg.model_dump()
    for other in _OTHER:
        # 0 blocks and width 8: the other modalities cost nothing before they are removed
        kwargs.update({f"{other}_embed_dim": 8, f"{other}_num_blocks": 0, f"{other}_num_heads": 1})
    if on_meta:
        with _MetaInit():
            model = ib.ImageBindModel(**kwargs)
    else:
        model = ib.ImageBindModel(**kwargs)
    for part in (
        model.modality_preprocessors,
        model.modality_trunks,
        model.modality_heads,
        model.modality_postprocessors,
    ):
        for key in list(part.keys()):
            if key not in BUILT:
                del part[key]
    return model


def load_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a checkpoint file, memory-mapped where the format allows."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))  # safetensors maps the file itself
    else:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # legacy (non-zip) torch.save format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise EncoderError(f"{path}: not a state dict checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def filter_built(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the keys of the towers that are built (``modality_*.{vision,text}.*``)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0].startswith("modality_") and parts[1] in BUILT:
            out[key] = value
    return out


class ImageBindEncoder(Encoder):
    """Frozen ImageBind vision + text towers (``imagebind:huge@/path/imagebind_huge.pth``)."""

    family = "imagebind"
    supported_modalities = ("image", "text")

    @classmethod
    def check_spec(cls, spec: EncoderSpec) -> None:
        arch = spec.arch or "huge"
        if arch not in IMAGEBIND_CONFIGS:
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: unknown ImageBind config {arch!r}; known: {sorted(IMAGEBIND_CONFIGS)}"
            )
        weights = spec.weights
        if weights is None or weights.kind == "tag":
            got = "no weights" if weights is None else f"tag {weights.value!r}"
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: ImageBind needs a local checkpoint ({got} given): download "
                f"https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth (non-commercial licence) and pass "
                f"'imagebind:{arch}@/path/to/imagebind_huge.pth', or 'imagebind:{arch}@random' for random init"
            )
        super().check_spec(spec)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        arch = spec.arch or "huge"
        cfg = IMAGEBIND_CONFIGS[arch]
        weights = spec.weights
        assert weights is not None  # check_spec
        if weights.kind == "random":
            with seeded(weights.seed or 0):
                model = build_imagebind(cfg)
            self.weights = f"random-init:seed={weights.seed}"
            self.random_init = True
            self.source = "imagebind-unofficial 0.1.1 model code, random init"
        else:
            path = require_file(weights.value, f"encoder spec {str(spec)!r}")
            digest = checkpoint_sha256(path)
            model = build_imagebind(cfg, on_meta=True)
            self._load(model, path)
            self.weights = f"sha256:{digest}"
            self.source = f"imagebind-unofficial 0.1.1 model code, checkpoint {path}"

        self.arch = arch
        self.model = model
        self.dim = cfg.out_embed_dim
        self._bpe_path = _package_dir() / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
        self._tokenizer = None
        self.preprocessing = {
            "image": {
                "convert": "RGB",
                "resize": IMAGE_SIZE,
                "interpolation": "bicubic",
                "center_crop": IMAGE_SIZE,
                "mean": list(CLIP_MEAN),
                "std": list(CLIP_STD),
            },
            "text": {
                "tokenizer": "imagebind SimpleTokenizer (bpe_simple_vocab_16e6)",
                "context_length": CONTEXT_LENGTH,
            },
            "output": "l2-normalised fp32 (logit scale dropped)",
        }
        self.architecture = {"model": "ImageBindModel", "towers": list(BUILT), "config": arch, **cfg.model_dump()}
        self._freeze()

    @staticmethod
    def _load(model: torch.nn.Module, path: Path) -> None:
        state = filter_built(load_checkpoint_state(path))
        if not state:
            raise EncoderError(
                f"{path}: no ImageBind vision/text keys (modality_*.vision.*, modality_*.text.*) in checkpoint"
            )
        mask_key = "modality_preprocessors.text.mask"
        if mask_key not in state:
            # the causal mask is a constant, not a weight: rebuild it if a checkpoint omits it
            state[mask_key] = torch.full((CONTEXT_LENGTH, CONTEXT_LENGTH), float("-inf")).triu_(1)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise EncoderError(f"{path}: checkpoint does not match the ImageBind towers built: {exc}") from exc
        left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if left:
            raise EncoderError(f"{path}: checkpoint left tensors uninitialised: {left[:5]}")

    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from torchvision import transforms as T

        return T.Compose(
            [
                _ToRGB(),
                T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(IMAGE_SIZE),
                T.ToTensor(),
                T.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
            ]
        )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            _imagebind_model()  # registers the parent package first
            tok_cls = importlib.import_module("imagebind.models.multimodal_preprocessors").SimpleTokenizer
            self._tokenizer = tok_cls(bpe_path=str(self._bpe_path), context_length=CONTEXT_LENGTH)
        return self._tokenizer

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._forward_context():
            out = self.model({"vision": pixels.to(self.device, non_blocking=True)})["vision"]
        return self._finish(out)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        # cut long texts to what the context keeps before tokenizing (encoders.text_budget)
        tokens = self.tokenizer(fit_texts(texts, CONTEXT_LENGTH - 2, lambda t: len(self.tokenizer.encode(t))))
        if tokens.ndim == 1:  # the tokenizer squeezes a batch of one
            tokens = tokens.unsqueeze(0)
        with self._forward_context():
            out = self.model({"text": tokens.to(self.device)})["text"]
        return self._finish(out)


class _ToRGB:
    """Picklable RGB conversion (runs in DataLoader workers)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"
