"""``befa store check``: every file of the feature store read back and held against the store's
own records; with ``repair``, damaged files moved aside so the next extraction re-encodes
exactly what they held.

Checked, per feature set (``<dataset>/<fingerprint>/<modality>``):

- each part (``parts/part-*.parquet``) reads back in full, with the columns ``item_id``,
  ``content_hash`` (strings) and ``embedding`` (fixed-size float32 vectors) and as many
  rows as its footer says;
- each snapshot index (``snapshots/<id>.parquet``) reads back, carries its record, holds
  the number of rows the record says, and every row it points at is there: the part has
  that row and the row holds the same item and content hash. Parts are immutable and a
  snapshot records what they held, so a mismatch counts against the part;
- ``CURRENT`` names a snapshot that is there and intact;
- and, under ``_encoders/``, every encoder record and remembered resolution is JSON.

Repair moves each damaged file into ``quarantine/`` beside it (one rename each: a reader sees
the file or nothing; nothing is deleted), then makes the current snapshot readable again: a
``commit`` of its items that still have a row in an intact part (the others count as
missing), or, when the current snapshot itself was damaged, ``CURRENT`` moved aside too, so
the next commit starts afresh from the intact parts. The next ``befa extract`` (``befa
train`` and ``befa run`` extract first) finds exactly the lost items missing and re-encodes
them. A repair interrupted half-way is finished by running it again.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.columns import joined_keys
from storage.encoder_records import ENCODERS_DIR
from storage.errors import DamagedFile
from storage.feature_store import FeatureStore
from storage.filesystem import StoreFS
from storage.index import CURRENT_FILE, SNAPSHOTS_DIR
from storage.keys import FeatureSetKey
from storage.parts import PARTS_DIR, PartFiles
from storage.snapshots import INDEX_SCHEMA, snapshot_from_metadata

QUARANTINE_DIR = "quarantine"
_SNAPSHOT_RE = re.compile(r"^[0-9a-f]{16}\.parquet$")


@dataclass(frozen=True)
class Damage:
    """One damaged file: where it is, what kind of store file it is, and what is wrong."""

    path: str
    kind: str  # "part", "snapshot", "CURRENT" or "encoder record"
    problem: str


@dataclass
class FeatureSetCheck:
    """What the check found in one feature set, and what repair did there."""

    key: FeatureSetKey
    parts: int = 0
    snapshots: int = 0
    rows: int = 0  # vector rows read back from intact parts
    damage: list[Damage] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)  # damaged file -> where repair put it
    current: str | None = None  # the current snapshot id (after repair, when repairing)
    lost_items: int = 0  # items of the current snapshot left without a vector: the next extract re-encodes them


@dataclass
class StoreCheck:
    """The whole check: one :class:`FeatureSetCheck` per feature set, plus the encoder records."""

    root: str
    repaired: bool
    feature_sets: list[FeatureSetCheck] = field(default_factory=list)
    records: list[Damage] = field(default_factory=list)  # damaged files under _encoders/
    records_moved: dict[str, str] = field(default_factory=dict)

    @property
    def damage(self) -> list[Damage]:
        return [d for fset in self.feature_sets for d in fset.damage] + self.records

    @property
    def lost_items(self) -> int:
        return sum(f.lost_items for f in self.feature_sets)


def feature_set_keys(fs: StoreFS, dataset: str | None = None) -> list[FeatureSetKey]:
    """Every feature set under the root (folders ``<dataset>/<fingerprint>/<modality>`` holding
    parts, snapshots or ``CURRENT``), optionally of one dataset."""
    out = []
    for ds in fs.subfolders(fs.root):
        if ds.startswith(("_", ".")) or (dataset is not None and ds != dataset):
            continue
        for fp in fs.subfolders(fs.join(ds)):
            for modality in fs.subfolders(fs.join(ds, fp)):
                folder = fs.join(ds, fp, modality)
                if {PARTS_DIR, SNAPSHOTS_DIR} & set(fs.subfolders(folder)) or fs.exists(
                    posixpath.join(folder, CURRENT_FILE)
                ):
                    try:
                        out.append(FeatureSetKey(ds, fp, modality))
                    except ValueError:  # not a name befa writes: not a feature set of this store
                        continue
    return out


def _part_problem(table: pa.Table, footer_rows: int) -> str | None:
    for name in ("item_id", "content_hash"):
        if name not in table.column_names or not pa.types.is_string(table.schema.field(name).type):
            return f"no string column {name!r}"
    if "embedding" not in table.column_names:
        return "no column 'embedding'"
    kind = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
        return f"column 'embedding' is {kind}, not fixed-size float32 vectors"
    if table.num_rows != footer_rows:
        return f"{table.num_rows} rows decoded, its footer says {footer_rows}"
    if table.num_rows == 0:
        return "no rows"
    return None


def read_part(fs: StoreFS, path: str) -> tuple[pa.Table | None, str | None]:
    """A part's (item_id, content_hash) columns when the whole part reads back, else (None, problem)."""
    try:
        with fs.parquet_file(path) as pf:
            footer_rows = pf.metadata.num_rows
            table = pf.read()
    except DamagedFile as exc:
        return None, exc.problem
    problem = _part_problem(table, footer_rows)
    return (None, problem) if problem else (table.select(["item_id", "content_hash"]), None)


