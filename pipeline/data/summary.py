"""What the data steps did, as typed records: the catalog ingested and the split made.

:class:`DatasetSummary` is the one description of a catalog's size that every report
shows (the pipeline report, the study, the flow's artifacts): one set of names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipeline.summary import StepSummary


class IngestSource(BaseModel):
    """Where a catalog's data came from: its ingest record (``catalog.json``'s ``ingest``,
    written by :func:`pipeline.data.ingest.ingest`), the importer's files split from its
    other options."""

    importer: str
    # option -> the file or folder read (a known dataset: ``root``, its folder under the datasets root)
    paths: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)  # the importer's other options, as given
    version: str | None = None  # the catalog version in use (CURRENT)


class DatasetSummary(BaseModel):
    """A catalog by name, content fingerprint and size (and, when known, where it came from)."""

    name: str
    fingerprint: str
    num_users: int
    num_items: int
    num_interactions: int
    source: IngestSource | None = None


class IngestSummary(StepSummary):
    """The ingest step: the catalog it wrote (or found), and what the ingest report said."""

    catalog_dir: str
    name: str
    fingerprint: str
    num_users: int
    num_items: int
    num_interactions: int
    ingested: bool = Field(description="False when the stored catalog was used as is")
    source: IngestSource | None = Field(None, description="the catalog's ingest record; None when it has none")
    issues: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(
        default_factory=list, description="the ingest report's warnings (removed splits, missing images, ...)"
    )

    @property
    def dataset(self) -> DatasetSummary:
        return DatasetSummary(
            name=self.name,
            fingerprint=self.fingerprint,
            num_users=self.num_users,
            num_items=self.num_items,
            num_interactions=self.num_interactions,
            source=self.source,
        )


class SplitSummary(StepSummary):
    """A stored split: where, which, and its train/valid/test counts."""

    path: str
    id: str
    kind: str
    seed: int | None
    k_core: int | None
    counts: dict[str, int]
