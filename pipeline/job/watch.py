"""Watch registered catalogs; when their source changed, re-ingest and re-encode only what changed.

A catalog is *registered* when a pipeline run ingests or uses it
(:func:`register_catalog`, called by ``pipeline.job.run.ingest_step``): the
registry keeps the pipeline parameters of that run (importer, ingest options, encoder),
which say how to re-ingest the catalog and which encoder its features come from. A run
that gave no ingest options (``befa run myshop`` on a catalog made by ``befa ingest
generic ...``) registers the options the catalog recorded when it was ingested
(``catalog.json``, ``ingest``), so every catalog that was run can be re-ingested.

:func:`watch_catalog` then, for one catalog:

1. stamps its source files (path, size, mtime of every file under the dataset folder or
   the generic importer's items / interactions / images): an unchanged stamp means
   nothing to do, without reading any file;
2. otherwise re-ingests (the importer re-hashes texts and images) and compares the new
   item table with the stored one by ``item_id``: items added, removed, text edited,
   image edited, and whether the interactions changed;
3. when something changed, runs the incremental feature extraction with the registered
   encoder: the feature store is keyed by (item_id, content hash), so only added and
   edited items are encoded; every other vector is reused. A catalog run with the encoder
   ``imported`` (an MMRec folder) had its new matrices stored by the re-ingest: the watch
   reports their snapshots, and encodes nothing;
4. judges the catalog against the served recommendations (:func:`judge_against_served`):
   while the last *successful* pipeline run of the catalog (``pipeline.job.served``) used
   another version than the current one, the catalog counts as changed ("retrain due"),
   watch after watch, so a retrain that failed or was killed is asked for again until one
   succeeds; not while a pipeline run of the catalog is running.

:func:`watch_catalogs` watches each catalog on its own: one that fails (a source file
gone, an unreadable registration, nothing recorded to re-ingest it from) comes back as a
:class:`CatalogChange` with ``error`` set, and the others are still watched.

The first watch of a catalog has no stamp yet, so it always does step 2 (cheap for the
catalogs this project handles; the comparison, not the stamp, decides "changed").

State lives under ``$BEFA_HOME/watch/``: ``catalogs.json`` (registry) and
``state/<catalog>.json`` (last stamp and catalog fingerprint).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from pipeline.data.catalog import Catalog
from pipeline.data.importers import IMPORTERS
from pipeline.data.ingest import ingest
from pipeline.data.versions import is_ingested
from pipeline.features.extract import extract_features
from pipeline.features.imported import is_imported
from pipeline.features.summary import FeaturesSummary
from pipeline.job.catalog_diff import CatalogDiff, diff_catalogs
from pipeline.job.params import PipelineParams, resolve_importer
from pipeline.job.served import REGISTRY, current_catalog, running_retrain, served_record, watch_dir
from pipeline.settings import Settings
from storage.atomic import write_json
from storage.feature_store import FeatureStore


# -- registry ----------------------------------------------------------------------
def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def register_catalog(settings: Settings, params: PipelineParams) -> None:
    """Remember how this catalog is ingested and encoded (latest registration wins). A run
    that gave no ingest options registers the catalog's own ingest record (``befa ingest``'s
    options), so every catalog that was run can be re-ingested by the watch."""
    path = watch_dir(settings) / REGISTRY
    registry = _read_json(path, {})
    params = params.with_recorded_ingest(settings)
    entry = params.model_dump(mode="json")
    entry["ingest_options"] = _absolute_paths(entry["ingest_options"])
    entry["run_name"] = None  # a retraining run gets a fresh folder
    registry[params.dataset] = {
        "params": entry,
        "registered_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(path, registry)


def _absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """File options made absolute: the watch runs from wherever the serve process runs."""
    out = dict(options)
    for key in ("items", "interactions", "images", "folder", "root"):
        value = out.get(key)
        if isinstance(value, str) and value and "://" not in value:
            out[key] = os.path.abspath(os.path.expanduser(value))
    return out


def unregister_catalog(settings: Settings, name: str) -> bool:
    path = watch_dir(settings) / REGISTRY
    registry = _read_json(path, {})
    found = registry.pop(name, None) is not None
    write_json(path, registry)
    return found


class WatchError(ValueError):
    """A registered catalog that cannot be watched: which one, and what to do."""


def _registry(settings: Settings) -> dict[str, PipelineParams | WatchError]:
    """Every registration, parsed; one that does not parse is its error, not everyone's."""
    out: dict[str, PipelineParams | WatchError] = {}
    for name, entry in _read_json(watch_dir(settings) / REGISTRY, {}).items():
        try:
            out[name] = PipelineParams.model_validate(entry["params"])
        except (ValueError, KeyError, TypeError) as exc:
            out[name] = WatchError(
                f"catalog {name!r}: its registration cannot be read ({exc}); run `befa run {name}` again"
            )
    return out


