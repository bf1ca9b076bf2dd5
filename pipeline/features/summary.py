"""What an extraction did, and the one shape of "a modality's features".

- :class:`ModalitySummary` / :class:`ExtractSummary`: the working record of one extraction
  (per modality, then per run), with every item left without a feature and the reason
  (up to :data:`MAX_LISTED_FAILURES`), never dropped silently. Both backends (local and
  Ray) fill them.
- :class:`ModalityFeatures`: a modality's feature set as every other package sees it
  (encoder spec, fingerprint, weights, snapshot, size and what the extraction did), and
  :class:`FeaturesSummary`, the extract step's summary: the pipeline report, the study,
  the flow and training read these, never a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from pipeline.summary import StepSummary

MAX_LISTED_FAILURES = 10_000  # listing every failure of a broken image folder would not help anyone

NO_CONTENT_REASONS = {
    "image": "no image in the catalog (missing or rejected at ingest)",
    "text": "empty text",
}


@dataclass
class ModalitySummary:
    """What one modality's extraction did."""

    modality: str
    encoder: str  # spec
    fingerprint: str
    weights: str  # identity label; "random init (seed N)" for random weights
    random_init: bool
    dim: int
    items: int  # items of the catalog
    with_content: int  # items that have this modality in the catalog
    encoded: int = 0
    skipped: int = 0  # already in the store under this fingerprint and content hash
    failed: int = 0  # could not be read/decoded at extraction
    no_content: int = 0  # null in the catalog (e.g. image rejected at ingest)
    missing_items: list[dict[str, Any]] = field(default_factory=list)  # item_id, item_idx, kind, reason
    seconds: float = 0.0
    encode_seconds: float = 0.0
    throughput: float = 0.0  # encoded items per second of the encode loop
    parts_written: int = 0
    snapshot_id: str | None = None
    snapshot_rows: int = 0
    batch_size: int = 0
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    # the inference backend that encoded this run's items ("torch 2.14.1", "onnxruntime 1.31.0";
    # empty when nothing was encoded) and why it was chosen (pipeline.features.backend)
    backend: str = ""
    backend_reason: str = ""

    @property
    def failed_items(self) -> list[dict[str, Any]]:
        return [m for m in self.missing_items if m["kind"] == "failed"]

    def features(self) -> "ModalityFeatures":
        """This modality's feature set, as the other packages see it."""
        return ModalityFeatures(
            spec=self.encoder,
            fingerprint=self.fingerprint,
            snapshot=self.snapshot_id,
            dim=self.dim,
            weights=self.weights,
            random_init=bool(self.random_init),
            encoded=self.encoded,
            skipped=self.skipped,
            failed=self.failed,
            backend=self.backend or None,
        )

    def record_no_content(self, items: Any) -> None:
        """Count and list the catalog items (a frame with item_id, item_idx, ``<modality>_hash``)
        that have no content of this modality."""
        none = items[items[f"{self.modality}_hash"].isna()]
        self.no_content = len(none)
        reason = NO_CONTENT_REASONS.get(self.modality, f"no {self.modality}")
        self.missing_items += [
            {"item_id": i, "item_idx": int(x), "kind": "no_content", "reason": reason}
            for i, x in zip(none["item_id"].tolist()[:MAX_LISTED_FAILURES], none["item_idx"].tolist())
        ]

    def record_failure(self, item_id: str, item_idx: int, reason: str) -> None:
        """One item that could not be encoded now (unreadable, undecodable, changed since ingest)."""
        self.failed += 1
        if len(self.missing_items) < MAX_LISTED_FAILURES:
            self.missing_items.append(
                {"item_id": item_id, "item_idx": int(item_idx), "kind": "failed", "reason": reason}
            )


@dataclass
class ExtractSummary:
    """Per-modality results of an extraction (``extract_features`` or ``extract_features_ray``)."""

    dataset: str
    modalities: dict[str, ModalitySummary]
    seconds: float = 0.0

    @property
    def encoded(self) -> int:
        return sum(m.encoded for m in self.modalities.values())

    @property
    def skipped(self) -> int:
        return sum(m.skipped for m in self.modalities.values())

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.modalities.values())

    @property
    def failed_items(self) -> list[dict[str, Any]]:
        return [dict(m, modality=s.modality) for s in self.modalities.values() for m in s.failed_items]

    @property
    def snapshot_ids(self) -> dict[str, str | None]:
        return {m: s.snapshot_id for m, s in self.modalities.items()}

    @property
    def fingerprints(self) -> dict[str, str]:
        return {m: s.fingerprint for m, s in self.modalities.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "seconds": round(self.seconds, 3),
            "modalities": {m: asdict(s) for m, s in self.modalities.items()},
        }

    def lines(self) -> list[str]:
        out = [f"extract {self.dataset}: {self.seconds:.1f} s"]
        for s in self.modalities.values():
            out.append(
                f"  {s.modality}: encoder {s.encoder} ({s.fingerprint}, {s.dim}-d), weights: {s.weights}; "
                f"encoded {s.encoded}, skipped {s.skipped}, failed {s.failed}, no {s.modality} {s.no_content}; "
                f"{s.throughput:.1f} items/s on {s.device} ({s.precision}, batch {s.batch_size}, "
                f"{s.num_workers} workers); snapshot {s.snapshot_id} ({s.snapshot_rows} rows)"
            )
            if s.backend:
                out.append(f"    backend: {s.backend} ({s.backend_reason})")
            for m in s.failed_items[:5]:
                out.append(f"    failed: item {m['item_id']} (idx {m['item_idx']}): {m['reason']}")
            if s.failed > 5:
                out.append(f"    ... and {s.failed - 5} more failed items")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


class ModalityFeatures(BaseModel):
    """One modality's features: which encoder (spec, fingerprint, weights), which stored
    snapshot, the vector size, and what the extraction that made the snapshot current did."""

    spec: str
    fingerprint: str
    snapshot: str
    dim: int | None = None
    weights: str | None = Field(None, description="weights identity: checkpoint sha256, tag, or 'random init (seed N)'")
    random_init: bool = False
    encoded: int = 0
    skipped: int = 0
    failed: int = 0
    backend: str | None = Field(
        None, description="inference backend of this extraction's encoding ('torch 2.14.1', 'onnxruntime 1.31.0')"
    )

    @property
    def weights_label(self) -> str:
        """The weights as a report names them; random init always says so."""
        if self.random_init:
            # keep the encoder's own label ("random init (seed 0)") when it says so
            return self.weights if (self.weights or "").startswith("random init") else "random init"
        return self.weights or "unknown"


class FeaturesSummary(StepSummary):
    """The extract step: each modality's features, and where the encoding ran."""

    modalities: dict[str, ModalityFeatures] = Field(default_factory=dict)
    backend: str = "local"

    @classmethod
    def of(cls, result: ExtractSummary, backend: str = "local") -> "FeaturesSummary":
        return cls(modalities={m: s.features() for m, s in result.modalities.items()}, backend=backend)

    @property
    def fingerprints(self) -> dict[str, str]:
        return {m: f.fingerprint for m, f in self.modalities.items()}

    @property
    def snapshots(self) -> dict[str, str]:
        return {m: f.snapshot for m, f in self.modalities.items()}
