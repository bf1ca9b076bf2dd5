"""CLIP image and text towers from open_clip.

    x_img = normalize(f_v(preprocess(image)))      x_txt = normalize(f_t(tokenize(text)))

with f_v, f_t the image and text towers of any open_clip architecture
(``open_clip.list_models()``) and ``preprocess`` the architecture's/tag's own
evaluation transform (resize, centre crop, mean/std normalisation).

Weights, always explicit in the spec:

- ``clip:ARCH@/path/ckpt.{pt,bin,safetensors}``: a local checkpoint, loaded by
  open_clip with ``strict=True``; identity = sha256 of the file.
- ``clip:ARCH@TAG``: an open_clip pretrained tag (``open_clip.list_pretrained()``);
  identity = ``open_clip:ARCH/TAG``. It must be in the local cache when offline:
  with ``HF_HUB_OFFLINE=1`` a missing cache entry fails at once with a message
  that points at a local checkpoint, instead of open_clip's retries.
- ``clip:ARCH@random[:SEED]``: random initialisation with that seed, recorded as
  "random init" (for tests and speed measurements only).

Architectures whose text tower comes from Hugging Face (``hf_model_name`` in
the config) also need that model's config and tokenizer in the local HF cache.

``onnx_graph('image')`` gives the image tower for ONNX Runtime (:mod:`encoders.onnx_backend`);
texts run on torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from encoders.base import Encoder, EncoderError, checkpoint_sha256, require_file, seeded
from encoders.onnx_backend import OnnxGraph
from encoders.spec import EncoderSpec, EncoderSpecError
from encoders.text_budget import fit_texts

DEFAULT_ARCH = "ViT-B-32"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _tag_cached(cfg: dict[str, Any]) -> bool:
    """Whether open_clip would find the tag's weights without a download.

    Mirrors ``open_clip.pretrained.download_pretrained``: a 'file' entry, the HF
    hub file (or its .safetensors twin) in the HF cache, or the URL's basename in
    ``~/.cache/clip``.
    """
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    hf = cfg.get("hf_hub", "")
    if hf:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip's deps
            return False
        repo_id, filename = os.path.split(hf)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in list(names):
            if name.endswith((".bin", ".pth")):
                names.insert(0, name[:-4] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and Path("~/.cache/clip", os.path.basename(url)).expanduser().is_file()


class ImageTower(torch.nn.Module):
    """pixels -> CLIP image embeddings before normalisation: the graph ONNX exports."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class ClipEncoder(Encoder):
    """Frozen open_clip model; embeds images and texts into one ``embed_dim`` space."""

    family = "clip"
    supported_modalities = ("image", "text")

    @classmethod
    def check_spec(cls, spec: EncoderSpec) -> None:
        import open_clip  # heavy import: only when a CLIP spec is used

        arch = spec.arch or DEFAULT_ARCH
        if open_clip.get_model_config(arch) is None:
            import difflib

            close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5)
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: unknown open_clip architecture {arch!r}"
                + (f"; did you mean {close}?" if close else "; see open_clip.list_models()")
            )
        if spec.weights is None:
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: say which weights to use, e.g. "
                f"'clip:{arch}@/path/to/checkpoint.safetensors', 'clip:{arch}@<pretrained tag>' "
                f"or 'clip:{arch}@random' (random init, for tests)"
            )
        super().check_spec(spec)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import open_clip

        arch = spec.arch or DEFAULT_ARCH
        model_cfg = open_clip.get_model_config(arch)
        weights = spec.weights
        assert weights is not None  # check_spec

        kwargs: dict[str, Any] = dict(pretrained_image=False, pretrained_text=False, device="cpu")
        if weights.kind == "random":
            with seeded(weights.seed or 0):
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, **kwargs)
            self.weights = f"random-init:seed={weights.seed}"
            self.random_init = True
            self.source = f"open_clip {open_clip.__version__}, random init"
        elif weights.kind == "path":
            path = require_file(weights.value, f"encoder spec {str(spec)!r}")
            digest = checkpoint_sha256(path)  # hash first: a bad file fails before the slow build
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), **kwargs)
            except Exception as exc:
                raise EncoderError(
                    f"encoder spec {str(spec)!r}: could not load checkpoint {path} into open_clip {arch}: {exc}"
                ) from exc
            self.weights = f"sha256:{digest}"
            self.source = f"open_clip {open_clip.__version__}, checkpoint {path}"
        else:
            tag = weights.value
            cfg = open_clip.get_pretrained_cfg(arch, tag)
            if not cfg:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise EncoderSpecError(
                    f"encoder spec {str(spec)!r}: {tag!r} is neither a pretrained tag of {arch} "
                    f"(known tags: {tags or 'none'}) nor a checkpoint path "
                    "(paths contain '/' or end in .pt/.bin/.safetensors)"
                )
            if _offline() and not _tag_cached(cfg):
                raise EncoderError(
                    f"encoder spec {str(spec)!r}: weights for open_clip tag {arch}/{tag} are not in the local cache "
                    f"and HF_HUB_OFFLINE=1 forbids downloading them. Download the checkpoint on a connected "
                    f"machine (source: {cfg.get('hf_hub') or cfg.get('url')}) and pass its local path instead: "
                    f"'clip:{arch}@/path/to/open_clip_model.safetensors'"
                )
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, **kwargs)
            except Exception as exc:
                raise EncoderError(
                    f"encoder spec {str(spec)!r}: could not get weights for open_clip tag {arch}/{tag} ({exc}). "
                    f"Without network access, pass a local checkpoint: 'clip:{arch}@/path/to/checkpoint.safetensors'"
                ) from exc
            self.weights = f"open_clip:{arch}/{tag}"
            self.source = f"open_clip {open_clip.__version__}, pretrained tag {tag}"

        self.arch = arch
        self.model = model
        self._preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(model_cfg["embed_dim"])
        pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        self.preprocessing = {
            "image": {k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()},
            "text": {
                "tokenizer": type(self.tokenizer).__name__,
                "context_length": int(
                    getattr(self.tokenizer, "context_length", model_cfg["text_cfg"].get("context_length", 77))
                ),
            },
            "output": "l2-normalised fp32",
        }
        self.architecture = {"arch": arch, "model_cfg": model_cfg}
        self._freeze()

    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._preprocess

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._forward_context():
            out = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return self._finish(out)

    def onnx_graph(self, modality: str) -> OnnxGraph | None:
        if modality != "image":
            return None
        size = getattr(self.model.visual, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return OnnxGraph(ImageTower(self.model), (torch.zeros(2, 3, h, w),), ("pixels",))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        # cut long texts to what the context keeps before tokenizing (encoders.text_budget)
        context = int(self.preprocessing["text"]["context_length"])  # start and end tokens included
        encode = getattr(self.tokenizer, "encode", None)  # open_clip's BPE tokenizer has one, its HF wrapper not
        texts = fit_texts(texts, context - 2, (lambda t: len(encode(t))) if encode is not None else None)
        tokens = self.tokenizer(texts).to(self.device)
        with self._forward_context():
            out = self.model.encode_text(tokens)
        return self._finish(out)
