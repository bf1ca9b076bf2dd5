"""What every importer returns, and the small interface they share.

An importer turns one source format into the canonical :class:`~pipeline.data.catalog.Catalog`
plus an :class:`~pipeline.data.catalog.IngestReport`. Some sources also carry things that are
not part of the catalog proper:

- a *given split* (MMRec ``x_label``, Amazon train/val/test json) kept as a named split;
- *ready-made features* (MMRec ``<modality>_feat.npy``: image, text, audio, video, ...) that
  go into the feature store instead of being encoded (a modality no encoder embeds, such as
  audio, can only come this way);
- *rejects*: items whose image (or text) could not be used; they stay in the catalog
  with that modality null, and the list is written next to the catalog.

Importers never write anything (but the image cache, when ``--fetch-images`` asks them to
fill it): :func:`pipeline.data.ingest.ingest` does the writing, so an
importer can be run and inspected in memory (tests do).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pipeline.data.catalog import Catalog, IngestReport, extra_hash_columns

REJECT_COLUMNS = ["item_id", "modality", "file", "row", "source", "problem"]


class ImporterOptions(BaseModel):
    """Base of every importer's options: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ImportedFeatures:
    """A ready-made feature matrix (row i = item_idx i) read from a file."""

    modality: str
    matrix: np.ndarray  # (I, D) float32
    source: Path
    sha256: str  # of the source file

    @property
    def fingerprint(self) -> str:
        return f"mmrec-npy-{self.modality}-{self.sha256[:12]}"


@dataclass
class ImportResult:
    catalog: Catalog
    report: IngestReport
    # split name -> DataFrame(user_idx, item_idx, label in {0, 1, 2})
    given_splits: dict[str, pd.DataFrame] = field(default_factory=dict)
    features: dict[str, ImportedFeatures] = field(default_factory=dict)
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS))


class Importer(ABC):
    """One source format. ``dataset`` names a known dataset folder (see
    :mod:`pipeline.data.datasets`) when the importer reads one; ``None`` when the user gives
    the paths in the options. ``given_split``: every catalog it makes has the split ``given``
    (``--split-kind given`` is checked against it before an ingest)."""

    name: ClassVar[str]
    dataset: ClassVar[str | None] = None
    given_split: ClassVar[bool] = False  # the source comes with a train/valid/test split, kept as ``given``
    Options: ClassVar[type[ImporterOptions]] = ImporterOptions

    def options(self, **options: Any) -> ImporterOptions:
        return self.Options(**options)

    @abstractmethod
    def run(self, options: ImporterOptions) -> ImportResult:
        """Read, validate and build the catalog (no writes)."""

    def __call__(self, **options: Any) -> ImportResult:
        return self.run(self.options(**options))


def count_catalog(report: IngestReport, catalog: Catalog) -> None:
    """The catalog's own counts, as the report's ``counts_out``."""
    items = catalog.items
    # Items nobody interacted with stay in the catalog (cold items: ranked, never trained on).
    cold = catalog.num_items - int(catalog.interactions["item_idx"].nunique())
    report.counts_out.update(
        items=catalog.num_items,
        items_with_image=int(items["image_hash"].notna().sum()),
        items_with_text=int(items["text_hash"].notna().sum()),
        **{f"items_with_{c.removesuffix('_hash')}": int(items[c].notna().sum()) for c in extra_hash_columns(items)},
        items_without_interactions=cold,
        users=catalog.num_users,
        interactions=len(catalog.interactions),
    )
    if cold:
        report.notes.append(
            f"{cold} of {catalog.num_items} items ({cold / max(catalog.num_items, 1):.0%}) have no interaction: "
            "they are kept (ranked as cold items, never seen in training)"
        )
