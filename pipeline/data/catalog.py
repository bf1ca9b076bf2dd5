"""The canonical catalog every importer produces and every later stage reads.

A catalog is two tables, stored as Parquet in a version folder under
``$BEFA_HOME/catalogs/<name>/`` (``versions/<id>/``, named by ``CURRENT``: see
:mod:`pipeline.data.versions`; ``settings.catalog_dir(name)`` is the handle, and
:meth:`Catalog.load` resolves it and checks the files against ``catalog.json``):

items (one row per item, ``item_idx`` = 0..I-1 is the row order everywhere:
feature matrices, graphs and score columns are aligned to it)

    item_id     string   the catalog's own id (movie id, ASIN, SKU)
    item_idx    int64    dense 0-based index
    title       string
    text        string   the exact string a text encoder embeds ("" if none)
    image       string   local path, URI or http(s) URL (read from the image cache) of the image, null if none/rejected
    text_hash   string   sha256 of ``text`` (null when text is empty)
    image_hash  string   sha256 of the image bytes (null when no valid image)
    <m>_hash    string   one more per modality imported as a feature matrix (MMRec
                         ``audio_feat.npy`` -> ``audio_hash``: sha256 of the item's row), any
                         name :func:`storage.keys.check_modality` accepts

interactions (one row per user-item event)

    user_id     string
    item_id     string
    user_idx    int64    dense 0-based index
    item_idx    int64
    rating      float32  rating or weight (1.0 for implicit data)
    timestamp   int64    unix seconds (0 when unknown)

Content hashes key the feature store: an item whose text or image changes gets
a new hash and is re-encoded; everything else is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.versions import CURRENT, META, VERSIONS, current_version, splits_dir, write_version
from storage.atomic import write_json, write_parquet, write_text
from storage.faults import pause_point
from storage.keys import ENCODED_MODALITIES, is_modality, modality_order, sha256_bytes, text_hash

ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("item_idx", pa.int64()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("image", pa.string()),
        ("text_hash", pa.string()),
        ("image_hash", pa.string()),
    ]
)


def extra_hash_columns(items: pd.DataFrame) -> list[str]:
    """The ``<m>_hash`` columns of the modalities beyond image and text (imported feature
    matrices: ``audio_hash``, ``video_hash``), in modality order."""
    mods = [c.removesuffix("_hash") for c in items.columns if isinstance(c, str) and c.endswith("_hash")]
    extra = [m for m in mods if is_modality(m) and m not in ENCODED_MODALITIES]
    return [f"{m}_hash" for m in modality_order(extra)]


def item_schema(items: pd.DataFrame) -> pa.Schema:
    """:data:`ITEM_SCHEMA` plus one string column per extra modality's hash."""
    return pa.schema(list(ITEM_SCHEMA) + [(c, pa.string()) for c in extra_hash_columns(items)])


INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("user_idx", pa.int64()),
        ("item_idx", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
)

# images (or texts) an importer could not use; the item stays, without that modality
REJECTS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("modality", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("source", pa.string()),
        ("problem", pa.string()),
    ]
)


# Text tables with a header line: data row N is line N + 1 of the file.
_HEADED_TEXT = (".csv", ".tsv", ".tab", ".inter")


def row_location(file: str | Path | None, row: int, short: bool = False) -> str:
    """Where data row ``row`` (1-based, header excluded) is, in words a user can find:
    ``data row 4 (line 5)`` for a CSV/TSV with a header (``line 5`` when ``short``),
    ``data row 4`` for Parquet, ``row 4`` for other files (no header: row 4 is line 4)."""
    name = str(file).lower() if file is not None else ""
    if name.endswith(_HEADED_TEXT):
        return f"line {row + 1}" if short else f"data row {row} (line {row + 1})"
    return f"data row {row}" if name.endswith((".parquet", ".pq")) else f"row {row}"