def _read_index(fs: StoreFS, path: str) -> tuple[pa.Table | None, str | None]:
    """A snapshot's index when it reads back and matches its record, else (None, problem)."""
    try:
        with fs.parquet_file(path) as pf:
            record = snapshot_from_metadata(pf.schema_arrow.metadata, path)
            index = pf.read()
    except DamagedFile as exc:
        return None, exc.problem
    except ValueError as exc:  # no befa record, or a record that does not validate
        return None, str(exc).splitlines()[0]
    if not set(INDEX_SCHEMA.names) <= set(index.column_names):
        return None, f"columns {index.column_names}, expected {INDEX_SCHEMA.names}"
    if index.num_rows != record.num_rows:
        return None, f"{index.num_rows} index rows, its record says {record.num_rows}"
    return index, None


def _convicted_parts(index: pa.Table, sid: str, parts: dict[str, pa.Table]) -> dict[str, str]:
    """Intact-looking parts that do not hold what snapshot ``sid`` says they hold: {name: problem}."""
    out: dict[str, str] = {}
    for name in pc.unique(index["part"]).to_pylist():
        keys = parts.get(name)
        if keys is None:  # damaged (already listed) or absent (counted as lost)
            continue
        rows_of = index.filter(pc.equal(index["part"], name))
        rows = rows_of["row"].to_numpy()
        if int(rows.max()) >= keys.num_rows:
            out[name] = f"holds {keys.num_rows} rows, snapshot {sid} points at row {int(rows.max())}"
            continue
        for column in ("item_id", "content_hash"):
            held = keys[column].take(pa.array(rows))
            differs = np.flatnonzero(~pc.equal(held, rows_of[column]).to_numpy(zero_copy_only=False))
            if len(differs):
                i = int(differs[0])
                out[name] = (
                    f"row {int(rows[i])} holds {column} {held[i].as_py()!r}, "
                    f"snapshot {sid} says {rows_of[column][i].as_py()!r}"
                )
                break
    return out


def _quarantine(fs: StoreFS, path: str, folder: str) -> str:
    """Move ``path`` into ``<folder>/quarantine/`` (one rename); return where it went."""
    target = posixpath.join(folder, QUARANTINE_DIR, posixpath.basename(path))
    if fs.exists(target):
        target = f"{target}.{time.time_ns()}"
    fs.move(path, target)
    return target


def _read_files(fs: StoreFS, folder: str, result: FeatureSetCheck) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """(intact parts' keys by name, intact snapshot indexes by id); damage goes to ``result``."""
    part_files = PartFiles(fs)
    parts: dict[str, pa.Table] = {}
    names = part_files.names(folder)
    for name in names:
        keys, problem = read_part(fs, part_files.path(folder, name))
        if problem:
            result.damage.append(Damage(part_files.path(folder, name), "part", problem))
        else:
            parts[name] = keys
    indexes: dict[str, pa.Table] = {}
    snapshot_names = [n for n in fs.listdir(posixpath.join(folder, SNAPSHOTS_DIR)) if _SNAPSHOT_RE.match(n)]
    for name in snapshot_names:
        path = posixpath.join(folder, SNAPSHOTS_DIR, name)
        index, problem = _read_index(fs, path)
        if problem:
            result.damage.append(Damage(path, "snapshot", problem))
        else:
            indexes[name[:16]] = index
    for sid, index in indexes.items():
        for name, problem in _convicted_parts(index, sid, parts).items():
            del parts[name]
            result.damage.append(Damage(part_files.path(folder, name), "part", problem))
    result.parts, result.snapshots = len(names), len(snapshot_names)
    result.rows = sum(keys.num_rows for keys in parts.values())
    return parts, indexes


