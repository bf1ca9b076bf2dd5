"""What a run's catalog must hold for the encoder and the split asked for, checked before any work.

- ``encoder="imported"`` (``--encoder imported``) reads the features the catalog imported at
  ingest (:mod:`pipeline.features.imported`): the stored catalog's ``catalog.json`` must list
  some, or, for a catalog about to be ingested, the importer must be ``mmrec`` and its folder
  must hold a ``<modality>_feat.npy``.
- ``split_kind="given"`` (``--split-kind given``) uses the split the catalog came with (an
  MMRec folder's ``x_label``, Amazon's train/val/test; ``splits/given.parquet``): the stored
  catalog must have it, or the importer must be one that keeps one (``Importer.given_split``).
  It is used as it is, so ``k_core`` does not apply.

Each refusal names the flag (and the flow parameter) and the catalog. Nothing here reads more
than ``catalog.json`` and a folder listing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.data.importers import IMPORTERS
from pipeline.data.splits import GIVEN
from pipeline.data.versions import current_splits_dir, meta_path
from pipeline.features.imported import folder_modalities, is_imported, refusal, stored_entries


class SourceError(ValueError):
    """The catalog lacks what the parameters ask of it."""


@dataclass(frozen=True)
class CatalogSource:
    """Where a run's catalog comes from: the stored one as it is (``stored``), or ``importer``
    with ``options`` about to (re-)ingest it."""

    dataset: str
    folder: Path  # the catalog folder
    stored: bool
    importer: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def _meta(self) -> dict[str, Any]:
        try:
            return json.loads(meta_path(self.folder).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def imported_modalities(self) -> list[str]:
        if self.stored:
            return list(stored_entries(self.folder))
        folder = self.options.get("folder")
        return folder_modalities(folder) if self.importer == "mmrec" and folder else []

    def no_features_reason(self) -> str:
        if self.stored:
            return "has no imported features"
        if self.importer == "mmrec":
            return f"is to be ingested from {self.options.get('folder')}, which holds no <modality>_feat.npy file"
        return f"is to be ingested by the {self.importer!r} importer, which imports no features"

    def has_given_split(self) -> bool:
        if not self.stored:
            return bool(getattr(IMPORTERS.get(self.importer or ""), "given_split", False))
        if GIVEN in (self._meta().get("given_splits") or []):
            return True
        try:
            return (current_splits_dir(self.folder) / f"{GIVEN}.parquet").exists()
        except (OSError, ValueError, KeyError):
            return False


def check_sources(source: CatalogSource, encoder_spec: str, split_kind: str, k_core: int | None) -> None:
    """Raise (a ``ValueError`` naming the flag and the catalog) when ``source`` cannot give the
    imported features or the given split the parameters ask for."""
    if is_imported(encoder_spec) and not source.imported_modalities():
        raise refusal(source.dataset, source.no_features_reason())
    if split_kind != GIVEN:
        return
    if k_core:
        raise SourceError(
            f"--k-core (k_core) {k_core}: does not apply to --split-kind (split_kind) given, the catalog's own "
            "split, used as it is; leave --k-core out, or use --split-kind random or temporal"
        )
    if not source.has_given_split():
        where = "the stored catalog" if source.stored else f"the {source.importer!r} importer"
        raise SourceError(
            f"--split-kind (split_kind) given: catalog {source.dataset!r} has no given split ({where} keeps none; "
            "only a source that comes with one has it: an MMRec folder's x_label, Amazon's train/val/test); "
            "use --split-kind random or temporal"
        )