class CatalogError(ValueError):
    """Bad input, with the file, the row (1-based, header excluded) and the problem."""

    def __init__(self, file: str | Path | None, problem: str, row: int | None = None):
        self.file = str(file) if file is not None else None
        self.row = row
        self.problem = problem
        where = self.file or "<input>"
        if row is not None:
            where += f", {row_location(file, row)}"
        super().__init__(f"{where}: {problem}")


@dataclass
class IngestReport:
    """What an import read, kept, folded and rejected, and why. Nothing is dropped silently."""

    dataset: str
    sources: dict[str, str] = field(default_factory=dict)
    counts_in: dict[str, int] = field(default_factory=dict)
    counts_out: dict[str, int] = field(default_factory=dict)
    # each entry: {"file", "row", "item_id"/"user_id", "problem", "action"}
    issues: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # what the user must read now (printed by `befa ingest`): removed splits, id hints, ...
    warnings: list[str] = field(default_factory=list)

    def add(
        self, problem: str, action: str, file: str | Path | None = None, row: int | None = None, **ids: Any
    ) -> None:
        self.issues.append(
            {"file": str(file) if file else None, "row": row, "problem": problem, "action": action, **ids}
        )

    def summary_by_problem(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for issue in self.issues:
            key = f"{issue['problem']} -> {issue['action']}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "sources": self.sources,
            "counts_in": self.counts_in,
            "counts_out": self.counts_out,
            "issues_by_kind": self.summary_by_problem(),
            "issues": self.issues,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def to_markdown(self, max_rows: int = 50) -> str:
        lines = [f"# Ingest report: {self.dataset}", ""]
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- {w}" for w in self.warnings] + [""]
        if self.sources:
            lines += ["## Sources", ""] + [f"- {k}: `{v}`" for k, v in self.sources.items()] + [""]
        lines += ["## Counts", "", "| what | in | out |", "| --- | ---: | ---: |"]
        for key in sorted(set(self.counts_in) | set(self.counts_out)):
            lines.append(f"| {key} | {self.counts_in.get(key, '')} | {self.counts_out.get(key, '')} |")
        lines += ["", "## Issues", ""]
        if not self.issues:
            lines.append("None.")
        else:
            lines += [f"- {k}: {v}" for k, v in self.summary_by_problem().items()]
            lines += ["", "| file | row | id | problem | action |", "| --- | ---: | --- | --- | --- |"]
            for issue in self.issues[:max_rows]:
                ident = issue.get("item_id") or issue.get("user_id") or ""
                lines.append(
                    f"| {issue['file'] or ''} | {issue['row'] if issue['row'] is not None else ''} | {ident} "
                    f"| {issue['problem']} | {issue['action']} |"
                )
            if len(self.issues) > max_rows:
                lines.append(f"\n... and {len(self.issues) - max_rows} more in ingest_report.json")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Catalog:
    """An ingested dataset: items and interactions in canonical form."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    # where it was loaded from (or saved to), and which version: None when built in memory
    folder: Path | None = None
    version: str | None = None

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return int(self.interactions["user_idx"].max()) + 1 if len(self.interactions) else 0

    @property
    def modalities(self) -> list[str]:
        """Every modality the items can have: image, text, then each imported one (``<m>_hash``)."""
        return list(ENCODED_MODALITIES) + [c.removesuffix("_hash") for c in extra_hash_columns(self.items)]

    def content_keys(self, modality: str) -> pd.DataFrame:
        """(item_id, item_idx, content_hash) of the items that have this modality."""
        col = f"{modality}_hash"
        if col not in self.items:
            raise CatalogError(
                None,
                f"catalog {self.name!r} has no {modality!r} content (no {col} column; its modalities: "
                f"{self.modalities}); an imported modality comes from its feature file at ingest",
            )
        present = self.items[self.items[col].notna()]
        return present[["item_id", "item_idx", col]].rename(columns={col: "content_hash"})

    def fingerprint(self) -> str:
        """Content fingerprint of the catalog (ids + content hashes + interactions)."""
        h = hashlib.sha256()
        # extra modalities' hashes only where there are some: older catalogs keep their fingerprint
        cols = ["item_id", "text_hash", "image_hash"] + extra_hash_columns(self.items)
        h.update(pd.util.hash_pandas_object(self.items[cols], index=False).values.tobytes())
        h.update(
            pd.util.hash_pandas_object(
                self.interactions[["user_id", "item_id", "rating", "timestamp"]], index=False
            ).values.tobytes()
        )
        return h.hexdigest()[:16]

    def interactions_fingerprint(self) -> str:
        """Fingerprint of what a split is made of: the interaction rows with their dense
        indices. Item content is not in it, so a split survives a changed title or photo;
        an added item that shifts the indices of others changes it."""
        cols = ["user_id", "item_id", "user_idx", "item_idx", "rating", "timestamp"]
        h = hashlib.sha256(pd.util.hash_pandas_object(self.interactions[cols], index=False).values.tobytes())
        return h.hexdigest()[:16]

    @property
    def splits_dir(self) -> Path:
        """Where this catalog's splits are stored: shared by every version with the same
        interactions (``<catalog>/splits/<interactions fingerprint>/``, see
        :mod:`pipeline.data.versions`); ``<catalog>/splits`` for a folder written before versions."""
        if self.folder is None:
            raise ValueError(f"catalog {self.name!r} was not loaded from a folder: it has no splits folder")
        fp = self.meta.get("interactions_fingerprint") or self.interactions_fingerprint()
        return splits_dir(self.folder, fp, versioned=self.version is not None)

    # -- persistence -------------------------------------------------------
    def save(self, folder: str | Path, report: IngestReport | None = None, rejects: pd.DataFrame | None = None) -> Path:
        """Write a new version of the catalog in ``folder`` and make it current; returns the
        version's folder. Callers that may race (ingest) hold :func:`catalog_lock`."""
        folder = Path(folder)
        self.version = write_version(folder, lambda target: self.write_files(target, report, rejects))
        self.folder = folder
        return folder / VERSIONS / self.version

    def write_files(
        self, target: Path, report: IngestReport | None = None, rejects: pd.DataFrame | None = None
    ) -> None:
        """The files of one version, ``catalog.json`` last: it records every other file's
        row count and sha256, so :meth:`load` can tell which file does not belong."""
        tables = {
            "items.parquet": pa.Table.from_pandas(self.items, schema=item_schema(self.items), preserve_index=False),
            "interactions.parquet": pa.Table.from_pandas(
                self.interactions, schema=INTERACTION_SCHEMA, preserve_index=False
            ),
        }
        if rejects is not None:
            frame = rejects.reindex(columns=REJECTS_SCHEMA.names).astype({"row": "Int64"})
            tables["rejects.parquet"] = pa.Table.from_pandas(frame, schema=REJECTS_SCHEMA, preserve_index=False)
        files = {}
        for name, table in tables.items():
            write_parquet(target / name, table)
            files[name] = {"rows": table.num_rows, "sha256": sha256_bytes((target / name).read_bytes())}
            if name == "interactions.parquet":
                pause_point("catalog-write")  # crash tests: a half-written version
        if report is not None:
            write_json(target / "ingest_report.json", report.to_dict())
            write_text(target / "ingest_report.md", report.to_markdown())
        meta = dict(self.meta)
        meta.update(
            name=self.name,
            num_items=self.num_items,
            num_users=self.num_users,
            num_interactions=len(self.interactions),
            fingerprint=self.fingerprint(),
            interactions_fingerprint=self.interactions_fingerprint(),
            files=files,
        )
        write_json(target / META, meta)

    @classmethod
    def load(cls, folder: str | Path) -> "Catalog":
        """The current version of the catalog in ``folder``, checked against its
        ``catalog.json``: a file whose rows or bytes differ is named in the error."""
        folder = Path(folder)
        version = current_version(folder)
        where = folder / VERSIONS / version if version else folder
        meta_file = where / META
        if not meta_file.exists():
            if version:
                raise CatalogError(
                    folder / CURRENT,
                    f"names version {version}, but {meta_file} is missing: "
                    "the catalog folder was damaged; re-run `befa ingest`",
                )
            raise CatalogError(meta_file, "no ingested catalog here (run `befa ingest` first)")
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as exc:
            raise CatalogError(meta_file, f"not valid JSON ({exc}); re-run `befa ingest`") from None
        items = _read_checked(where / "items.parquet", meta, meta.get("num_items"))
        inter = _read_checked(where / "interactions.parquet", meta, meta.get("num_interactions"))
        catalog = cls(name=meta["name"], items=items, interactions=inter, meta=meta, folder=folder, version=version)
        if meta.get("fingerprint") and catalog.fingerprint() != meta["fingerprint"]:
            raise CatalogError(
                where / "interactions.parquet" if "files" in meta else where,
                f"items.parquet and interactions.parquet do not give the fingerprint {meta_file} records "
                f"({catalog.fingerprint()} vs {meta['fingerprint']}): the files come from different ingests; "
                "re-run `befa ingest`",
            )
        return catalog


def _read_checked(path: Path, meta: dict[str, Any], rows: int | None) -> pd.DataFrame:
    """One table of a catalog, checked against what ``catalog.json`` records of it."""
    if not path.exists():
        raise CatalogError(path, "missing: the catalog folder was damaged; re-run `befa ingest`")
    data = path.read_bytes()
    recorded = meta.get("files", {}).get(path.name)
    if recorded and sha256_bytes(data) != recorded["sha256"]:
        raise CatalogError(
            path,
            f"changed after ingest: its sha256 is not the one {META} records (from another ingest, or edited); "
            "re-run `befa ingest`",
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(path, f"unreadable Parquet ({exc}); re-run `befa ingest`") from None
    if rows is not None and table.num_rows != int(rows):
        raise CatalogError(
            path,
            f"holds {table.num_rows} rows, but {META} records {rows}: "
            "the files come from different ingests; re-run `befa ingest`",
        )
    return table.to_pandas()


def _natural_sorted(ids: np.ndarray) -> list[str]:
    """Numeric ids sort as numbers (so MovieLens user 1 gets index 0), others as strings."""
    ids = [str(i) for i in ids]
    if all(i.lstrip("-").isdigit() for i in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def build_catalog(
    name: str,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    meta: dict[str, Any] | None = None,
) -> Catalog:
    """Assign dense indices and fill hashes. ``items`` needs item_id/title/text/image/image_hash
    (extra modalities' ``<m>_hash`` columns are kept);
    ``interactions`` needs user_id/item_id/rating/timestamp and must only name known items."""
    items = items.reset_index(drop=True).copy()
    items["item_id"] = items["item_id"].astype(str)
    items["item_idx"] = np.arange(len(items), dtype=np.int64)
    items["text"] = items["text"].fillna("").astype(str)
    items["title"] = items["title"].fillna("").astype(str)
    items["text_hash"] = [text_hash(t) for t in items["text"]]
    for col in ("image", "image_hash"):
        if col not in items:
            items[col] = None
    items = items[[f.name for f in item_schema(items)]]

    inter = interactions.reset_index(drop=True).copy()
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    idx_of = pd.Series(items["item_idx"].values, index=items["item_id"].values)
    inter["item_idx"] = idx_of.reindex(inter["item_id"].values).values
    if inter["item_idx"].isna().any():
        raise ValueError("build_catalog: interactions name unknown items; validate before building")
    inter["item_idx"] = inter["item_idx"].astype(np.int64)
    users = _natural_sorted(pd.unique(inter["user_id"]))
    user_idx = pd.Series(np.arange(len(users), dtype=np.int64), index=users)
    inter["user_idx"] = user_idx.reindex(inter["user_id"].values).values
    inter["rating"] = inter["rating"].astype(np.float32)
    inter["timestamp"] = inter["timestamp"].fillna(0).astype(np.int64)
    inter = inter[[f.name for f in INTERACTION_SCHEMA]]
    return Catalog(name=name, items=items, interactions=inter, meta=dict(meta or {}))