def _current_id(fs: StoreFS, folder: str, indexes: dict[str, pa.Table], result: FeatureSetCheck) -> str | None:
    """The id ``CURRENT`` names when that snapshot is intact; else None (damage noted when it names one)."""
    pointer = posixpath.join(folder, CURRENT_FILE)
    data = fs.read_bytes(pointer)
    if data is None:
        return None
    sid = data.decode("utf-8", "replace").strip()
    if sid not in indexes:
        there = fs.exists(posixpath.join(folder, SNAPSHOTS_DIR, f"{sid}.parquet"))
        result.damage.append(
            Damage(pointer, "CURRENT", f"names snapshot {sid!r}, which is {'damaged' if there else 'not there'}")
        )
        return None
    return sid


def _lost(index: pa.Table, parts: dict[str, pa.Table]) -> int:
    """Rows of a snapshot whose (item, content hash) no intact part holds."""
    held = [joined_keys(k["item_id"].combine_chunks(), k["content_hash"].combine_chunks()) for k in parts.values()]
    wanted = joined_keys(index["item_id"].combine_chunks(), index["content_hash"].combine_chunks())
    if not held:
        return len(wanted)
    return int(pc.sum(pc.invert(pc.is_in(wanted, value_set=pa.concat_arrays(held)))).as_py() or 0)


def _check_and_repair(store: FeatureStore, key: FeatureSetKey, repair: bool) -> FeatureSetCheck:
    fs, folder = store.fs, store.feature_set_path(key)
    result = FeatureSetCheck(key=key)
    parts, indexes = _read_files(fs, folder, result)
    sid = _current_id(fs, folder, indexes, result)
    result.current = sid
    result.lost_items = _lost(indexes[sid], parts) if sid is not None else 0
    stale = sid is not None and not set(pc.unique(indexes[sid]["part"]).to_pylist()) <= set(parts)
    if not repair:
        return result
    for damage in result.damage:
        result.moved[damage.path] = _quarantine(fs, damage.path, folder)
    if sid is not None and stale:  # points at parts moved aside (or lost before): keep what is left
        index = indexes[sid]
        # (a state seen before keeps its first record, so the count of lost items is ours, not snap.missing)
        snap = store.commit(key, keep=zip(index["item_id"].to_pylist(), index["content_hash"].to_pylist()))
        result.current = snap.id
    return result


def check_feature_set(store: FeatureStore, key: FeatureSetKey, repair: bool = False) -> FeatureSetCheck:
    """Check one feature set (see the module docstring); with ``repair``, quarantine and recommit,
    holding the feature set's writer lock throughout, so no extraction commits in between."""
    if not repair:
        return _check_and_repair(store, key, repair=False)
    with store.lock(key):
        return _check_and_repair(store, key, repair=True)


def _check_records(fs: StoreFS, report: StoreCheck, repair: bool) -> None:
    """Encoder records and remembered resolutions under ``_encoders/``: each must be a JSON object."""
    top = fs.join(ENCODERS_DIR)
    for folder in [top] + [posixpath.join(top, d) for d in fs.subfolders(top) if d != QUARANTINE_DIR]:
        for name in fs.listdir(folder):
            if not name.endswith(".json"):
                continue
            path = posixpath.join(folder, name)
            try:
                ok = isinstance(json.loads(fs.read_bytes(path) or b""), dict)
                problem = None if ok else "not a JSON object"
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problem = f"not JSON ({exc})"
            if problem:
                report.records.append(Damage(path, "encoder record", problem))
                if repair:
                    report.records_moved[path] = _quarantine(fs, path, folder)


def check_store(root: str, dataset: str | None = None, repair: bool = False) -> StoreCheck:
    """Check every feature set under ``root`` (or one ``dataset``'s) and the encoder records;
    with ``repair``, move damaged files into ``quarantine/`` and make each current snapshot
    readable again (see the module docstring)."""
    store = FeatureStore(root)
    report = StoreCheck(root=str(root), repaired=repair)
    for key in feature_set_keys(store.fs, dataset):
        report.feature_sets.append(check_feature_set(store, key, repair))
    _check_records(store.fs, report, repair)
    return report
