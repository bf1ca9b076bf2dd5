"""ONNX Runtime inference of a frozen encoder on CPU: exported once, cached, then run.

An encoder that can be exported says so: ``encoder.onnx_graph(modality)`` gives the torch
module that computes its embeddings before the final L2 normalisation (EfficientNet-Lite's
pooled trunk, CLIP's image tower, MiniLM's BERT with its mean pooling), an example input and
the input names; ``encoder.onnx_feed(modality, batch)`` turns a batch (preprocessed pixels,
or strings) into that graph's inputs, through the encoder's own preprocessing. The graph is
exported with the TorchScript exporter (``torch.onnx.export(dynamo=False)``: the
``torch.export`` one needs onnxscript, which befa does not install), batch (and sequence)
axes dynamic, to ``<cache>/<fingerprint>/<modality>-v<EXPORT_VERSION>.onnx`` under a
temporary name and renamed when complete, so a killed export leaves nothing a later run
could load. The fingerprint names the function, so one export serves every later run of the
same encoder; ``EXPORT_VERSION`` changes when befa's export itself does.

:class:`OnnxEmbedder` runs the file with onnxruntime's CPU provider and normalises its output
in fp32, as the torch path does (``Encoder._finish``). Whether to use it is decided in
``pipeline.features.backend`` (measured: at least 1.5x faster, cosine >= 0.9999 per item to
torch's features).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.atomic import atomic_path

EXPORT_VERSION = 1
OPSET = 17
OUTPUT_NAME = "embedding"


@dataclass(frozen=True)
class OnnxGraph:
    """What to export for one modality: ``module(*example)`` -> (B, dim) embeddings before normalisation."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    # every input's batch axis is dynamic; texts add their sequence axis here
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


class OnnxUnavailable(RuntimeError):
    """The ONNX backend cannot run here; the message is one line that says why."""


def torch_label() -> str:
    return f"torch {torch.__version__.split('+')[0]}"


def onnxruntime_version() -> str | None:
    """onnxruntime's version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def onnx_label(version: str) -> str:
    return f"onnxruntime {version}"


def onnx_path(cache_dir: str | Path, fingerprint: str, modality: str) -> Path:
    return Path(cache_dir) / fingerprint / f"{modality}-v{EXPORT_VERSION}.onnx"


@contextlib.contextmanager
def _export_mode() -> Iterator[None]:
    """nn.MultiheadAttention's fused inference kernel has no ONNX form: the plain path while exporting."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)


def export_onnx(encoder: Any, modality: str, path: str | Path) -> Path:
    """Export ``encoder``'s ``modality`` graph to ``path`` (atomically); raise OnnxUnavailable when it cannot."""
    graph = encoder.onnx_graph(modality)
    if graph is None:
        raise OnnxUnavailable(f"{encoder.name} has no ONNX export for {modality}")
    if importlib.util.find_spec("onnx") is None:
        raise OnnxUnavailable("the onnx package (needed to export) is not installed: pip install onnx==1.23.2")
    axes = {name: {0: "batch", **dict(graph.dynamic_axes.get(name, {}))} for name in graph.input_names}
    axes[OUTPUT_NAME] = {0: "batch"}
    path = Path(path)
    # the exporter puts the module back in the mode it found it in: a new wrapper is in training
    # mode, which would leave the frozen encoder's BatchNorm and dropout in training mode after
    module = graph.module.eval()
    try:
        with atomic_path(path) as tmp, _export_mode(), torch.no_grad():
            torch.onnx.export(
                module,
                graph.example,
                str(tmp),
                dynamo=False,
                input_names=list(graph.input_names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
    except OnnxUnavailable:
        raise
    except Exception as exc:  # an operator without an ONNX form, and the like
        raise OnnxUnavailable(f"{encoder.name}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        encoder.train(False)  # frozen: eval mode whatever the exporter did
    return path


class OnnxEmbedder:
    """``embedder(batch)`` -> (B, dim) float32 unit vectors from the exported graph, on CPU."""

    def __init__(self, encoder: Any, modality: str, path: str | Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxUnavailable("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # idle threads sleep instead of spinning: the decoding threads need those cycles (8% end to end here)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder, self.modality = encoder, modality
        self.label = onnx_label(str(ort.__version__))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged file, an opset this onnxruntime lacks
            raise OnnxUnavailable(f"onnxruntime cannot load {path} ({type(exc).__name__}: {exc})") from exc

    def __call__(self, batch: Any) -> torch.Tensor:
        feed = self.encoder.onnx_feed(self.modality, batch)
        (out,) = self.session.run([OUTPUT_NAME], feed)
        return F.normalize(torch.from_numpy(np.asarray(out, dtype=np.float32)), dim=-1)
