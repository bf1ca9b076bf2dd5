"""Which inference backend encodes a modality: torch, or ONNX Runtime where it was measured faster.

``befa extract --backend`` and ``befa run --extract-backend`` (``DataParams.extract_backend``):

- ``torch``: the encoder's own forward pass.
- ``onnx``: ONNX Runtime (CPU) for every encoder and modality that exports
  (:mod:`encoders.onnx_backend`: EfficientNet-Lite, CLIP's image tower, MiniLM), exported once
  per fingerprint into ``$BEFA_HOME/onnx``. The first batch runs on both backends and every
  item's cosine to torch's features must reach :data:`MIN_COSINE`; if not, torch, with one line.
- ``auto`` (the default of ``befa extract`` and ``befa run``): the measured rule. The first
  time an encoder and modality meet this machine (CPU model, threads, torch and onnxruntime
  versions) with at least :data:`AUTO_MIN_ITEMS` items to encode, the first batch runs on both
  backends, twice each, alternating (torch, ONNX, torch, ONNX); ONNX Runtime is chosen when it
  ran at least :data:`SPEEDUP` times faster than torch in both back-to-back pairs and every
  item's cosine is at least :data:`MIN_COSINE`. The verdict is recorded (:class:`BackendTrial`, JSON next to the export)
  and reused by every later run on the same machine; an export that lost is deleted. With
  fewer items and no record, torch (a trial would cost more than it saves).

Anything that keeps ONNX Runtime from running (onnxruntime or onnx not installed, no export
for the encoder, a CUDA device) falls back to torch with one line saying so where ONNX was
asked for or would have been measured. The feature fingerprint is the same on both backends:
they compute the same function to the tolerance above, which is what a fingerprint names
(as it already ignores device and precision). The store records the backend of every part.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from encoders.base import Encoder
from encoders.onnx_backend import (
    EXPORT_VERSION,
    OnnxEmbedder,
    OnnxUnavailable,
    export_onnx,
    onnx_path,
    onnxruntime_version,
    torch_label,
)
from storage.atomic import write_text

Backend = Literal["auto", "torch", "onnx"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")
BACKEND_HELP = (
    "inference backend: auto (ONNX Runtime where measured >= 1.5x faster than torch on this machine "
    "with the same features, else torch; measured once and recorded), torch, or onnx"
)
SPEEDUP = 1.5
MIN_COSINE = 0.9999
AUTO_MIN_ITEMS = 256


class BackendChoice(BaseModel):
    """What encoded a modality in one extraction, and why."""

    requested: str
    backend: str  # "torch 2.14.1" or "onnxruntime 1.31.0"
    reason: str


class BackendTrial(BaseModel):
    """One measurement of ONNX Runtime against torch on the first batch (the ``auto`` rule's record)."""

    fingerprint: str
    modality: str
    chosen: Literal["torch", "onnx"]
    speedup: float  # torch's seconds per batch / ONNX Runtime's, the smaller of the two pairs
    min_cosine: float
    torch_seconds: float
    onnx_seconds: float
    batch: int
    threads: int
    machine: str
    measured: str


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(threads: int) -> tuple[str, str]:
    """(a short key, its description): what a recorded verdict holds for."""
    desc = (
        f"{_cpu_model()}, {threads} threads, {torch_label()}, onnxruntime {onnxruntime_version()}, "
        f"export v{EXPORT_VERSION}"
    )
    return hashlib.sha256(desc.encode()).hexdigest()[:12], desc


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).min())


def _timed(fn: Callable[[Any], torch.Tensor], batch: Any) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn(batch).cpu()
    return out, time.perf_counter() - t0