def registered_catalogs(settings: Settings) -> dict[str, PipelineParams]:
    """The registrations that parse (see :func:`watch_catalogs` for the others)."""
    return {name: p for name, p in _registry(settings).items() if isinstance(p, PipelineParams)}


def registered_params(settings: Settings, name: str) -> PipelineParams:
    registry = _registry(settings)
    if name not in registry:
        raise KeyError(
            f"catalog {name!r} is not registered for watching (registered: {sorted(registry)}); "
            "run the pipeline on it once"
        )
    if isinstance(registry[name], WatchError):
        raise registry[name]
    return registry[name]


# -- source stamps ----------------------------------------------------------------
def source_paths(settings: Settings, params: PipelineParams) -> list[Path]:
    """The files and folders a catalog is ingested from."""
    importer = resolve_importer(params)
    imp = IMPORTERS.get(importer) if importer else None
    paths: list[Path] = []
    if imp is not None and getattr(imp, "dataset", None):
        paths.append(Path(params.ingest_options.get("root") or settings.datasets_root / imp.dataset))
    for key in ("items", "interactions", "images", "folder"):
        value = params.ingest_options.get(key)
        if value and "://" not in str(value):
            paths.append(Path(value).expanduser())
    if params.ingest_options.get("items") and not params.ingest_options.get("images"):
        paths.append(Path(params.ingest_options["items"]).expanduser().parent)  # relative image names
    return paths


def source_stamp(paths: Iterable[Path]) -> str:
    """sha256 over (path, size, mtime_ns) of every file under ``paths`` (stat only, no reads)."""
    h = hashlib.sha256()
    for root in sorted({Path(p).resolve() for p in paths}):
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file())
        else:
            h.update(f"missing:{root}".encode())
            continue
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class CatalogChange(BaseModel):
    """What one watch of one catalog found and did."""

    catalog: str
    changed: bool
    reason: str
    error: str | None = Field(None, description="why this catalog could not be watched (the others still were)")
    diff: CatalogDiff = Field(default_factory=CatalogDiff)
    items_reencoded: list[str] = Field(default_factory=list, description="distinct items encoded by this watch")
    encoded: dict[str, int] = Field(default_factory=dict)  # modality -> vectors encoded
    reused: dict[str, int] = Field(default_factory=dict)  # modality -> vectors reused from the store
    snapshots: dict[str, str] = Field(default_factory=dict)
    fingerprint_before: str | None = None
    fingerprint_after: str | None = None
    retrain_due: bool = Field(
        False, description="the served recommendations were made from another catalog version than the current one"
    )
    served_version: str | None = Field(None, description="the catalog version the last successful run used")
    retrain_running: str | None = Field(None, description="the pipeline run of this catalog running now")
    seconds: float = 0.0

    @property
    def retrain_only(self) -> bool:
        """Changed only in that a retrain is due: the content is what the last watch saw."""
        return self.changed and self.retrain_due and self.fingerprint_before == self.fingerprint_after

    def summary(self) -> dict[str, Any]:
        """Small payload for events and logs."""
        return {
            "catalog": self.catalog,
            "changed": self.changed,
            "reason": self.reason,
            "error": self.error,
            "added": len(self.diff.added),
            "removed": len(self.diff.removed),
            "text_changed": len(self.diff.text_changed),
            "image_changed": len(self.diff.image_changed),
            "interactions_changed": self.diff.interactions_changed,
            "items_reencoded": len(self.items_reencoded),
            "encoded": self.encoded,
            "snapshots": self.snapshots,
            "fingerprint_before": self.fingerprint_before,
            "fingerprint_after": self.fingerprint_after,
            "retrain_due": self.retrain_due,
            "served_version": self.served_version,
        }

    def sentence(self, event: str | None = None, retrain: bool = True) -> str:
        """What this watch found, in one sentence: what `befa watch` prints and the Prefect watch
        logs (``event``: the event it emitted for a change; ``retrain=False``: said so)."""
        if self.error:
            return f"{self.catalog}: watch failed, skipped: {self.error}"
        if not self.changed:
            return f"{self.catalog} unchanged ({self.reason})"
        if self.retrain_only:
            return f"{self.catalog}: {self.reason}" + (f"; event {event} emitted" if event else "")
        d = self.diff
        encoded = ", ".join(f"{n} {m}" for m, n in self.encoded.items()) or "nothing"
        said = (
            f"{self.catalog} changed ({self.reason}): +{len(d.added)} -{len(d.removed)} items, "
            f"{len(d.text_changed)} texts and {len(d.image_changed)} images edited"
            f"{', interactions changed' if d.interactions_changed else ''}; "
            f"{len(self.items_reencoded)} items re-encoded (vectors encoded: {encoded}) in {self.seconds:.1f} s"
        )
        return said + (f"; event {event} emitted{'' if retrain else ' (retrain off)'}" if event else "")


# -- the watch ----------------------------------------------------------------------
def _state_path(settings: Settings, name: str) -> Path:
    return watch_dir(settings) / "state" / f"{name}.json"


def last_watch(settings: Settings, name: str) -> CatalogChange | None:
    """What the latest watch of this catalog found (None if never watched)."""
    state = _read_json(_state_path(settings, name), {})
    return CatalogChange.model_validate(state["last"]) if "last" in state else None


def watch_catalog(settings: Settings, name: str, params: PipelineParams | None = None) -> CatalogChange:
    """Check one registered catalog; re-ingest and re-encode only what changed."""
    start = time.perf_counter()
    # the catalog's own ingest record fills in a registration without options: the stamp
    # must cover the files the re-ingest reads
    params = (params or registered_params(settings, name)).with_recorded_ingest(settings)
    stamp = source_stamp(source_paths(settings, params))
    folder = settings.catalog_dir(name)
    stored = Catalog.load(folder) if is_ingested(folder) else None
    state = _read_json(_state_path(settings, name), {})
    if stored is not None and state.get("stamp") == stamp and state.get("fingerprint") == stored.fingerprint():
        fp = stored.fingerprint()
        change = CatalogChange(
            catalog=name, changed=False, reason="source files untouched", fingerprint_before=fp, fingerprint_after=fp
        )
    else:
        change = _reingest_and_encode(settings, name, params, stored)
    judge_against_served(settings, name, change)
    change.seconds = round(time.perf_counter() - start, 3)
    write_json(
        _state_path(settings, name),
        {
            "stamp": stamp,
            "fingerprint": change.fingerprint_after,
            "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "last": change.model_dump(mode="json"),
        },
    )
    return change