class Embedder:
    """A modality's embedding function for one extraction; its backend is settled on the first batch.

    ``embedder(batch)`` -> (B, dim) unit vectors; ``embedder.label`` names the backend (what the
    store records), ``embedder.choice`` says why (None before the first batch)."""

    def __init__(
        self,
        encoder: Encoder,
        modality: str,
        requested: str,
        *,
        device: torch.device,
        onnx_dir: str | Path | None,
        threads: int,
        items: int,
        note: Callable[[str], None],
    ):
        if requested not in BACKENDS:
            raise ValueError(f"backend {requested!r}: choose one of {', '.join(BACKENDS)}")
        if requested != "torch" and onnx_dir is None:
            raise ValueError(f"backend {requested!r} needs onnx_dir (the befa home's onnx folder)")
        self.encoder, self.modality, self.requested = encoder, modality, requested
        self.device, self.threads, self.items, self.note = device, max(1, int(threads)), items, note
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self.torch_fn = encoder.embed_pixels if modality == "image" else encoder.embed_texts
        self.choice: BackendChoice | None = None
        self._fn: Callable[[Any], torch.Tensor] | None = None

    @property
    def label(self) -> str:
        return self.choice.backend if self.choice is not None else torch_label()

    def __call__(self, batch: Any) -> torch.Tensor:
        if self._fn is None:
            return self._first(batch)
        return self._fn(batch)

    # -- the first batch ---------------------------------------------------------------
    def _torch(self, reason: str, batch: Any, say: bool = False) -> torch.Tensor:
        if say:  # a missing onnxruntime concerns every modality: one line, the same for each
            where = "" if reason.startswith("onnxruntime is not installed") else f"{self.modality}: "
            self.note(f"{where}{reason}; encoding with {torch_label()}")
        self.choice = BackendChoice(requested=self.requested, backend=torch_label(), reason=reason)
        self._fn = self.torch_fn
        return self.torch_fn(batch)

    def _onnx(self, embedder: OnnxEmbedder, reason: str) -> None:
        self.choice = BackendChoice(requested=self.requested, backend=embedder.label, reason=reason)
        self._fn = embedder

    def _blocked(self) -> tuple[str, bool] | None:
        """(why ONNX Runtime cannot run, whether to say so), or None when it can be tried."""
        if self.requested == "torch":
            return "asked for", False
        if self.device.type != "cpu":
            return f"ONNX Runtime runs on CPU here, the device is {self.device}", self.requested == "onnx"
        if self.encoder.onnx_graph(self.modality) is None:
            return f"{self.encoder.name} has no ONNX export for {self.modality}", self.requested == "onnx"
        if onnxruntime_version() is None:
            return "onnxruntime is not installed (pip install onnxruntime==1.31.0 for the ONNX backend)", True
        return None

    def _first(self, batch: Any) -> torch.Tensor:
        blocked = self._blocked()
        if blocked is not None:
            return self._torch(blocked[0], batch, say=blocked[1])
        trial = None
        if self.requested == "auto":
            trial = self._recorded()
            if trial is None and self.items < AUTO_MIN_ITEMS:
                return self._torch(f"auto: no measurement here yet, {self.items} items < {AUTO_MIN_ITEMS}", batch)
            if trial is not None and trial.chosen == "torch":
                return self._torch(_verdict("auto, recorded", trial), batch)
        try:
            embedder = self._session()
        except OnnxUnavailable as exc:
            return self._torch(str(exc), batch, say=True)
        if trial is not None:
            self._onnx(embedder, _verdict("auto, recorded", trial))
            return embedder(batch)
        if self.requested == "onnx":
            return self._checked(embedder, batch)
        return self._trial(embedder, batch)

    def _session(self) -> OnnxEmbedder:
        path = onnx_path(self.onnx_dir, self.encoder.fingerprint, self.modality)
        if not path.is_file():
            export_onnx(self.encoder, self.modality, path)
        return OnnxEmbedder(self.encoder, self.modality, path, self.threads)

    def _checked(self, embedder: OnnxEmbedder, batch: Any) -> torch.Tensor:
        want, got = self.torch_fn(batch).cpu(), embedder(batch)
        cos = _min_cosine(want, got)
        if cos < MIN_COSINE:
            return self._torch(f"ONNX Runtime's features differ from torch's (min cosine {cos:.6f})", batch, say=True)
        self._onnx(embedder, f"asked for; min cosine to torch {cos:.6f} on the first batch")
        return got

    def _trial(self, embedder: OnnxEmbedder, batch: Any) -> torch.Tensor:
        want, t1 = _timed(self.torch_fn, batch)
        got, o1 = _timed(embedder, batch)
        _, t2 = _timed(self.torch_fn, batch)
        _, o2 = _timed(embedder, batch)
        key, desc = machine_key(self.threads)
        trial = BackendTrial(
            fingerprint=self.encoder.fingerprint,
            modality=self.modality,
            chosen="torch",
            # each pair ran back to back, under the same load: the verdict takes the worse of the two
            speedup=min(t1 / max(o1, 1e-9), t2 / max(o2, 1e-9)),
            min_cosine=_min_cosine(want, got),
            torch_seconds=min(t1, t2),
            onnx_seconds=min(o1, o2),
            batch=len(batch),
            threads=self.threads,
            machine=desc,
            measured=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if trial.speedup >= SPEEDUP and trial.min_cosine >= MIN_COSINE:
            trial = trial.model_copy(update={"chosen": "onnx"})
        write_text(self._record_path(key), trial.model_dump_json(indent=2) + "\n")
        self.note(f"{self.modality}: {_verdict('auto, measured', trial)}")
        if trial.chosen == "onnx":
            self._onnx(embedder, _verdict("auto, measured", trial))
            return got
        onnx_path(self.onnx_dir, self.encoder.fingerprint, self.modality).unlink(missing_ok=True)
        self.choice = BackendChoice(requested="auto", backend=torch_label(), reason=_verdict("auto, measured", trial))
        self._fn = self.torch_fn
        return want

    def _record_path(self, key: str) -> Path:
        return self.onnx_dir / self.encoder.fingerprint / f"{self.modality}-choice-{key}.json"

    def _recorded(self) -> BackendTrial | None:
        path = self._record_path(machine_key(self.threads)[0])
        try:
            return BackendTrial.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None  # none yet, or damaged: measure again


def _verdict(how: str, trial: BackendTrial) -> str:
    return (
        f"{how}: ONNX Runtime {trial.speedup:.2f}x torch's speed (rule >= {SPEEDUP}x), min cosine "
        f"{trial.min_cosine:.6f} (rule >= {MIN_COSINE}) on a batch of {trial.batch} -> {trial.chosen}"
    )