def judge_against_served(settings: Settings, name: str, change: CatalogChange) -> None:
    """A retrain is due while the served recommendations (the last successful pipeline run,
    ``pipeline.job.served``) come from another catalog version than the current one: such a
    catalog counts as changed, watch after watch, until a run succeeds, unless one is
    running now."""
    current = change.fingerprint_after
    served = served_record(settings, name)
    if current is None or (served is not None and served.fingerprint == current):
        return
    change.retrain_due = True
    change.served_version = served.catalog_version.label() if served is not None else None
    running = running_retrain(settings, name)
    change.retrain_running = running.describe() if running is not None else None
    if change.changed:  # the content changed in this watch: said so already
        return
    if running is not None:
        change.reason = f"content unchanged; a pipeline run of it is running ({running.describe()})"
        return
    now = current_catalog(settings, name)
    now_label = now.label() if now is not None else f"fingerprint {current}"
    change.changed = True
    change.reason = (
        f"retrain due: the served recommendations were made from catalog version {change.served_version}, "
        f"the catalog is at {now_label} and no pipeline run on it has succeeded"
        if served is not None
        else f"retrain due: no successful pipeline run of catalog version {now_label} is recorded"
    )


def _reingest_and_encode(
    settings: Settings, name: str, params: PipelineParams, stored: Catalog | None
) -> CatalogChange:
    """Re-ingest; if the content changed, encode what the store does not hold yet."""
    importer, options = params.ingest_call()
    if importer is None:
        raise WatchError(
            f"catalog {name!r}: nothing says which files it is ingested from (it was stored before catalogs "
            f"recorded their ingest options); run it once with them: befa run {name} --items ... --interactions ..."
        )
    new, _report = ingest(importer, settings, **options)
    before = stored.fingerprint() if stored is not None else None
    after = new.fingerprint()
    if stored is not None and before == after:
        return CatalogChange(
            catalog=name,
            changed=False,
            reason="source files touched, content identical",
            fingerprint_before=before,
            fingerprint_after=after,
        )
    diff = (
        diff_catalogs(stored, new)
        if stored is not None
        else CatalogDiff(added=sorted(new.items["item_id"].astype(str)))
    )
    # The store skips every (item_id, content hash) it already holds: only edits and additions encode.
    # With the encoder 'imported' the re-ingest stored the new matrices: nothing is encoded.
    store = FeatureStore(settings.feature_store)
    spec = params.encoder_spec()
    result = extract_features(
        new,
        spec,
        store,
        device=params.device,
        batch_size=params.extract_batch_size,
        progress=False,
        backend=params.extract_backend,
        onnx_dir=settings.onnx_dir,
    )
    mods = FeaturesSummary.of(result).modalities
    wanted = {} if is_imported(spec) else diff.to_encode(new.items)
    return CatalogChange(
        catalog=name,
        changed=True,
        reason="first watch: no stored catalog" if stored is None else "content changed",
        diff=diff,
        items_reencoded=sorted(set().union(*(wanted[m] for m in mods if m in wanted))) if mods else [],
        encoded={m: f.encoded for m, f in mods.items()},
        reused={m: f.skipped for m, f in mods.items()},
        snapshots={m: f.snapshot for m, f in mods.items()},
        fingerprint_before=before,
        fingerprint_after=after,
    )


def watch_catalogs(settings: Settings, names: Iterable[str] | None = None) -> list[CatalogChange]:
    """Watch every registered catalog (or the named ones). A catalog that fails is reported
    in its :class:`CatalogChange` (``error``) and skipped; the others are still watched."""
    registry = _registry(settings)
    names = list(names) if names else sorted(registry)
    missing = [n for n in names if n not in registry]
    if missing:
        raise KeyError(f"catalog {missing[0]!r} is not registered for watching (registered: {sorted(registry)})")
    return [_watch_one(settings, n, registry[n]) for n in names]


def _watch_one(settings: Settings, name: str, params: PipelineParams | WatchError) -> CatalogChange:
    try:
        if isinstance(params, WatchError):
            raise params
        return watch_catalog(settings, name, params)
    # Any failure of one catalog (bad source file, missing folder, encoder) must not stop
    # the watch of the others; the error is the catalog's report.
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, KeyError) and exc.args:
            message = str(exc.args[0])
        else:
            message = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        return CatalogChange(catalog=name, changed=False, reason="watch failed", error=message)
